"""The business calls a WhatsApp user: an agent dials through the sample [to-whatsapp] context
(or a CRM posts to /v1/calls), the gateway checks permission, places the call with the
simulator, and bridges the answer into the real Asterisk."""

from __future__ import annotations

import asyncio
import time

import aiohttp
import pytest

from gateway.whatsapp.events import PermissionReply

from .conftest import API_TOKEN, Stack

pytestmark = pytest.mark.asterisk

USER = "15550007777"
SAMPLE_PNID = "106540000000002"  # the business number the sample [to-whatsapp] calls from
AGENT = f"Local/+{USER}@to-whatsapp"


def dial_result(ev: dict) -> bool:
    return ev.get("Event") == "UserEvent" and ev.get("UserEvent") == "WhatsAppDialResult"


def agent_dials(stack: Stack, context: str = "test-agent") -> asyncio.Task:
    """An agent's phone dials the WhatsApp user through the sample dialplan."""
    return asyncio.ensure_future(stack.gateway.ami.originate(
        AGENT, context=context, exten="s", timeout_s=30))


def dtmf_queue(call) -> asyncio.Queue:
    """Every RFC 4733 digit the user's phone receives, with its duration."""
    queue: asyncio.Queue = asyncio.Queue()
    leg = call.phone.leg
    original = leg.on_dtmf

    def on_dtmf(digit: str, ms: int) -> None:
        original(digit, ms)
        queue.put_nowait((digit, ms))

    leg.on_dtmf = on_dtmf
    return queue


async def test_agent_call_answered_audio_and_agent_dtmf_reach_the_user(stack: Stack):
    stack.sim.add_user(USER, permission="temporary", on_call="answer", answer_after_s=0.5)
    agent = agent_dials(stack)
    call = await stack.sim.wait_outbound_call(to=USER, timeout=15)
    digits = dtmf_queue(call)
    await asyncio.wait_for(call.accepted.wait(), 15)
    await stack.wait_event(lambda ev: ev.get("UserEvent") == "TestAgentUp")
    (connect,) = stack.sim.requests_for(call.call_id, "connect")
    offer = connect.body["session"]["sdp"]
    assert "a=rtpmap:111 opus/48000/2" in offer and "telephone-event/8000" in offer
    assert "PCMU" not in offer and "G722" not in offer and offer.count("a=fingerprint") == 1

    got = [await asyncio.wait_for(digits.get(), 10) for _ in range(3)]
    assert [d for d, _ in got] == ["5", "9", "#"]
    assert all(80 <= ms <= 160 for _, ms in got), got  # SendDTMF(...,100)

    start = call.transcript.now()
    await call.phone.say_tone(700, 1.5)
    heard = call.phone.heard(since=start + 0.5, until=call.transcript.now())
    assert heard.kind == "tone" and heard.frequency == pytest.approx(700, abs=25), heard

    await call.hangup()  # the WhatsApp user hangs up
    result = await stack.wait_event(dial_result)
    assert (result["Status"], result["Cause"]) == ("ANSWER", "16")
    agent_gone = await stack.wait_event(
        lambda ev: ev.get("Event") == "Hangup" and ev.get("Channel", "").startswith(AGENT)
        and ev["Channel"].endswith(";1"))
    assert agent_gone["Cause"] == "16"  # a normal end on the agent's side too
    await asyncio.wait_for(agent, 10)
    await stack.wait_idle()
    assert len([ev for ev in stack.events if dial_result(ev)]) == 1
    record = await stack.gateway.store.get(call.call_id)
    assert record.direction == "outbound" and record.outcome == "answered"
    assert record.dtmf_out == 3


@pytest.mark.parametrize("behaviour,status,cause,end_reason", [
    ({"on_call": "reject", "answer_after_s": 0.3}, "REJECTED", "21", "declined"),
    ({"on_call": "ignore"}, "NOANSWER", "19", "no_answer"),
    ({"on_call": "busy"}, "BUSY", "17", "busy"),
])
async def test_unanswered_calls_end_the_agent_channel_with_a_cause(
        stack: Stack, behaviour: dict, status: str, cause: str, end_reason: str):
    stack.sim.timings.ring_timeout_s = 2.0
    stack.sim.add_user(USER, permission="permanent", **behaviour)
    agent_dials(stack)
    result = await stack.wait_event(dial_result, timeout=20)
    assert result["Status"] == status
    assert result["Cause"] == cause
    await stack.wait_idle()
    (record,) = await stack.gateway.store.list()
    assert record.end_reason == end_reason


async def test_no_permission_is_refused_before_dialing(stack: Stack):
    """A user the ledger knows nothing about: Meta's call_permissions decides, no connect."""
    stack.sim.add_user(USER, permission="no_permission")
    agent_dials(stack)
    result = await stack.wait_event(dial_result, timeout=20)
    assert (result["Status"], result["MetaCode"], result["Cause"]) == \
        ("NO_PERMISSION", "138006", "52")
    assert [r.action for r in stack.sim.requests] == ["call_permissions"]
    stack.events.clear()
    agent_dials(stack)  # the ledger learned it: not even call_permissions this time
    result = await stack.wait_event(dial_result, timeout=20)
    assert result["Status"] == "NO_PERMISSION"
    assert [r.action for r in stack.sim.requests] == ["call_permissions"]
    await stack.wait_idle()
    records = await stack.gateway.store.list()  # one record per attempt, none left active
    assert [(r.direction, r.outcome, r.meta_error_code) for r in records] == \
        [("outbound", "rejected", 138006)] * 2


async def test_meta_refusal_wins_over_the_ledger_and_is_remembered(stack: Stack):
    """The ledger believes in a grant Meta no longer has: Meta's 138006 ends the call, and
    the next attempt is refused locally, with no second connect."""
    stack.sim.add_user(USER, permission="no_permission")
    await stack.gateway.ledger.apply_reply(PermissionReply(
        phone_number_id=SAMPLE_PNID, user=USER, message_id="wamid.OLD", timestamp=int(time.time()),
        response="accept", is_permanent=True, expiration_timestamp=None,
        response_source="user_action"))
    agent_dials(stack)
    result = await stack.wait_event(dial_result, timeout=20)
    assert (result["Status"], result["MetaCode"]) == ("NO_PERMISSION", "138006")
    assert [r.action for r in stack.sim.requests] == ["connect"]
    assert stack.sim.requests[0].error_code == 138006
    stack.events.clear()
    agent_dials(stack)
    result = await stack.wait_event(dial_result, timeout=20)
    assert result["Status"] == "NO_PERMISSION"
    assert [r.action for r in stack.sim.requests] == ["connect"]
    await stack.wait_idle()


async def api(stack: Stack, method: str, path: str, body=None, token: str | None = API_TOKEN):
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    async with aiohttp.ClientSession(headers=headers) as session:
        async with session.request(method, f"{stack.gateway.url}{path}", json=body) as resp:
            return resp.status, await resp.json()


async def test_crm_api_auth_validation_and_a_connected_call(stack: Stack):
    good = {"to": f"+{USER}", "phone_number_id": "100000000000002", "context": "test-echo"}
    assert (await api(stack, "POST", "/v1/calls", good, token=None))[0] == 401
    assert (await api(stack, "POST", "/v1/calls", good, token="wrong"))[0] == 401
    status, body = await api(stack, "POST", "/v1/calls", {**good, "to": "12ab"})
    assert status == 400 and body["error"]["field"] == "to"
    status, body = await api(stack, "POST", "/v1/calls", {**good, "phone_number_id": "42"})
    assert status == 400 and body["error"]["field"] == "phone_number_id"
    status, body = await api(stack, "POST", "/v1/calls", {"to": f"+{USER}",
                                                          "phone_number_id": "100000000000002"})
    assert status == 400 and body["error"]["field"] == "context"

    stack.sim.add_user(USER, permission="temporary", on_call="answer", answer_after_s=0.3)
    status, body = await api(stack, "POST", "/v1/calls", good)
    assert status == 201, body
    call_id = body["id"]
    call = await stack.sim.wait_outbound_call(to=USER, timeout=15)
    await asyncio.wait_for(call.accepted.wait(), 15)
    await asyncio.wait_for(call.phone.connected.wait(), 15)
    start = call.transcript.now()
    await call.phone.say_tone(600, 1.5)  # into test-echo and back
    heard = call.phone.heard(since=start + 0.5, until=call.transcript.now())
    assert heard.kind == "tone" and heard.frequency == pytest.approx(600, abs=25), heard
    status, body = await api(stack, "GET", f"/v1/calls/{call_id}")
    assert status == 200 and body["state"] == "answered" and body["wacid"] == call.call_id
    status, body = await api(stack, "DELETE", f"/v1/calls/{call_id}")
    assert status == 200 and body["state"] == "ended"
    await asyncio.wait_for(call.ended.wait(), 10)
    assert len(stack.sim.requests_for(call.call_id, "terminate")) == 1
    await stack.wait_idle()
    assert (await api(stack, "GET", "/v1/calls/nope"))[0] == 404


async def test_crm_api_answers_409_without_permission(stack: Stack):
    stack.sim.add_user(USER, permission="no_permission")
    good = {"to": f"+{USER}", "phone_number_id": "100000000000002", "context": "test-echo"}
    status, body = await api(stack, "POST", "/v1/calls", good)
    assert status == 409 and body["error"]["reason"] == "no_permission", body
    assert body["error"]["meta_code"] == 138006
    assert not [r for r in stack.sim.requests if r.action == "connect"]


async def test_permission_request_reply_then_call(stack: Stack):
    """Ask, the user accepts (reply webhook), a second ask is refused locally with the time it
    is allowed again, and the call now goes through."""
    stack.sim.add_user(USER, permission="no_permission", on_permission_request="accept",
                       reply_after_s=0.2, on_call="answer", answer_after_s=0.2)
    ledger = stack.gateway.ledger
    replied = asyncio.Event()
    apply_reply = ledger.apply_reply

    async def observed(reply, now=None):
        await apply_reply(reply, now)
        replied.set()

    ledger.apply_reply = observed
    ask = {"to": f"+{USER}", "phone_number_id": "100000000000002", "body": "May we call you?"}
    status, body = await api(stack, "POST", "/v1/permission-requests", ask)
    assert status == 201 and body["message_id"].startswith("wamid."), body
    await asyncio.wait_for(replied.wait(), 20)

    status, body = await api(stack, "POST", "/v1/permission-requests", ask)
    assert status == 429 and body["error"]["reason"] == "limit_requests_24h", body
    assert body["error"]["next_allowed_at"] > time.time() + 23 * 3600
    assert len(stack.sim.messages) == 1

    status, state = await api(stack, "GET", f"/v1/permissions/100000000000002/{USER}")
    assert state["permission"]["status"] == "temporary" and state["can_call"]["allowed"]
    status, body = await api(stack, "POST", "/v1/calls",
                             {"to": f"+{USER}", "phone_number_id": "100000000000002",
                              "context": "test-echo"})
    assert status == 201, body
    call = await stack.sim.wait_outbound_call(to=USER, timeout=15)
    await asyncio.wait_for(call.accepted.wait(), 15)
    await call.hangup()
    await stack.wait_idle()


async def test_agent_hanging_up_while_ringing_cancels_the_whatsapp_call(stack: Stack):
    stack.sim.add_user(USER, permission="temporary", on_call="ignore")
    agent_dials(stack)
    dial = await stack.wait_event(lambda ev: ev.get("UserEvent") == "WhatsAppDial")
    call = await stack.sim.wait_outbound_call(to=USER, timeout=15)
    await asyncio.wait_for(call.ringing.wait(), 10)
    await stack.gateway.ami.hangup(dial["Channel"], 16)  # the agent gives up
    await asyncio.wait_for(call.ended.wait(), 10)
    assert call.ended_by == "business"
    assert len(stack.sim.requests_for(call.call_id, "terminate")) == 1
    await stack.wait_idle()
    record = await stack.gateway.store.get(call.call_id)
    assert record.outcome == "abandoned" and record.hangup_side == "asterisk"
    assert record.end_reason == "cancelled"
