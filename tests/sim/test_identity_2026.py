"""The simulator against docs/meta-2026-identity.md: BSUIDs and usernames in webhooks (§1),
``recipient`` for connect, messages and call_permissions, permanent permissions and the call
limit (docs/meta-2026-identity.md §2), Brazil's ninth digit and Mexico's 521, and expired Graph
versions (docs/meta-2026-identity.md §7)."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from gateway.media.webrtc import WebRtcLeg
from gateway.simulator.meta import DEFAULT_VERSION, version_refusal
from gateway.simulator.users import (
    BSUID,
    DAY,
    bsuid_for,
    meta_number_forms,
    meta_wa_id,
)
from tests.sim.business import TOKEN, Business, make_sim

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "payloads"
USER = "15550002222"
USERNAME_USER = "15550003333"
PARENT = "US.ENT.2000000000000000002"


def fixture(name: str) -> dict[str, Any]:
    return json.loads((FIXTURES / name).read_text())


def value_of(payload: dict[str, Any]) -> dict[str, Any]:
    return payload["entry"][0]["changes"][0]["value"]


def keys(obj: Any) -> Any:
    """Keys (recursively, in order) without values."""
    if isinstance(obj, dict):
        return [(k, keys(v)) for k, v in obj.items()]
    if isinstance(obj, list):
        return [keys(v) for v in obj[:1]]
    return type(obj).__name__


@pytest.fixture
async def fast_sim(business):
    sim = make_sim(business, connect_webhook_delay_s=0.05, ringing_delay_s=0.05,
                   ring_timeout_s=5.0)
    await sim.start()
    yield sim
    await sim.close()


async def connect(business: Business, sim, **target: Any) -> tuple[int, dict[str, Any]]:
    leg = WebRtcLeg(name="business-out")
    business.legs.append(leg)
    body = {"messaging_product": "whatsapp", "action": "connect", **target,
            "session": {"sdp_type": "offer", "sdp": await leg.offer()}}
    return await business.post(sim, body)


async def test_username_only_caller_has_no_number_in_the_connect_webhook(sim, business):
    user = sim.add_user(USERNAME_USER, username="testuser", parent_user_id=PARENT)
    call = await sim.place_call(from_wa_id=USERNAME_USER, profile_name="Test User")
    item = await business.next_event("connect")
    ref = value_of(fixture("webhook-connect-user-initiated-username-only.json"))
    value, c = item["value"], item["call"]
    # Exactly the sample's keys, in its order: `from` and `wa_id` absent, not empty.
    assert keys(value) == keys(ref)
    assert "from" not in c and "wa_id" not in value["contacts"][0]
    assert value["contacts"] == [{"profile": {"name": "Test User", "username": "testuser"},
                                  "user_id": user.user_id, "parent_user_id": PARENT}]
    assert (c["from_user_id"], c["from_parent_user_id"]) == (user.user_id, PARENT)
    assert BSUID.fullmatch(user.user_id) and user.user_id.startswith("US.")
    await call.hangup()
    terminate = await business.next_event("terminate")
    assert "from" not in terminate["call"] and terminate["call"]["from_user_id"] == user.user_id
    assert "wa_id" not in terminate["value"]["contacts"][0]


async def test_a_caller_without_a_username_shows_number_and_bsuid(sim, business):
    user = sim.add_user(USER)
    await sim.place_call(from_wa_id=USER, profile_name="Test User",
                         cta_payload="order-ON-12853", deeplink_payload="campaign=test-deeplink")
    item = await business.next_event("connect")
    ref = value_of(fixture("webhook-connect-user-initiated-with-bsuid.json"))
    assert keys(item["value"]) == keys(ref)
    assert item["value"]["contacts"] == [{"profile": {"name": "Test User"}, "wa_id": USER,
                                          "user_id": user.user_id}]
    assert item["call"]["from"] == USER


async def test_recent_contact_by_number_reveals_a_username_users_number(sim, business):
    sim.add_user(USERNAME_USER, username="testuser", on_permission_request="ignore")
    status, resp = await business.graph(sim, "POST", "messages", {
        "messaging_product": "whatsapp", "to": USERNAME_USER, "type": "interactive",
        "interactive": {"type": "call_permission_request",
                        "action": {"name": "call_permission_request"}}})
    assert status == 200 and resp["contacts"] == [{"input": USERNAME_USER,
                                                  "wa_id": USERNAME_USER}]
    await sim.place_call(from_wa_id=USERNAME_USER)
    item = await business.next_event("connect")
    assert item["call"]["from"] == USERNAME_USER  # messaged that number within 30 days
    counters = sim.pair(sim.default_phone_number_id, USERNAME_USER)
    counters.number_contact_at = time.time() - 31 * DAY
    await sim.place_call(from_wa_id=USERNAME_USER)
    item = await business.next_event("connect")
    assert "from" not in item["call"]


async def test_connect_to_a_bsuid_uses_recipient_and_hides_the_number(fast_sim, business):
    sim = fast_sim
    user = sim.add_user(USERNAME_USER, username="testuser", permission="permanent",
                        on_call="answer", answer_after_s=0.1)
    status, resp = await connect(business, sim, recipient=user.user_id)
    assert status == 200, resp
    call = await sim.wait_outbound_call(to=user.user_id, timeout=5)
    assert call.call_id == resp["calls"][0]["id"]
    item = await business.next_event("connect")
    c = item["call"]
    assert "to" not in c and c["to_user_id"] == user.user_id
    assert item["value"]["contacts"] == [{"user_id": user.user_id,
                                          "profile": {"username": "testuser"}}]
    ringing = await business.next_event("status")
    ref = value_of(fixture("webhook-status-ringing-with-bsuid.json"))
    assert "recipient_id" not in ringing["call"]
    assert ringing["call"]["recipient_user_id"] == user.user_id
    assert list(ringing["value"]) == list(ref)
    assert ringing["value"]["contacts"] == [{"user_id": user.user_id}]
    await call.hangup()


async def test_to_wins_when_both_to_and_recipient_are_sent(fast_sim, business):
    sim = fast_sim
    sim.add_user(USER, permission="permanent", on_call="ignore")
    other = sim.add_user("15550004444", permission="permanent", on_call="ignore")
    status, resp = await connect(business, sim, to=USER, recipient=other.user_id)
    assert status == 200
    call = await sim.wait_outbound_call(timeout=5)
    assert call.wa_id == USER
    ringing = await business.next_event("status")
    assert ringing["call"]["recipient_id"] == USER  # a number dialled by `to` is shown
    await call.hangup()


async def test_unknown_bsuid_and_bad_recipient_are_invalid(sim, business):
    sim.add_user(USER, permission="permanent")
    status, resp = await connect(business, sim, recipient="US.999")
    assert (status, resp["error"]["code"]) == (400, 100)
    status, resp = await connect(business, sim, recipient="+15550002222")
    assert (status, resp["error"]["code"]) == (400, 100)
    status, resp = await connect(business, sim)
    assert (status, resp["error"]["code"]) == (400, 100)
    assert "recipient" in resp["error"]["error_data"]["details"]


async def test_permission_request_and_lookup_by_bsuid(sim, business):
    user = sim.add_user(USERNAME_USER, username="testuser", on_permission_request="accept",
                        reply_after_s=0)
    status, resp = await business.graph(sim, "POST", "messages", {
        "messaging_product": "whatsapp", "recipient": user.user_id, "type": "interactive",
        "interactive": {"type": "call_permission_request",
                        "action": {"name": "call_permission_request"}}})
    assert status == 200
    assert resp["contacts"] == [{"input": user.user_id, "user_id": user.user_id}]
    reply = await business.next_message()
    msg = reply["message"]
    assert "from" not in msg and msg["from_user_id"] == user.user_id
    assert "from" not in msg["context"]
    assert reply["value"]["contacts"][0] == {
        "profile": {"name": "Test User", "username": "testuser"}, "user_id": user.user_id}
    status, body = await business.graph(sim, "GET", "call_permissions",
                                        params={"recipient": user.user_id})
    assert status == 200 and body["permission"]["status"] == "temporary"
    assert (await business.graph(sim, "GET", "call_permissions",
                                 params={"recipient": "US.42"}))[0] == 400


async def test_permanent_permission_reads_like_the_sample(sim, business):
    user = sim.add_user(USER, permission="permanent")
    sim.pair(sim.default_phone_number_id, USER).calls.extend([time.time() - 60] * 3)
    status, body = await business.graph(sim, "GET", "call_permissions",
                                        params={"recipient": user.user_id})
    assert status == 200
    assert body == fixture("response-get-call-permissions-permanent.json")


async def test_138012_details_carry_the_next_allowed_time(fast_sim, business):
    sim = fast_sim
    sim.add_user(USER, permission="permanent")
    first = time.time() - 3600
    sim.pair(sim.default_phone_number_id, USER).calls.extend([first] * 100)
    status, resp = await connect(business, sim, to=USER)
    assert (status, resp["error"]["code"]) == (400, 138012)
    assert str(int(first + DAY)) in resp["error"]["error_data"]["details"]


def test_brazil_ninth_digit_and_mexico_521_forms():
    assert meta_number_forms("5511987654321") == ["5511987654321", "551187654321"]
    assert meta_number_forms("551187654321") == ["551187654321", "5511987654321"]
    assert meta_number_forms("551132654321") == ["551132654321"]  # a landline: no ninth digit
    assert meta_number_forms("525512345678") == ["525512345678", "5215512345678"]
    assert meta_number_forms("5215512345678") == ["5215512345678", "525512345678"]
    assert meta_wa_id("525512345678") == "5215512345678"
    assert meta_wa_id("5511987654321") == "5511987654321"
    assert bsuid_for("5511987654321").startswith("BR.") and bsuid_for("1555") == bsuid_for("1555")


async def test_dialled_number_reaches_the_account_with_metas_wa_id(fast_sim, business):
    sim = fast_sim
    sim.add_user("551187654321", permission="permanent", on_call="ignore")  # an old account
    status, resp = await business.graph(sim, "POST", "messages", {
        "messaging_product": "whatsapp", "to": "+5511987654321", "type": "text",
        "text": {"body": "hi"}})
    assert resp["contacts"] == [{"input": "+5511987654321", "wa_id": "551187654321"}]
    status, resp = await connect(business, sim, to="5511987654321")
    assert status == 200
    ringing = await business.next_event("status")
    assert ringing["call"]["recipient_id"] == "551187654321"
    call = await sim.wait_outbound_call(to="5511987654321", timeout=5)
    await call.hangup()
    # Mexico: a new number gets Meta's 521 wa_id.
    _, resp = await business.graph(sim, "POST", "messages", {
        "messaging_product": "whatsapp", "to": "525512345678", "type": "text",
        "text": {"body": "hola"}})
    assert resp["contacts"] == [{"input": "525512345678", "wa_id": "5215512345678"}]


def test_expired_graph_versions_are_refused():
    today = "2026-12-02"
    for version in ("v17.0", "v18.0", "v20.0", "v14.0"):
        err = version_refusal(version, today)
        assert err is not None and err.code == 2635, version
    for version in ("v21.0", "v23.0", "v25.0", "v26.0", DEFAULT_VERSION):
        assert version_refusal(version, today) is None, version
    assert version_refusal("v21.0", "2027-01-22").code == 2635
    assert version_refusal("v27.0", today).code == 2500
    assert version_refusal("latest", today).code == 2500


async def test_a_request_on_an_expired_version_gets_metas_error(sim, business):
    url = f"{sim.base_url}/v20.0/{sim.default_phone_number_id}/call_permissions"
    async with business.http.get(url, params={"user_wa_id": USER},
                                 headers={"Authorization": f"Bearer {TOKEN}"}) as resp:
        body = await resp.json()
    assert resp.status == 400 and body["error"]["code"] == 2635
    assert sim.url.endswith("/" + DEFAULT_VERSION)
    async with aiohttp.ClientSession() as http, http.get(
            f"{sim.url}/{sim.default_phone_number_id}/call_permissions",
            params={"user_wa_id": USER}, headers={"Authorization": f"Bearer {TOKEN}"}) as ok:
        assert ok.status == 200


async def test_control_api_gives_a_user_a_username(business):
    from gateway.simulator.control import add_control_routes

    sim = make_sim(business)
    add_control_routes(sim)
    async with sim:
        async with aiohttp.ClientSession() as http, http.post(
                sim.base_url + "/_sim/users",
                json={"wa_id": USERNAME_USER, "username": "testuser"}) as resp:
            user = await resp.json()
            assert resp.status == 200, user
        assert user["username"] == "testuser" and BSUID.fullmatch(user["user_id"])
        async with aiohttp.ClientSession() as http, http.post(
                sim.base_url + "/_sim/users",
                json={"wa_id": USERNAME_USER, "username": ""}) as resp:
            assert resp.status == 400
        await sim.place_call(from_wa_id=USERNAME_USER)
        item = await business.next_event("connect")
        assert "from" not in item["call"] and item["call"]["from_user_id"] == user["user_id"]


async def test_scripted_call_from_a_username_user(business):
    from gateway.simulator.control import add_control_routes

    sim = make_sim(business)
    add_control_routes(sim)
    async with sim:
        async with aiohttp.ClientSession() as http, http.post(
                sim.base_url + "/_sim/calls",
                json={"from": USERNAME_USER, "username": "scripted",
                      "script": "wait 0.1; hangup"}) as resp:
            assert resp.status == 200
            out = await resp.text()
        assert "calls without a visible number" in out
        item = await business.next_event("connect")
        assert "from" not in item["call"]
        assert item["value"]["contacts"][0]["profile"]["username"] == "scripted"
