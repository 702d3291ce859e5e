"""A CallManager and its calls driven on in-memory fakes of our interfaces (tests/fakes.py):
webhook idempotence, admission, hang-ups at every step of set-up, outbound results and the
ledger, restarts. Each test runs in milliseconds; the e2e tests prove the same against the real
Asterisk and the simulator."""

from __future__ import annotations

import asyncio

import pytest

from gateway.calls import manager as manager_module
from gateway.calls import outbound as outbound_module
from gateway.calls.ending import CallState, What
from gateway.calls.outbound import DialRequest, DialStatus
from gateway.calls.permissions import Decision
from gateway.calls.record import CallRecord, Direction, EndReason, HangupSide, Outcome
from gateway.whatsapp.events import MetaError, ParsedWebhook
from gateway.whatsapp.graph import GraphError
from tests import fakes
from tests.ports import udp_range

CALL = "wacid.unit-1"


def webhook(r: fakes.Rig, *events) -> int:
    return r.manager.handle(ParsedWebhook(events=list(events)))


async def answered_inbound(r: fakes.Rig, call_id: str = CALL):
    webhook(r, fakes.connect_event(call_id))
    call = r.manager.find(call_id)
    assert call is not None
    await asyncio.wait_for(r.observer.reached("bridged", call_id), 2)
    assert call.state == CallState.ANSWERED
    return call


async def no_channel_left(r: fakes.Rig) -> None:
    await r.ami.settled()  # an Originate the call abandoned may still create its channel
    assert r.ami.channels == {}, "a channel the gateway made is still up in Asterisk"


# --- inbound ---------------------------------------------------------------------------------

async def test_inbound_call_answered_then_user_hangs_up():
    r = fakes.rig()
    call = await answered_inbound(r)
    assert r.graph.actions(CALL) == ["pre_accept", "accept"]
    assert r.ledger.user_calls == [fakes.USER]
    webhook(r, fakes.terminate_event())
    assert await r.manager.settle(5)
    (rec,) = r.observer.ended
    assert (rec.outcome, rec.hangup_side, rec.end_reason, rec.q850_cause) == \
        (Outcome.ANSWERED, HangupSide.WHATSAPP, EndReason.NORMAL, 16)
    assert r.graph.actions(CALL) == ["pre_accept", "accept"]  # Meta ended it: nothing sent
    assert r.ami.hangups == [(call.channel_id, 16)]
    await no_channel_left(r)
    assert r.manager.live_calls() == [] and r.manager.deps.ports.free == 20


async def test_asterisk_hangup_terminates_the_whatsapp_side():
    r = fakes.rig()
    call = await answered_inbound(r)
    r.ami.asterisk_hangs_up(call.channel_id, 21)
    assert await r.manager.settle(5)
    (rec,) = r.observer.ended
    assert (rec.outcome, rec.hangup_side, rec.q850_cause) == \
        (Outcome.ANSWERED, HangupSide.ASTERISK, 21)
    assert r.graph.actions(CALL)[-1] == "terminate" and r.ami.hangups == []


# Every step of an inbound set-up at which the call can be ended; "originate" and "getvar"
# are the AMI steps where Asterisk may already hold the channel (issue 8 finding 6).
INBOUND_STEPS = [("graph", "pre_accept"), ("ami", "originate"), ("ami", "getvar"),
                 ("graph", "accept")]


@pytest.mark.parametrize("fake,step", INBOUND_STEPS)
@pytest.mark.parametrize("what", ["terminate", "api", "asterisk_down"])
async def test_inbound_hang_up_at_every_step_leaves_nothing_behind(fake, step, what):
    r = fakes.rig()
    gates = getattr(r, fake).gates
    gates.hold(step)
    webhook(r, fakes.connect_event())
    await asyncio.wait_for(gates.reached(step), 2)
    call = r.manager.find(CALL)
    if what == "terminate":
        webhook(r, fakes.terminate_event())
    elif what == "api":
        assert r.manager.end(CALL, What.API_HANGUP)
    else:
        r.manager.end_all(What.AMI_LOST)
    await asyncio.sleep(0.01)
    gates.release(step)  # the step in flight completes after the end, as it would for real
    assert await r.manager.settle(5)
    await no_channel_left(r)
    if any(o["channel_id"] == call.channel_id for o in r.ami.originates):
        assert (call.channel_id, call.ending.q850) in r.ami.hangups
    sent = r.graph.actions(CALL)
    if what == "terminate":
        assert "reject" not in sent and "terminate" not in sent
    else:
        assert sent[-1] == "reject"  # never accepted: reject, not terminate (§2)
    (rec,) = r.observer.ended
    assert rec.outcome != Outcome.ACTIVE and call.state == CallState.ENDED


async def test_originate_that_outlives_the_call_is_hung_up_when_it_completes():
    """The race of test_permission_request_reply_then_call: the user hangs up while the
    Originate is in flight; Asterisk makes the channel afterwards; the gateway hangs it up."""
    r = fakes.rig()
    r.ami.gates.hold("originate")
    webhook(r, fakes.connect_event())
    await asyncio.wait_for(r.ami.gates.reached("originate"), 2)
    webhook(r, fakes.terminate_event())
    settled = asyncio.ensure_future(r.manager.settle(5))
    await asyncio.sleep(0.05)
    assert not settled.done()  # the teardown waits for the Originate ...
    r.ami.gates.release("originate")
    assert await settled
    (channel_id,) = [o["channel_id"] for o in r.ami.originates]
    assert r.ami.hangups == [(channel_id, 16)]  # ... and hangs up what it made
    await no_channel_left(r)


async def test_stale_terminate_is_ignored():
    r = fakes.rig()
    await answered_inbound(r)
    webhook(r, fakes.terminate_event(timestamp=fakes.NOW - 100))  # older than the connect
    await asyncio.sleep(0.01)
    assert r.manager.find(CALL) is not None
    webhook(r, fakes.terminate_event())
    assert await r.manager.settle(5)
    assert r.manager.find(CALL) is None


async def test_terminate_before_connect_tombstones_and_late_connect_cannot_revive():
    r = fakes.rig()
    webhook(r, fakes.terminate_event())
    webhook(r, fakes.connect_event())
    assert r.manager.live_calls() == [] and r.graph.requests == []
    await answered_inbound(r, "wacid.unit-2")
    webhook(r, fakes.terminate_event("wacid.unit-2"))
    assert await r.manager.settle(5)
    webhook(r, fakes.connect_event("wacid.unit-2", timestamp=fakes.NOW + 100))  # Meta redelivers
    assert r.manager.live_calls() == []
    assert r.graph.actions("wacid.unit-2") == ["pre_accept", "accept"]


class SharedCallIds:
    """The store's claims and tombstones as several gateways see them (in memory)."""

    def __init__(self) -> None:
        self.taken: dict[str, str] = {}

    def gateway(self, name: str):
        async def known_call(wacid: str) -> bool:
            return self.taken.setdefault(wacid, name) != name
        return known_call, lambda wacid: self.taken.setdefault(wacid, "tombstone")


async def test_a_terminate_at_one_gateway_stops_its_connect_at_another():
    """Meta's load balancer sends the terminate to gateway A, the late connect to B."""
    shared = SharedCallIds()
    a, b = fakes.rig(), fakes.rig()
    for name, r in (("a", a), ("b", b)):
        r.manager.known_call, r.manager.shared_tombstone = shared.gateway(name)
    webhook(a, fakes.terminate_event())
    webhook(b, fakes.connect_event())
    assert await b.manager.settle(5)
    assert b.manager.live_calls() == [] and b.graph.requests == []
    webhook(b, fakes.connect_event("wacid.unit-2"))  # no tombstone: B takes it
    await asyncio.wait_for(b.observer.reached("bridged", "wacid.unit-2"), 2)
    webhook(b, fakes.terminate_event("wacid.unit-2"))
    assert await b.manager.settle(5)
    assert shared.taken == {CALL: "tombstone", "wacid.unit-2": "b"}


async def test_duplicates_are_dropped_until_evicted(monkeypatch):
    monkeypatch.setattr(manager_module, "SEEN_EVENTS", 2)
    r = fakes.rig()
    first = fakes.terminate_event("wacid.a")
    assert webhook(r, first, first) == 1
    assert webhook(r, fakes.terminate_event("wacid.b"), fakes.terminate_event("wacid.c")) == 0
    assert webhook(r, first) == 0  # evicted from the window: seen as new


async def test_three_calls_two_ports_one_clean_capacity_reject():
    r = fakes.rig(rtp_ports=udp_range(2320, 2))
    for n in range(3):
        webhook(r, fakes.connect_event(f"wacid.p{n}"))
    await asyncio.wait_for(r.observer.reached("rejected"), 2)
    for n in range(2):
        await asyncio.wait_for(r.observer.reached("bridged", f"wacid.p{n}"), 2)
    assert len(r.manager.live_calls()) == 2
    (refused,) = r.observer.rejected
    assert (refused.wacid, refused.end_reason, refused.outcome) == \
        ("wacid.p2", EndReason.CAPACITY, Outcome.REJECTED)
    assert "no free UDP port" in refused.reason
    assert r.graph.actions("wacid.p2") == ["reject"]
    r.manager.end_all(What.SHUTDOWN)
    assert await r.manager.settle(5)
    assert r.manager.deps.ports.free == 2


async def test_refusals_at_admission_go_through_the_table():
    r = fakes.rig()
    r.ami.connected = False
    webhook(r, fakes.connect_event("wacid.x"))
    webhook(r, fakes.connect_event("wacid.y", phone_number_id="999"))
    assert await r.manager.settle(5)
    got = {rec.wacid: (rec.end_reason, rec.outcome, rec.hangup_side)
           for rec in r.observer.rejected}
    assert got == {"wacid.x": (EndReason.ASTERISK_DOWN, Outcome.REJECTED, HangupSide.GATEWAY),
                   "wacid.y": (EndReason.UNKNOWN_NUMBER, Outcome.REJECTED, HangupSide.GATEWAY)}
    assert r.graph.requests == [("reject", "wacid.x"), ("reject", "wacid.y")]


async def test_draining_rejects_new_calls_and_end_all_ends_the_rest():
    r = fakes.rig()
    await answered_inbound(r)
    r.manager.stop_admitting()
    assert r.manager.draining and not r.manager.accepting
    webhook(r, fakes.connect_event("wacid.late"))
    out = r.manager.dial(DialRequest(to=fakes.USER, phone_number_id=fakes.PNID))
    await asyncio.sleep(0.01)
    assert r.manager.find(CALL) is not None  # the call in progress goes on
    assert r.manager.end_all(What.SHUTDOWN) == 1
    assert await r.manager.settle(5)
    (late,) = r.observer.rejected
    assert late.end_reason == EndReason.SHUTDOWN and late.outcome == Outcome.REJECTED
    assert out.status == DialStatus.FAILED and ("connect", fakes.USER) not in r.graph.requests
    ended = {rec.wacid: rec for rec in r.observer.ended}
    assert ended[CALL].end_reason == EndReason.SHUTDOWN
    assert r.graph.actions(CALL)[-1] == "terminate"
    await no_channel_left(r)


async def test_failed_terminate_is_recorded():
    r = fakes.rig()
    await answered_inbound(r)
    r.graph.fail("terminate", GraphError("terminate", "boom", http_status=500))
    r.manager.end(CALL, What.MEDIA_LOST, "media lost")
    assert await r.manager.settle(5)
    (rec,) = r.observer.ended
    assert "terminate failed" in rec.reason and rec.outcome == Outcome.FAILED
    assert any(ev == "graph_end_failed" for _, ev, _f in r.observer.events)


async def test_graph_error_on_accept_rejects_and_hangs_up():
    r = fakes.rig()
    r.graph.fail("accept", GraphError("accept", "nope", code=138004, http_status=400))
    webhook(r, fakes.connect_event())
    assert await r.manager.settle(5)
    (rec,) = r.observer.ended
    assert (rec.end_reason, rec.outcome, rec.meta_error_code) == \
        (EndReason.META_API_ERROR, Outcome.FAILED, 138004)
    assert r.graph.actions(CALL)[-1] == "reject"
    await no_channel_left(r)


async def test_ports_exhausted_mid_call_setup_is_capacity_not_a_traceback():
    """Even if the reserved port were lost, the typed failure maps to capacity."""
    r = fakes.rig()
    r.ami.originate_success = False
    webhook(r, fakes.connect_event())
    assert await r.manager.settle(5)
    (rec,) = r.observer.ended
    assert rec.end_reason == EndReason.ASTERISK_REFUSED and rec.hangup_side == HangupSide.ASTERISK


# --- outbound ----------------------------------------------------------------------------------

def dial(r: fakes.Rig, **kw):
    return r.manager.dial(DialRequest(to=fakes.USER, phone_number_id=fakes.PNID,
                                      agent_channel=kw.pop("agent", "PJSIP/agent-1"), **kw))


async def wait_wacid(r: fakes.Rig, call) -> str:
    """Until Meta gave the outbound call its id (the call reports connect_sent)."""
    await asyncio.wait_for(r.observer.reached("connect_sent"), 2)
    return call.record.wacid


def answer_sdp(r: fakes.Rig, call, wacid: str) -> None:
    webhook(r, fakes.connect_event(wacid, direction="BUSINESS_INITIATED",
                                   biz_opaque_callback_data=call.gateway_id))


async def test_outbound_answered_and_hung_up_by_the_user():
    r = fakes.rig()
    call = dial(r)
    wacid = await wait_wacid(r, call)
    answer_sdp(r, call, wacid)
    webhook(r, fakes.status_event(wacid, "RINGING", callback_data=call.gateway_id))
    webhook(r, fakes.status_event(wacid, "ACCEPTED", 1767225620, call.gateway_id))
    await asyncio.wait_for(r.observer.reached("bridged"), 2)
    webhook(r, fakes.terminate_event(wacid, direction="BUSINESS_INITIATED"))
    assert await r.manager.settle(5)
    assert call.status == DialStatus.ANSWER
    assert r.ledger.results == [(fakes.USER, True)]
    assert ("PJSIP/agent-1", "WA_DIAL_STATUS", "ANSWER") in r.ami.setvars
    await no_channel_left(r)


@pytest.mark.parametrize("fault,what,charged", [
    ("ring", EndReason.NO_ANSWER, True),
    ("answer_sdp", EndReason.ANSWER_TIMEOUT, False),
    ("graph_timeout", EndReason.META_API_ERROR, False),
])
async def test_outbound_timeouts_are_told_apart(monkeypatch, fault, what, charged):
    """Issue 8 finding 4: only a ring timeout counts against the user (19, NOANSWER)."""
    monkeypatch.setattr(outbound_module, "RING_TIMEOUT_S", 0.05)
    monkeypatch.setattr(outbound_module, "ANSWER_SDP_TIMEOUT_S", 0.05)
    r = fakes.rig()
    if fault == "graph_timeout":
        r.graph.fail("connect", GraphError("connect", "no answer", timed_out=True))
    call = dial(r)
    if fault == "ring":
        answer_sdp(r, call, await wait_wacid(r, call))
    assert await r.manager.settle(5)
    (rec,) = r.observer.ended
    assert rec.end_reason == what
    expected = DialStatus.NOANSWER if charged else DialStatus.FAILED
    assert call.status == expected
    assert ("PJSIP/agent-1", "WA_DIAL_STATUS", expected.value) in r.ami.setvars
    assert r.ami.hangups == [("PJSIP/agent-1", 19 if charged else 41)]
    assert r.ledger.results == ([(fakes.USER, False)] if charged else [])


async def test_outbound_refused_by_the_ledger_never_dials():
    r = fakes.rig()
    r.ledger.decision = Decision(False, "no_permission", "no permission", meta_code=138006)
    call = dial(r)
    assert await r.manager.settle(5)
    assert call.status == DialStatus.NO_PERMISSION and r.graph.requests == []
    assert r.ami.hangups == [("PJSIP/agent-1", 52)] and r.ledger.results == []
    (rec,) = r.observer.ended
    assert (rec.outcome, rec.meta_error_code) == (Outcome.REJECTED, 138006)


async def test_outbound_refused_by_meta_teaches_the_ledger():
    r = fakes.rig()
    r.graph.fail("connect", GraphError("connect", "busy", code=138003, http_status=400))
    call = dial(r)
    assert await r.manager.settle(5)
    assert call.status == DialStatus.BUSY and r.ledger.meta_errors == [138003]
    assert r.ami.hangups == [("PJSIP/agent-1", 17)]


OUTBOUND_STEPS = {"connect": "graph", "answer": None, "ringing": None, "agent_status": "ami",
                  "originate": "ami", "getvar": "ami"}
"""Each step of an outbound set-up, and the fake that holds the call at it (if any)."""


@pytest.mark.parametrize("step", list(OUTBOUND_STEPS))
@pytest.mark.parametrize("who", ["user", "api", "agent"])
async def test_outbound_hang_up_at_every_step_leaves_nothing_behind(step, who):
    r = fakes.rig()
    fake = OUTBOUND_STEPS[step]
    gate = "setvar" if step == "agent_status" else step  # answered, the agent told ANSWER
    if fake:
        getattr(r, fake).gates.hold(gate)
    call = dial(r, agent_uniqueid="agent-uid")
    if step == "connect":
        await asyncio.wait_for(r.graph.gates.reached("connect"), 2)
    else:
        wacid = await wait_wacid(r, call)
        if step != "answer":
            answer_sdp(r, call, wacid)
            webhook(r, fakes.status_event(wacid, "RINGING", callback_data=call.gateway_id))
        if step in ("agent_status", "originate", "getvar"):
            webhook(r, fakes.status_event(wacid, "ACCEPTED", 1767225620, call.gateway_id))
            await asyncio.wait_for(r.ami.gates.reached(gate), 2)
    if who == "user" and call.record.wacid:
        webhook(r, fakes.terminate_event(call.record.wacid, 1767225630,
                                         direction="BUSINESS_INITIATED"))
    elif who == "agent":
        call._on_agent_event({"Event": "Hangup", "Uniqueid": "agent-uid"})
    else:
        call.hangup()
    await asyncio.sleep(0.01)
    if fake:
        getattr(r, fake).gates.release(gate)
    assert await r.manager.settle(5)
    await no_channel_left(r)
    assert call.state == CallState.ENDED and call.status is not None
    if step == "agent_status" and who != "agent":
        # answered, ended before the bridge: the waiting agent is not left in silence
        assert ("PJSIP/agent-1", 16) in r.ami.hangups
    terminates = r.graph.actions(call.record.wacid).count("terminate")
    meta_ended = who == "user" and step != "connect"
    assert terminates == (0 if meta_ended or step == "connect" else 1)


async def test_outbound_ended_by_meta_with_an_error_is_not_counted():
    r = fakes.rig()
    call = dial(r)
    wacid = await wait_wacid(r, call)
    answer_sdp(r, call, wacid)
    webhook(r, fakes.terminate_event(wacid, direction="BUSINESS_INITIATED", status="FAILED",
                                     errors=(MetaError(138001, "receiver cannot be called"),)))
    assert await r.manager.settle(5)
    assert call.status == DialStatus.FAILED and r.ledger.results == []


# --- restarts ----------------------------------------------------------------------------------

def open_record(wacid: str, direction: Direction, answered: bool) -> CallRecord:
    return CallRecord(wacid=wacid, direction=direction, phone_number_id=fakes.PNID,
                      from_number=fakes.USER, to_number="15550001111",
                      answered_at=1.0 if answered else None)


async def test_records_left_open_by_a_killed_run_end_the_whatsapp_side():
    r = fakes.rig()
    records = [open_record("wacid.in-up", Direction.INBOUND, True),
               open_record("wacid.in-ringing", Direction.INBOUND, False),
               open_record("wacid.out", Direction.OUTBOUND, False)]
    r.graph.fail("terminate", GraphError("terminate", "gone", code=100, http_status=400))
    assert await r.manager.end_orphaned_records(records) == 2
    assert r.graph.requests == [("terminate", "wacid.in-up"), ("reject", "wacid.in-ringing"),
                                ("terminate", "wacid.out")]
    saved = r.store.records
    assert all(rec.outcome == Outcome.FAILED and rec.end_reason == EndReason.SHUTDOWN
               for rec in saved.values())
    assert "terminate on restart failed" in saved["wacid.in-up"].reason
    assert "ended with reject on restart" in saved["wacid.in-ringing"].reason


async def test_an_open_record_whose_accept_went_through_is_terminated_on_restart():
    """Records are saved at admission: one killed after accept still says "not answered".
    Meta refuses reject for an accepted call; then terminate ends it."""
    r = fakes.rig()
    r.graph.fail("reject", GraphError("reject", "accepted", code=100, http_status=400))
    assert await r.manager.end_orphaned_records(
        [open_record("wacid.in", Direction.INBOUND, False)]) == 1
    assert r.graph.requests == [("reject", "wacid.in"), ("terminate", "wacid.in")]
    assert "ended with terminate on restart" in r.store.records["wacid.in"].reason


@pytest.mark.parametrize("event, why", [
    ({"To": "not a number", "From": fakes.PNID}, "bad To"),
    ({"To": "+15550009999", "From": "15559990000"}, "unknown From"),
])
async def test_a_whatsapp_dial_the_gateway_cannot_place_is_refused_by_the_table(event, why):
    """A WhatsAppDial that names no user, or no business number of ours, never becomes a
    call: the waiting channel gets the table's FAILED and its cause, and Meta hears nothing."""
    r = fakes.rig()
    agent = "PJSIP/agent-00000001"
    assert r.manager.dial_from_dialplan({**event, "Channel": agent}) is None, why
    assert await r.manager.settle(5)
    assert r.ami.setvars == [(agent, "WA_DIAL_STATUS", "FAILED")]
    assert r.ami.hangups == [(agent, 41)]
    assert r.graph.requests == []
