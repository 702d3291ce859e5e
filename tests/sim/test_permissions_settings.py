"""Meta's permission surface and settings in the simulator: GET call_permissions, permission
requests and their replies on POST messages, call buttons, automatic grants, GET|POST settings,
and the /_sim/users control API."""

from __future__ import annotations

import copy
import json
import time
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from gateway.simulator.control import add_control_routes
from gateway.simulator.users import DAY, SimulatedUser
from tests.fakes import ManualClock
from tests.sim.business import make_sim, pre_bsuid

PAYLOADS = Path(__file__).resolve().parents[1] / "fixtures" / "payloads"
USER = "15550002222"


def sample(name: str) -> dict[str, Any]:
    return json.loads((PAYLOADS / name).read_text())


def value_of(payload: dict[str, Any]) -> dict[str, Any]:
    return payload["entry"][0]["changes"][0]["value"]


async def permissions(business, sim, wa_id: str = USER) -> dict[str, Any]:
    status, body = await business.graph(sim, "GET", "call_permissions",
                                        params={"user_wa_id": wa_id})
    assert status == 200, body
    return body


async def request_permission(business, sim, to: str = USER) -> tuple[int, dict[str, Any]]:
    return await business.graph(sim, "POST", "messages",
                                sample("request-message-call-permission-request.json")
                                | {"to": to})


def shape(obj: Any) -> Any:
    """Keys (recursively) without values, to compare with a sample."""
    if isinstance(obj, dict):
        return {k: shape(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [shape(v) for v in obj[:1]]
    return type(obj).__name__


async def test_call_permissions_answers_in_the_samples_shape(sim, business):
    sim.add_user(USER, permission="temporary", on_permission_request="ignore")
    body = await permissions(business, sim)
    ref = sample("response-get-call-permissions.json")
    assert body["messaging_product"] == "whatsapp"
    assert body["permission"]["status"] == "temporary"
    assert abs(body["permission"]["expiration_time"] - (time.time() + 7 * DAY)) < 5
    assert [a["action_name"] for a in body["actions"]] == [
        "send_call_permission_request", "start_call"]
    assert all(a["can_perform_action"] for a in body["actions"])
    request, start = body["actions"]
    assert [(lim["time_period"], lim["max_allowed"], lim["current_usage"])
            for lim in request["limits"]] == [("PT24H", 1, 0), ("P7D", 2, 0)]
    assert [(lim["time_period"], lim["max_allowed"], lim["current_usage"])
            for lim in start["limits"]] == [("PT24H", 100, 0)]

    assert (await request_permission(business, sim))[0] == 200
    body = await permissions(business, sim)
    assert shape(body) == shape(ref)  # limit_expiration_time only on the exhausted limit
    request = body["actions"][0]
    assert request["can_perform_action"] is False
    day, week = request["limits"]
    assert day["current_usage"] == 1 and abs(day["limit_expiration_time"] - (time.time() + DAY)) < 5
    assert week["current_usage"] == 1 and "limit_expiration_time" not in week

    # Unknown users read no_permission without an expiration_time; permanent has none either.
    other = await permissions(business, sim, "15550009999")
    assert other["permission"] == {"status": "no_permission"}
    assert other["actions"][1]["can_perform_action"] is False
    sim.add_user("15550008888", permission="permanent")
    perm = await permissions(business, sim, "15550008888")
    assert perm["permission"] == {"status": "permanent"}
    assert perm["actions"][0]["can_perform_action"] is False
    assert (await business.graph(sim, "GET", "call_permissions"))[1]["error"]["code"] == 100


async def test_call_permissions_rate_limit_is_613(business):
    async with make_sim(business, clock=ManualClock()) as sim:
        codes = []
        for _ in range(7):
            status, body = await business.graph(sim, "GET", "call_permissions",
                                                params={"user_wa_id": USER})
            codes.append(status if status == 200 else (status, body["error"]["code"]))
        assert codes[:5] == [200] * 5 and codes[5:] == [(429, 613)] * 2
        sim.clock.advance(0.9)  # still inside the same second
        assert (await business.graph(sim, "GET", "call_permissions",
                                     params={"user_wa_id": USER}))[0] == 429
        sim.clock.advance(0.2)  # the second is over
        assert (await business.graph(sim, "GET", "call_permissions",
                                     params={"user_wa_id": USER}))[0] == 200


async def test_permission_request_limits_are_1_per_day_and_2_per_week(sim, business):
    sim.add_user(USER, on_permission_request="ignore")
    status, resp = await request_permission(business, sim)
    assert status == 200
    ref = sample("response-message-send.json")
    assert shape(resp) == shape(ref)
    assert resp["contacts"] == [{"input": USER, "wa_id": USER}]
    assert resp["messages"][0]["id"].startswith("wamid.")
    status, resp = await request_permission(business, sim)
    assert (status, resp["error"]["code"]) == (400, 138009)

    counters = sim.pair(sim.default_phone_number_id, USER)
    counters.requests[0] -= DAY + 60  # the first request was yesterday
    assert (await request_permission(business, sim))[0] == 200
    counters.requests[1] -= DAY + 60
    status, resp = await request_permission(business, sim)  # third in 7 days
    assert (status, resp["error"]["code"]) == (400, 138009)
    week = (await permissions(business, sim))["actions"][0]["limits"][1]
    assert week["current_usage"] == 2 and "limit_expiration_time" in week
    assert [r.action for r in sim.requests_for(endpoint="messages")] == [
        "call_permission_request"] * 4


async def test_accepted_request_grants_a_temporary_permission(sim, business):
    sim.add_user(USER, on_permission_request="accept", reply_after_s=0.1)
    _, resp = await request_permission(business, sim)
    wamid = resp["messages"][0]["id"]
    item = await business.next_message()
    ref = value_of(sample("webhook-call-permission-reply.json"))
    assert shape(pre_bsuid(item["value"])) == shape(ref)
    assert item["message"]["from_user_id"] == item["value"]["contacts"][0]["user_id"] \
        == sim.users[USER].user_id
    msg = item["message"]
    assert msg["context"] == {"from": USER, "id": wamid}
    reply = msg["interactive"]["call_permission_reply"]
    assert (reply["response"], reply["is_permanent"], reply["response_source"]) == (
        "accept", False, "user_action")
    assert abs(int(reply["expiration_timestamp"]) - (time.time() + 7 * DAY)) < 5
    assert sim.users[USER].permission_status(time.time()) == "temporary"
    assert (await permissions(business, sim))["actions"][1]["can_perform_action"] is True


async def test_permanent_grant_then_request_is_138017_and_reject_revokes(sim, business):
    sim.add_user(USER, on_permission_request="accept_permanent", reply_after_s=0)
    await request_permission(business, sim)
    reply = (await business.next_message())["message"]["interactive"]["call_permission_reply"]
    assert reply["is_permanent"] is True and "expiration_timestamp" not in reply
    assert sim.users[USER].permission == "permanent"
    status, resp = await request_permission(business, sim)
    assert (status, resp["error"]["code"]) == (400, 138017)

    sim.add_user("15550003333", on_permission_request="reject", reply_after_s=0)
    await request_permission(business, sim, "15550003333")
    reply = (await business.next_message())["message"]["interactive"]["call_permission_reply"]
    assert reply == {"response": "reject", "response_source": "user_action"}


async def test_message_validation_and_recording(sim, business):
    good = sample("request-message-voice-call-button.json")
    status, resp = await business.graph(sim, "POST", "messages", good)
    assert status == 200 and resp["messages"][0]["id"].startswith("wamid.")
    assert sim.messages[-1]["interactive_type"] == "voice_call"

    def variant(**params: Any) -> dict[str, Any]:
        body = copy.deepcopy(good)
        body["interactive"]["action"]["parameters"].update(params)
        return body

    for bad in (variant(display_text="x" * 21), variant(ttl_minutes=0),
                variant(ttl_minutes=43201), variant(payload="p" * 513)):
        status, resp = await business.graph(sim, "POST", "messages", bad)
        assert (status, resp["error"]["code"]) == (400, 100), bad

    request = sample("request-message-call-permission-request.json")
    for bad in ({**request, "messaging_product": "sms"},
                {**request, "interactive": {**request["interactive"], "action": {"name": "x"}}},
                {**request, "interactive": {**request["interactive"],
                                            "header": {"type": "text", "text": "h"}}}):
        assert (await business.graph(sim, "POST", "messages", bad))[1]["error"]["code"] == 100

    text = {"messaging_product": "whatsapp", "to": USER, "type": "text",
            "text": {"body": "hello"}}
    status, resp = await business.graph(sim, "POST", "messages", text)
    assert status == 200 and sim.messages[-1]["type"] == "text"


async def test_old_app_gets_131026_and_outside_window_needs_a_template(sim, business):
    sim.add_user(USER, app_too_old=True)
    status, resp = await request_permission(business, sim)
    assert status == 200
    st = await business.next_message_status()
    assert business.message_statuses == [st]
    assert st["id"] == resp["messages"][0]["id"] and st["status"] == "failed"
    assert st["errors"][0]["code"] == 131026
    assert sim.pair(sim.default_phone_number_id, USER).requests == []

    sim.add_user(USER, in_service_window=False)
    status, resp = await request_permission(business, sim)
    assert (status, resp["error"]["code"]) == (400, 131047)


async def test_a_users_call_grants_a_callback_permission(business):
    async with make_sim(business, callback_grant_delay_s=0.1) as sim:
        call = await sim.place_call(from_wa_id=USER, profile_name="Test User")
        item = await business.next_message()
        ref = value_of(sample("webhook-call-permission-reply-automatic-callback.json"))
        assert shape(pre_bsuid(item["value"])) == shape(ref)
        assert pre_bsuid(item["value"]["contacts"]) == ref["contacts"]
        msg = item["message"]
        assert msg["context"] == {"from": USER, "id": call.call_id}
        reply = msg["interactive"]["call_permission_reply"]
        assert (reply["response"], reply["is_permanent"], reply["response_source"]) == (
            "accept", False, "automatic")
        assert sim.users[USER].permission == "temporary"
        await call.hangup()

        # Not when callback_permission_status is DISABLED.
        sim.number_settings(sim.default_phone_number_id)["calling"][
            "callback_permission_status"] = "DISABLED"
        sim.add_user("15550004444")
        other = await sim.place_call(from_wa_id="15550004444")
        # A sentinel: with the setting back on, a third user's call is granted; a grant for
        # the second user would have come first (same delay, earlier call).
        sim.number_settings(sim.default_phone_number_id)["calling"][
            "callback_permission_status"] = "ENABLED"
        third = await sim.place_call(from_wa_id="15550005555")
        item = await business.next_message()
        assert item["message"]["context"]["id"] == third.call_id
        assert sim.users["15550004444"].permission == "no_permission"
        await other.hangup()
        await third.hangup()


async def test_settings_round_trip_and_validation(sim, business):
    status, got = await business.graph(sim, "GET", "settings")
    ref = sample("response-get-settings-calling.json")
    expected = copy.deepcopy(ref)
    del expected["calling"]["restrictions"]  # expired long ago
    del expected["calling"]["audio"]  # G.711 is opt-in: a number starts Opus-only
    assert (status, got) == (200, expected)

    new = sample("request-settings-calling.json")
    assert await business.graph(sim, "POST", "settings", new) == (200, {"success": True})
    _, got = await business.graph(sim, "GET", "settings")
    for key, value in new["calling"].items():
        assert got["calling"][key] == value
    assert got["calling"]["sip"] == ref["calling"]["sip"]  # keys not posted stay

    hours = new["calling"]["call_hours"]
    monday = {"day_of_week": "MONDAY", "open_time": "1900", "close_time": "2000"}
    bad_hours = [
        hours | {"weekly_operating_hours": hours["weekly_operating_hours"] + [monday]},
        hours | {"weekly_operating_hours": [
            {"day_of_week": "MONDAY", "open_time": "0800", "close_time": "1200"},
            {"day_of_week": "MONDAY", "open_time": "1100", "close_time": "1500"}]},
        hours | {"holiday_schedule": [{"date": f"2026-12-{d:02d}", "start_time": "0000",
                                       "end_time": "2359"} for d in range(1, 22)]},
        hours | {"timezone_id": "Mars/Olympus"},
        hours | {"weekly_operating_hours": [
            {"day_of_week": "FUNDAY", "open_time": "0800", "close_time": "1200"}]},
        hours | {"weekly_operating_hours": [
            {"day_of_week": "MONDAY", "open_time": "1200", "close_time": "0800"}]},
    ]
    bad = [{"calling": {"call_hours": h}} for h in bad_hours] + [
        {"calling": {"status": "ON"}},
        {"calling": {"call_icon_visibility": "DISABLE ALL"}},
        {"calling": {"callback_permission_status": "YES"}},
        {"calling": {"restrictions": {}}},
    ]
    for body in bad:
        status, resp = await business.graph(sim, "POST", "settings", body)
        assert (status, resp["error"]["code"]) == (400, 100), body
    _, still = await business.graph(sim, "GET", "settings")
    assert still == got  # refused POSTs change nothing

    # call_hours is replaced whole: leaving out holiday_schedule deletes it.
    hours_only = {k: v for k, v in hours.items() if k != "holiday_schedule"}
    assert (await business.graph(sim, "POST", "settings",
                                 {"calling": {"call_hours": hours_only}}))[0] == 200
    _, got = await business.graph(sim, "GET", "settings")
    assert "holiday_schedule" not in got["calling"]["call_hours"]
    assert [r.action for r in sim.requests_for(endpoint="settings")][:2] == [
        "get_settings", "set_settings"]


async def test_settings_drive_connect(sim, business):
    from tests.sim.test_outbound import dial

    sim.add_user(USER, permission="permanent", on_call="ignore")
    await business.graph(sim, "POST", "settings", {"calling": {"status": "DISABLED"}})
    _, status, resp = await dial(business, sim)
    assert (status, resp["error"]["code"]) == (401, 138000)
    await business.graph(sim, "POST", "settings", {"calling": {"status": "ENABLED"}})
    sim.number_settings(sim.default_phone_number_id)["calling"]["restrictions"] = {
        "restrictions_list": [{"type": "RESTRICTED_BUSINESS_INITIATED_CALLING",
                               "reason": "quality", "expiration": int(time.time()) + 60}]}
    assert (await dial(business, sim))[2]["error"]["code"] == 138014
    del sim.number_settings(sim.default_phone_number_id)["calling"]["restrictions"]
    assert (await dial(business, sim))[1] == 200


@pytest.fixture
async def control_sim(business):
    sim = make_sim(business, default_user=SimulatedUser(permission="temporary"))
    add_control_routes(sim)
    await sim.start()
    yield sim
    await sim.close()


async def test_control_api_configures_users(control_sim, business):
    sim = control_sim
    async with aiohttp.ClientSession() as http:
        async def post(body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
            async with http.post(sim.base_url + "/_sim/users", json=body) as r:
                return r.status, await r.json()

        status, user = await post({"wa_id": USER, "on_call": "reject", "answer_after_s": 0.5,
                                   "script": "wait 1; hangup"})
        assert status == 200
        assert (user["on_call"], user["answer_after_s"], user["permission_status"]) == (
            "reject", 0.5, "temporary")  # from the default user
        assert (await post({"wa_id": USER, "on_call": "dance"}))[0] == 400
        assert (await post({"wa_id": USER, "script": "jump"}))[0] == 400
        assert (await post({"wa_id": USER, "colour": "red"}))[0] == 400
        assert sim.users[USER].on_call == "reject"  # refused updates change nothing
        status, _ = await post({"wa_id": "default", "permission": "permanent"})
        assert status == 200 and sim.default_user.permission == "permanent"
        assert sim.user("15550005555").permission == "permanent"
        await post({"wa_id": USER, "permission": "no_permission"})
        async with http.get(sim.base_url + "/_sim/users") as r:
            listing = await r.json()
    assert listing["default"]["permission"] == "permanent"
    mine = next(u for u in listing["users"] if u["wa_id"] == USER)
    assert mine["permission_status"] == "no_permission" and mine["script"] == "wait 1; hangup"
