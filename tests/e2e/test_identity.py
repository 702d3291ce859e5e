"""Users as Meta names them since 2026 (docs/meta-2026-identity.md §1-2), with the simulator and
the real Asterisk: a username caller with no number walks the sample IVR and the dialplan sees
its BSUID; the business calls a user by BSUID (``recipient``); a permanent permission outlives
the 7-day clock of a temporary one."""

from __future__ import annotations

import asyncio
import time

import aiohttp
import pytest

from gateway.whatsapp.events import PermissionReply

from .conftest import API_TOKEN, Stack

pytestmark = pytest.mark.asterisk

DAY = 86400.0
USERNAME_USER = "15550003333"
ECHO_PNID = "100000000000002"


async def echo_heard(call) -> None:
    """A tone comes back through Echo() in test-echo: the Asterisk channel is up and carries
    audio (hanging up before that races the channel's creation, the known orphan race of
    outbound calls)."""
    await asyncio.wait_for(call.phone.connected.wait(), 15)
    start = call.transcript.now()
    await call.phone.say_tone(600, 1.5)
    heard = call.phone.heard(since=start + 0.5, until=call.transcript.now())
    assert heard.kind == "tone" and heard.frequency == pytest.approx(600, abs=25), heard


def user_event(name: str):
    return lambda ev: ev.get("Event") == "UserEvent" and ev.get("UserEvent") == name


async def api(stack: Stack, method: str, path: str, body=None):
    headers = {"Authorization": f"Bearer {API_TOKEN}"}
    async with aiohttp.ClientSession(headers=headers) as session:
        async with session.request(method, f"{stack.gateway.url}{path}", json=body) as resp:
            return resp.status, await resp.json()


async def test_username_caller_without_a_number_walks_the_ivr(stack: Stack):
    user = stack.sim.add_user(USERNAME_USER, username="testuser")
    call = await stack.place_call("from-whatsapp", from_wa_id=USERNAME_USER,
                                  profile_name="Test User")
    assert "from" not in call.webhooks[0].payload["entry"][0]["changes"][0]["value"]["calls"][0]

    start = await stack.wait_event(user_event("WhatsAppCallStart"))
    # (AMI leaves out a header whose value is empty: WaFrom and CallerNum.)
    assert (start["UserId"], start["Username"], start.get("WaFrom", "")) == (
        user.user_id, "testuser", "")
    # numbers[].username_caller_id by default: the username as name, no number at all.
    assert (start.get("CallerNum", ""), start["CallerName"]) == ("", "testuser")
    assert start["CallerIDNum"] == "<unknown>"  # Asterisk's word for an empty number

    await asyncio.wait_for(call.accepted.wait(), 10)
    await asyncio.wait_for(call.media_connected.wait(), 10)
    await call.phone.press("3")
    await stack.wait_event(lambda ev: ev.get("Event") == "DTMFEnd" and ev.get("Digit") == "3")
    await call.phone.press("42#")
    code = await stack.wait_event(user_event("WhatsAppCode"))
    assert (code["Code"], code["WaCallId"]) == ("42", call.call_id)
    await call.hangup()
    await stack.wait_idle()

    record = await stack.gateway.store.get(call.call_id)
    assert (record.from_number, record.user_id, record.username) == (
        "", user.user_id, "testuser")
    # The ledger keys the numberless user by BSUID (the connected call reset its counters).
    state = await stack.gateway.ledger.get(ECHO_PNID, user.user_id)
    assert state["wa_id"] == user.user_id


async def test_agent_dials_a_bsuid_and_the_call_goes_out_as_recipient(stack: Stack):
    user = stack.sim.add_user(USERNAME_USER, username="testuser", permission="permanent",
                              on_call="answer", answer_after_s=0.3)
    agent = asyncio.ensure_future(stack.gateway.ami.originate(
        f"Local/{user.user_id}@to-whatsapp", context="test-agent", exten="s", timeout_s=30))
    call = await stack.sim.wait_outbound_call(to=user.user_id, timeout=15)
    (connect,) = stack.sim.requests_for(call.call_id, "connect")
    assert connect.body["recipient"] == user.user_id and "to" not in connect.body
    # The fresh ledger knew nothing: Meta was asked, by BSUID.
    (lookup,) = stack.sim.requests_for(action="call_permissions")
    assert lookup.body == {"recipient": user.user_id}
    await asyncio.wait_for(call.accepted.wait(), 15)
    await stack.wait_event(user_event("TestAgentUp"))
    await call.hangup()
    await agent
    await stack.wait_idle()


async def test_crm_calls_a_bsuid_with_recipient(stack: Stack):
    user = stack.sim.add_user(USERNAME_USER, username="testuser", permission="permanent",
                              on_call="answer", answer_after_s=0.3)
    status, body = await api(stack, "POST", "/v1/calls", {"recipient": "US.nope!",
                                                          "context": "test-echo",
                                                          "phone_number_id": ECHO_PNID})
    assert status == 400 and body["error"]["field"] == "recipient"
    status, body = await api(stack, "POST", "/v1/calls", {
        "recipient": user.user_id, "phone_number_id": ECHO_PNID, "context": "test-echo"})
    assert status == 201, body
    assert body["recipient"] == user.user_id and body["to"] is None
    call = await stack.sim.wait_outbound_call(to=user.user_id, timeout=15)
    (connect,) = stack.sim.requests_for(call.call_id, "connect")
    assert connect.body["recipient"] == user.user_id and "to" not in connect.body
    await asyncio.wait_for(call.accepted.wait(), 15)
    await echo_heard(call)
    await call.hangup()
    await stack.wait_idle()


async def test_permanent_grant_survives_the_seven_day_clock(stack: Stack):
    user_number = "15550006666"
    stack.sim.add_user(user_number, permission="no_permission",
                       on_permission_request="accept_permanent", reply_after_s=0.2,
                       on_call="answer", answer_after_s=0.2)
    ledger = stack.gateway.ledger
    replied = asyncio.Event()
    apply_reply = ledger.apply_reply

    async def observed(reply, now=None):
        await apply_reply(reply, now)
        replied.set()

    ledger.apply_reply = observed
    status, body = await api(stack, "POST", "/v1/permission-requests", {
        "to": f"+{user_number}", "phone_number_id": ECHO_PNID, "body": "May we call you?"})
    assert status == 201, body
    await asyncio.wait_for(replied.wait(), 20)

    # Eight days on: a temporary grant would have lapsed; this one is permanent.
    ledger.clock = lambda: time.time() + 8 * DAY
    state = await ledger.get(ECHO_PNID, user_number)
    assert state["permission"]["status"] == "permanent"
    assert state["permission"]["expires_at"] is None and state["can_call"]["allowed"]
    status, body = await api(stack, "POST", "/v1/calls", {
        "to": f"+{user_number}", "phone_number_id": ECHO_PNID, "context": "test-echo"})
    assert status == 201, body
    call = await stack.sim.wait_outbound_call(to=user_number, timeout=15)
    await asyncio.wait_for(call.accepted.wait(), 15)
    # The ledger decided alone: Meta was never asked for call_permissions.
    assert not stack.sim.requests_for(action="call_permissions")
    await echo_heard(call)
    await call.hangup()
    await stack.wait_idle()

    # The same clock refuses a temporary grant given at the same time.
    granted_at = time.time()
    await apply_reply(PermissionReply(
        phone_number_id=ECHO_PNID, user="15550006667", message_id="wamid.t", timestamp=0,
        response="accept", is_permanent=False,
        expiration_timestamp=int(granted_at + 7 * DAY), response_source="user_action"),
        now=granted_at)
    decision = await ledger.can_call(ECHO_PNID, "15550006667")
    assert not decision.allowed and decision.reason == "permission_expired"


async def test_permission_request_to_a_bsuid_goes_as_recipient(stack: Stack):
    user = stack.sim.add_user("15550005555", username="asker", permission="no_permission",
                              on_permission_request="ignore")
    status, body = await api(stack, "POST", "/v1/permission-requests", {
        "recipient": user.user_id, "phone_number_id": ECHO_PNID, "body": "May we call you?"})
    assert status == 201, body
    (sent,) = stack.sim.requests_for(endpoint="messages")
    assert sent.body["recipient"] == user.user_id and "to" not in sent.body
    status, state = await api(stack, "GET", f"/v1/permissions/{ECHO_PNID}/{user.user_id}")
    assert status == 200 and state["wa_id"] == user.user_id
    assert state["requests"]["windows"][0]["used"] == 1
