"""The table that decides how every call ends (gateway/calls/ending.py), row by row.

Each row is written out in full here — side, end reason, outcome, Q.850 cause, dial status,
Graph action, ledger count, whether the gateway hangs up the channel — so a change to any
column of any row shows up as a failing line, and docs/call-ending.md can be checked against
the same lines."""

from __future__ import annotations

import pytest

from gateway.calls.ending import (
    TABLE,
    CallFailure,
    CallState,
    DialStatus,
    GraphAction,
    LedgerCount,
    What,
    ending_for,
    what_for,
)
from gateway.calls.record import Direction, EndReason, HangupSide, Outcome

IN, OUT = Direction.INBOUND, Direction.OUTBOUND
S = CallState
W, A, G = HangupSide.WHATSAPP, HangupSide.ASTERISK, HangupSide.GATEWAY
R, T, N = GraphAction.REJECT, GraphAction.TERMINATE, GraphAction.NONE
E = EndReason
O = Outcome  # noqa: E741
D = DialStatus
L_ANS, L_UN, L_NO = LedgerCount.ANSWERED, LedgerCount.UNANSWERED, LedgerCount.NONE

# (what, state, side, reason, outcome, q850, graph, hangup_channel)
INBOUND_ROWS = [
    (What.TERMINATE_WEBHOOK, S.ANSWERED, W, E.NORMAL, O.ANSWERED, 16, N, True),
    (What.TERMINATE_WEBHOOK, S.RINGING, W, E.NORMAL, O.ABANDONED, 16, N, True),
    (What.TERMINATE_WEBHOOK, S.DIALPLAN, W, E.NORMAL, O.ABANDONED, 16, N, True),
    (What.WHATSAPP_FAILED, S.ANSWERED, W, E.WHATSAPP_ERROR, O.FAILED, 41, N, True),
    (What.WHATSAPP_FAILED, S.RINGING, W, E.WHATSAPP_ERROR, O.FAILED, 41, N, True),
    (What.ASTERISK_HANGUP, S.ANSWERED, A, E.NORMAL, O.ANSWERED, 21, T, False),
    (What.ASTERISK_HANGUP, S.DIALPLAN, A, E.NORMAL, O.FAILED, 21, R, False),
    (What.ASTERISK_VANISHED, S.ANSWERED, A, E.ASTERISK_VANISHED, O.FAILED, 21, T, False),
    (What.ORIGINATE_FAILED, S.RINGING, A, E.ASTERISK_REFUSED, O.FAILED, 41, R, True),
    (What.NO_AMI, S.NEW, G, E.ASTERISK_DOWN, O.REJECTED, 41, R, True),
    (What.NO_AMI, S.RINGING, G, E.ASTERISK_DOWN, O.REJECTED, 41, R, True),
    (What.AMI_LOST, S.ANSWERED, G, E.ASTERISK_DOWN, O.FAILED, 41, T, True),
    (What.MEDIA_LOST, S.ANSWERED, G, E.MEDIA_LOST, O.FAILED, 41, T, True),
    (What.MEDIA_TIMEOUT, S.RINGING, G, E.MEDIA_TIMEOUT, O.FAILED, 41, R, True),
    (What.GRAPH_ERROR, S.NEW, G, E.META_API_ERROR, O.FAILED, 41, R, True),
    (What.GRAPH_ERROR, S.DIALPLAN, G, E.META_API_ERROR, O.FAILED, 41, R, True),
    (What.GRAPH_TIMEOUT, S.DIALPLAN, G, E.META_API_ERROR, O.FAILED, 41, R, True),
    (What.CAPACITY, S.NEW, G, E.CAPACITY, O.REJECTED, 41, R, True),
    (What.BAD_SDP, S.NEW, G, E.BAD_SDP, O.REJECTED, 41, R, True),
    (What.UNKNOWN_NUMBER, S.NEW, G, E.UNKNOWN_NUMBER, O.REJECTED, 41, R, True),
    (What.API_HANGUP, S.ANSWERED, G, E.NORMAL, O.ANSWERED, 16, T, True),
    (What.API_HANGUP, S.RINGING, G, E.NORMAL, O.REJECTED, 16, R, True),
    (What.SHUTDOWN, S.NEW, G, E.SHUTDOWN, O.REJECTED, 41, R, True),
    (What.SHUTDOWN, S.ANSWERED, G, E.SHUTDOWN, O.ANSWERED, 41, T, True),
    (What.CRASH, S.ANSWERED, G, E.SHUTDOWN, O.FAILED, 41, T, True),
    (What.CRASH, S.RINGING, G, E.SHUTDOWN, O.FAILED, 41, R, True),
    (What.GATEWAY_ERROR, S.DIALPLAN, G, E.GATEWAY_ERROR, O.FAILED, 41, R, True),
    (What.GATEWAY_ERROR, S.ANSWERED, G, E.GATEWAY_ERROR, O.FAILED, 41, T, True),
]


@pytest.mark.parametrize("what,state,side,reason,outcome,q850,graph,hangup", INBOUND_ROWS)
def test_inbound_row(what, state, side, reason, outcome, q850, graph, hangup):
    e = ending_for(what, state, direction=IN, cause=21)
    assert (e.side, e.reason, e.outcome, e.q850, e.graph, e.hangup_channel) == \
        (side, reason, outcome, q850, graph, hangup)
    assert e.dial_status is None and e.ledger == L_NO  # outbound-only columns


# (what, state, meta_code, side, reason, outcome, q850, dial, graph, ledger)
OUTBOUND_ROWS = [
    # the user
    (What.TERMINATE_WEBHOOK, S.ANSWERED, None, W, E.NORMAL, O.ANSWERED, 16, D.ANSWER, N, L_ANS),
    (What.TERMINATE_WEBHOOK, S.RINGING, None, W, E.NO_ANSWER, O.NO_ANSWER, 19, D.NOANSWER, N,
     L_UN),
    (What.WHATSAPP_FAILED, S.RINGING, 138003, W, E.BUSY, O.REJECTED, 17, D.BUSY, N, L_NO),
    (What.WHATSAPP_FAILED, S.RINGING, 138021, W, E.WHATSAPP_ERROR, O.FAILED, 41, D.FAILED, N,
     L_NO),
    (What.WHATSAPP_FAILED, S.ANSWERED, 138021, W, E.WHATSAPP_ERROR, O.FAILED, 41, D.ANSWER, N,
     L_ANS),
    (What.BUSY, S.CALLING, None, W, E.BUSY, O.REJECTED, 17, D.BUSY, N, L_NO),
    (What.REJECTED, S.RINGING, None, W, E.DECLINED, O.REJECTED, 21, D.REJECTED, N, L_UN),
    (What.RING_TIMEOUT, S.RINGING, None, G, E.NO_ANSWER, O.NO_ANSWER, 19, D.NOANSWER, T, L_UN),
    # refused (the ledger before dialing, or Meta at connect)
    (What.NO_PERMISSION, S.NEW, None, W, E.NO_PERMISSION, O.REJECTED, 52, D.NO_PERMISSION, N,
     L_NO),
    (What.LIMIT, S.NEW, None, W, E.LIMIT, O.REJECTED, 34, D.LIMIT, N, L_NO),
    (What.GRAPH_ERROR, S.NEW, 138006, W, E.NO_PERMISSION, O.REJECTED, 52, D.NO_PERMISSION, N,
     L_NO),
    (What.GRAPH_ERROR, S.NEW, 138005, W, E.LIMIT, O.REJECTED, 34, D.LIMIT, N, L_NO),
    (What.GRAPH_ERROR, S.NEW, 138000, G, E.META_API_ERROR, O.FAILED, 41, D.FAILED, N, L_NO),
    (What.GRAPH_ERROR, S.NEW, None, G, E.META_API_ERROR, O.FAILED, 41, D.FAILED, N, L_NO),
    # finding 4: only the ring timeout is "no answer"; the others say nothing about the user
    (What.GRAPH_TIMEOUT, S.NEW, None, G, E.META_API_ERROR, O.FAILED, 41, D.FAILED, N, L_NO),
    (What.ANSWER_TIMEOUT, S.CALLING, None, G, E.ANSWER_TIMEOUT, O.FAILED, 41, D.FAILED, T, L_NO),
    (What.MEDIA_TIMEOUT, S.RINGING, None, G, E.MEDIA_TIMEOUT, O.FAILED, 41, D.FAILED, T, L_NO),
    # the agent or the API gives up first
    (What.AGENT_HANGUP, S.RINGING, None, A, E.CANCELLED, O.ABANDONED, 16, D.CANCEL, T, L_NO),
    (What.API_HANGUP, S.CALLING, None, G, E.CANCELLED, O.ABANDONED, 16, D.CANCEL, T, L_NO),
    (What.API_HANGUP, S.ANSWERED, None, G, E.NORMAL, O.ANSWERED, 16, D.ANSWER, T, L_ANS),
    # answered, then
    (What.ASTERISK_HANGUP, S.ANSWERED, None, A, E.NORMAL, O.ANSWERED, 21, D.ANSWER, T, L_ANS),
    (What.MEDIA_LOST, S.ANSWERED, None, G, E.MEDIA_LOST, O.FAILED, 41, D.ANSWER, T, L_ANS),
    (What.ORIGINATE_FAILED, S.ANSWERED, None, A, E.ASTERISK_REFUSED, O.FAILED, 41, D.ANSWER, T,
     L_ANS),
    (What.SHUTDOWN, S.ANSWERED, None, G, E.SHUTDOWN, O.ANSWERED, 41, D.ANSWER, T, L_ANS),
    (What.SHUTDOWN, S.NEW, None, G, E.SHUTDOWN, O.FAILED, 41, D.FAILED, N, L_NO),
    (What.CAPACITY, S.NEW, None, G, E.CAPACITY, O.FAILED, 41, D.FAILED, N, L_NO),
    (What.AMI_LOST, S.ANSWERED, None, G, E.ASTERISK_DOWN, O.FAILED, 41, D.ANSWER, T, L_ANS),
    (What.GATEWAY_ERROR, S.CALLING, None, G, E.GATEWAY_ERROR, O.FAILED, 41, D.FAILED, T, L_NO),
]


@pytest.mark.parametrize("what,state,code,side,reason,outcome,q850,dial,graph,ledger",
                         OUTBOUND_ROWS)
def test_outbound_row(what, state, code, side, reason, outcome, q850, dial, graph, ledger):
    e = ending_for(what, state, direction=OUT, meta_code=code, cause=21)
    assert (e.side, e.reason, e.outcome, e.q850, e.dial_status, e.graph, e.ledger) == \
        (side, reason, outcome, q850, dial, graph, ledger)


def test_every_what_has_a_row_and_a_test():
    assert set(TABLE) == set(What)
    tested = {row[0] for row in INBOUND_ROWS} | {row[0] for row in OUTBOUND_ROWS}
    assert tested == set(What)


@pytest.mark.parametrize("direction", [IN, OUT])
@pytest.mark.parametrize("state", list(CallState))
@pytest.mark.parametrize("what", list(What))
def test_invariants_over_the_whole_table(what, state, direction):
    """What holds for every cell: Meta is never told about a call it ended itself; an
    answered inbound call is terminated, never rejected; only Asterisk's own ends leave the
    channel alone; the ledger only hears about calls Meta knows."""
    e = ending_for(what, state, direction=direction, cause=16)
    if e.side == HangupSide.WHATSAPP:
        assert e.graph == GraphAction.NONE
    if direction == IN and state == CallState.ANSWERED and e.side != HangupSide.WHATSAPP:
        assert e.graph == GraphAction.TERMINATE
    if direction == OUT:
        assert e.graph != GraphAction.REJECT  # reject is for calls from users (§2)
        assert e.dial_status is not None
        if state == CallState.NEW:
            assert e.ledger == LedgerCount.NONE and e.graph == GraphAction.NONE
    assert e.hangup_channel == (what not in (What.ASTERISK_HANGUP, What.ASTERISK_VANISHED))
    assert e.counts_unanswered == (e.ledger == LedgerCount.UNANSWERED)


def test_asterisk_cause_is_passed_through_and_may_be_unknown():
    e = ending_for(What.ASTERISK_HANGUP, CallState.ANSWERED, direction=IN, cause=None)
    assert e.q850 is None and not e.hangup_channel


def test_exceptions_are_named():
    from gateway.asterisk.ami import AmiError, AmiNotConnected
    from gateway.media.ports import PortsExhausted
    from gateway.media.webrtc import NoCandidates, SdpError
    from gateway.whatsapp.graph import GraphError

    assert what_for(CallFailure(What.RING_TIMEOUT, "x")).what == What.RING_TIMEOUT
    assert what_for(SdpError("x")).what == What.BAD_SDP
    assert what_for(NoCandidates("x")).what == What.CAPACITY
    assert what_for(PortsExhausted("x")).what == What.CAPACITY
    assert what_for(AmiNotConnected("x")).what == What.NO_AMI
    assert what_for(AmiError("x")).what == What.ORIGINATE_FAILED
    graph = what_for(GraphError("accept", "boom", code=131000, http_status=400))
    assert (graph.what, graph.meta_code) == (What.GRAPH_ERROR, 131000)
    assert what_for(GraphError("connect", "slow", timed_out=True)).what == What.GRAPH_TIMEOUT
    assert what_for(KeyError("bug")).what == What.GATEWAY_ERROR
