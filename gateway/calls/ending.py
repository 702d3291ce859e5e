"""How a call ends: one table from "what happened" to everything that follows from it.

Every way a call can end — a terminate webhook, Asterisk's Hangup, media lost, a timeout, a
Graph error, a refusal at admission, the gateway stopping — is named by a :class:`What`. Given
what happened and the call's :class:`CallState` at that moment, :func:`ending_for` decides
(and nothing else in the gateway decides):

- which side hung up, the bounded end reason, and the outcome written to the call record;
- the Q.850 cause the Asterisk side gets (our channel, and for outbound calls the waiting
  agent channel), and the ``WA_DIAL_STATUS`` a dialplan ``Dial()`` user sees;
- which Graph action, if any, ends the WhatsApp side: ``reject`` for an inbound call not yet
  accepted, ``terminate`` for an answered one or a business-initiated call Meta knows of,
  nothing when Meta ended it (docs/meta-calling.md §2);
- whether the outbound permission ledger counts the call as answered, unanswered (four
  unanswered in a row revoke the permission, §10) or not at all;
- whether the gateway must hang up the Asterisk channel (not when Asterisk ended it).

Exceptions raised while a call is set up are turned into a ``What`` by :func:`what_for` here
too, so the calls' ``run`` methods have no decision ladder of their own. docs/call-ending.md
tells the table in prose.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from gateway.asterisk import causes
from gateway.asterisk.ami_errors import AmiNotConnected
from gateway.calls.record import Direction, EndReason, HangupSide, Outcome
from gateway.errors import (
    AsteriskRefused,
    CapacityExhausted,
    GatewayError,
    MediaFailed,
    MetaRefused,
)
from gateway.media.webrtc import SdpError
from gateway.whatsapp.graph import GraphError


class What(StrEnum):
    """What happened to end a call (an event, a refusal, or a typed failure)."""

    # The WhatsApp side
    TERMINATE_WEBHOOK = "terminate_webhook"  # the user hung up, or Meta ended the call
    WHATSAPP_FAILED = "whatsapp_failed"  # a terminate webhook carrying an error (e.g. 138021)
    REJECTED = "rejected"  # outbound: the user declined (REJECTED status)
    BUSY = "busy"  # outbound: Meta 138003, a call with this user is in progress
    NO_PERMISSION = "no_permission"  # outbound: no call permission (ledger or Meta)
    LIMIT = "limit"  # outbound: a Meta or ledger limit
    # The Asterisk side
    ASTERISK_HANGUP = "asterisk_hangup"  # the Hangup event of our channel
    AGENT_HANGUP = "agent_hangup"  # outbound: the waiting agent channel left before the answer
    ASTERISK_VANISHED = "asterisk_vanished"  # the channel disappeared while AMI was down
    ORIGINATE_FAILED = "originate_failed"  # Asterisk refused or could not describe the channel
    NO_AMI = "no_ami"  # AMI not connected when the call needed it
    AMI_LOST = "ami_lost"  # AMI gone for longer than the grace with the call up
    # Media and timing
    MEDIA_LOST = "media_lost"  # the WebRTC leg failed or went silent mid-call
    MEDIA_TIMEOUT = "media_timeout"  # ICE/DTLS never came up
    RING_TIMEOUT = "ring_timeout"  # outbound: the user never picked up
    ANSWER_TIMEOUT = "answer_timeout"  # outbound: Meta's connect webhook (answer SDP) never came
    # Meta's Graph API
    GRAPH_ERROR = "graph_error"  # a Graph request failed (Meta's code, HTTP status, no route)
    GRAPH_TIMEOUT = "graph_timeout"  # a Graph request got no answer in graph_timeout_s
    # The gateway
    CAPACITY = "capacity"  # max_calls, no RTP port, no WebRTC port
    BAD_SDP = "bad_sdp"
    UNKNOWN_NUMBER = "unknown_number"
    API_HANGUP = "api_hangup"  # DELETE /v1/calls/{id}, or an operator's end()
    SHUTDOWN = "shutdown"  # the gateway is stopping or draining
    CRASH = "crash"  # the previous run died with the call up (closed on the next start)
    GATEWAY_ERROR = "gateway_error"  # a bug: an exception nothing expected


class CallState(StrEnum):
    """Where a call is in its life: the one fact the ending depends on.

    Inbound: NEW → RINGING (pre_accept sent) → DIALPLAN (channel up, accept in flight)
    → ANSWERED → ENDED. Outbound: NEW (permission check, connect in flight) → CALLING (Meta
    gave the call id) → RINGING → ANSWERED (the user picked up; the channel follows) → ENDED.
    Whether an Asterisk channel exists is not a state: a call that sent an Originate waits for
    it and hangs up what it created, whatever state it ended in."""

    NEW = "new"
    CALLING = "calling"
    RINGING = "ringing"
    DIALPLAN = "dialplan"
    ANSWERED = "answered"
    ENDED = "ended"


class DialStatus(StrEnum):
    """``WA_DIAL_STATUS`` for the dialplan that placed an outbound call (like ``DIALSTATUS``)."""

    ANSWER = "ANSWER"
    REJECTED = "REJECTED"
    NOANSWER = "NOANSWER"
    BUSY = "BUSY"
    NO_PERMISSION = "NO_PERMISSION"
    LIMIT = "LIMIT"
    FAILED = "FAILED"
    CANCEL = "CANCEL"


class GraphAction(StrEnum):
    """How the WhatsApp side is ended."""

    REJECT = "reject"
    TERMINATE = "terminate"
    NONE = "none"


class LedgerCount(StrEnum):
    """What the permission ledger records for an outbound call (§10 unanswered streak)."""

    ANSWERED = "answered"
    UNANSWERED = "unanswered"
    NONE = "none"


# Q.850 cause the waiting channel gets for each result
# (docs/asterisk-handoff.md suggests 21/19/17).
DIAL_CAUSE: dict[DialStatus, int] = {
    DialStatus.ANSWER: causes.NORMAL_CLEARING,
    DialStatus.REJECTED: causes.CALL_REJECTED,
    DialStatus.NOANSWER: causes.NO_ANSWER,
    DialStatus.BUSY: causes.USER_BUSY,
    DialStatus.NO_PERMISSION: 52,  # OUTGOING_CALL_BARRED: no permission to call this user
    DialStatus.LIMIT: 34,  # NORMAL_CIRCUIT_CONGESTION: a rate limit, try later
    DialStatus.FAILED: causes.NORMAL_TEMPORARY_FAILURE,
    DialStatus.CANCEL: causes.NORMAL_CLEARING,
}

# Meta error codes (§11) that say more than "failed" about a business-initiated call.
META_WHAT: dict[int, What] = {
    138003: What.BUSY,
    138006: What.NO_PERMISSION,
    138013: What.NO_PERMISSION,
    138002: What.LIMIT,
    138005: What.LIMIT,
    138012: What.LIMIT,
    138014: What.LIMIT,
}


@dataclass(frozen=True)
class Row:
    """One line of the table: what follows from a ``What``, before the state is applied."""

    side: HangupSide
    reason: EndReason
    fault: bool
    """A failure (outcome FAILED, cause 41) rather than someone ending the call on purpose."""
    refusal: bool = False
    """An inbound call refused before it was answered is REJECTED, not FAILED."""
    dial: DialStatus = DialStatus.FAILED
    """Outbound, not answered: what the dialplan is told."""


W, A, G = HangupSide.WHATSAPP, HangupSide.ASTERISK, HangupSide.GATEWAY
E = EndReason

TABLE: dict[What, Row] = {
    What.TERMINATE_WEBHOOK: Row(W, E.NORMAL, fault=False, dial=DialStatus.NOANSWER),
    What.WHATSAPP_FAILED: Row(W, E.WHATSAPP_ERROR, fault=True),
    What.REJECTED: Row(W, E.DECLINED, fault=False, dial=DialStatus.REJECTED),
    What.BUSY: Row(W, E.BUSY, fault=False, dial=DialStatus.BUSY),
    What.NO_PERMISSION: Row(W, E.NO_PERMISSION, fault=False, refusal=True,
                            dial=DialStatus.NO_PERMISSION),
    What.LIMIT: Row(W, E.LIMIT, fault=False, refusal=True, dial=DialStatus.LIMIT),
    What.ASTERISK_HANGUP: Row(A, E.NORMAL, fault=False),
    What.AGENT_HANGUP: Row(A, E.CANCELLED, fault=False, dial=DialStatus.CANCEL),
    What.ASTERISK_VANISHED: Row(A, E.ASTERISK_VANISHED, fault=True),
    What.ORIGINATE_FAILED: Row(A, E.ASTERISK_REFUSED, fault=True),
    What.NO_AMI: Row(G, E.ASTERISK_DOWN, fault=True, refusal=True),
    What.AMI_LOST: Row(G, E.ASTERISK_DOWN, fault=True),
    What.MEDIA_LOST: Row(G, E.MEDIA_LOST, fault=True),
    What.MEDIA_TIMEOUT: Row(G, E.MEDIA_TIMEOUT, fault=True),
    What.RING_TIMEOUT: Row(G, E.NO_ANSWER, fault=False, dial=DialStatus.NOANSWER),
    What.ANSWER_TIMEOUT: Row(G, E.ANSWER_TIMEOUT, fault=True),
    What.GRAPH_ERROR: Row(G, E.META_API_ERROR, fault=True),
    What.GRAPH_TIMEOUT: Row(G, E.META_API_ERROR, fault=True),
    What.CAPACITY: Row(G, E.CAPACITY, fault=True, refusal=True),
    What.BAD_SDP: Row(G, E.BAD_SDP, fault=True, refusal=True),
    What.UNKNOWN_NUMBER: Row(G, E.UNKNOWN_NUMBER, fault=True, refusal=True),
    What.API_HANGUP: Row(G, E.NORMAL, fault=False, refusal=True, dial=DialStatus.CANCEL),
    What.SHUTDOWN: Row(G, E.SHUTDOWN, fault=False, refusal=True),
    What.CRASH: Row(G, E.SHUTDOWN, fault=True),
    What.GATEWAY_ERROR: Row(G, E.GATEWAY_ERROR, fault=True),
}

DIAL_OUTCOME = {
    DialStatus.ANSWER: Outcome.ANSWERED,
    DialStatus.REJECTED: Outcome.REJECTED,
    DialStatus.NOANSWER: Outcome.NO_ANSWER,
    DialStatus.BUSY: Outcome.REJECTED,
    DialStatus.NO_PERMISSION: Outcome.REJECTED,
    DialStatus.LIMIT: Outcome.REJECTED,
    DialStatus.FAILED: Outcome.FAILED,
    DialStatus.CANCEL: Outcome.ABANDONED,
}

DIAL_REASON = {
    DialStatus.REJECTED: EndReason.DECLINED,
    DialStatus.NOANSWER: EndReason.NO_ANSWER,
    DialStatus.BUSY: EndReason.BUSY,
    DialStatus.NO_PERMISSION: EndReason.NO_PERMISSION,
    DialStatus.LIMIT: EndReason.LIMIT,
    DialStatus.CANCEL: EndReason.CANCELLED,
}
"""An outbound call that never got answered is counted by its dial result."""


@dataclass(frozen=True)
class Ending:
    """Everything about how one call ends. Built only by :func:`ending_for`."""

    what: What
    state: CallState
    """The call's state when it happened."""
    side: HangupSide
    reason: EndReason
    outcome: Outcome
    q850: int | None
    """The cause for the Asterisk side (None: Asterisk ended it and gave none)."""
    dial_status: DialStatus | None
    """Outbound calls only."""
    graph: GraphAction
    ledger: LedgerCount
    hangup_channel: bool
    """The gateway hangs up its Asterisk channel (if it created one): Asterisk did not."""

    @property
    def answered(self) -> bool:
        return self.state == CallState.ANSWERED

    @property
    def counts_unanswered(self) -> bool:
        return self.ledger == LedgerCount.UNANSWERED


def ending_for(what: What, state: CallState, *, direction: Direction,
               meta_code: int | None = None, cause: int | None = None) -> Ending:
    """How a call in ``state`` ends when ``what`` happens.

    ``meta_code`` is Meta's error code (a failed Graph request, a terminate webhook with
    errors); for an outbound call it can make the ending more specific (busy, no permission,
    a limit). ``cause`` is the Q.850 cause Asterisk gave with its Hangup."""
    outbound = direction == Direction.OUTBOUND
    answered = state == CallState.ANSWERED
    if outbound and not answered and meta_code in META_WHAT and what in (
            What.TERMINATE_WEBHOOK, What.WHATSAPP_FAILED, What.GRAPH_ERROR):
        what = META_WHAT[meta_code]
    row = TABLE[what]

    # What the dialplan is told, and the outcome.
    dial: DialStatus | None = None
    if outbound:
        dial = DialStatus.ANSWER if answered else row.dial
        outcome = DIAL_OUTCOME[dial]
        if answered and row.fault:
            outcome = Outcome.FAILED
    elif answered:
        outcome = Outcome.FAILED if row.fault else Outcome.ANSWERED
    elif row.refusal:
        outcome = Outcome.REJECTED
    elif what == What.TERMINATE_WEBHOOK:
        outcome = Outcome.ABANDONED  # the caller hung up before the answer
    else:
        outcome = Outcome.FAILED
    reason = DIAL_REASON.get(dial, row.reason) if outbound and not answered else row.reason

    # The Asterisk side's cause.
    if what in (What.ASTERISK_HANGUP, What.ASTERISK_VANISHED):
        q850 = cause
    elif dial is not None and not answered:
        q850 = DIAL_CAUSE[dial]
    elif row.fault or what == What.SHUTDOWN:
        q850 = causes.NORMAL_TEMPORARY_FAILURE
    else:
        q850 = causes.NORMAL_CLEARING

    # The WhatsApp side: Meta ended it itself, or it must be told.
    if row.side == HangupSide.WHATSAPP:
        graph = GraphAction.NONE
    elif outbound:
        graph = GraphAction.NONE if state == CallState.NEW else GraphAction.TERMINATE
    else:
        graph = GraphAction.TERMINATE if answered else GraphAction.REJECT

    ledger = LedgerCount.NONE
    if outbound and state != CallState.NEW:
        if dial == DialStatus.ANSWER:
            ledger = LedgerCount.ANSWERED
        elif dial in (DialStatus.REJECTED, DialStatus.NOANSWER):
            ledger = LedgerCount.UNANSWERED

    return Ending(what=what, state=state, side=row.side, reason=reason, outcome=outcome,
                  q850=q850, dial_status=dial, graph=graph, ledger=ledger,
                  hangup_channel=what not in (What.ASTERISK_HANGUP, What.ASTERISK_VANISHED))


class CallFailure(GatewayError):
    """A typed failure inside a call's set-up: it carries what happened."""

    def __init__(self, what: What, detail: str):
        super().__init__(detail)
        self.what = what


@dataclass(frozen=True)
class Happened:
    """One thing that ended a call, as :func:`what_for` reads an exception."""

    what: What
    detail: str
    meta_code: int | None = None
    meta_text: str = ""
    error_data: dict | None = None
    """Meta's ``error_data`` of a Graph error (138012 carries the next allowed time)."""


def what_for(exc: BaseException) -> Happened:
    """What happened, read from the gateway's exception tree (gateway/errors.py): the one place
    an exception raised during a call's set-up becomes a :class:`What`. A branch is enough
    where every leaf means the same for the call; anything outside the tree is a gateway bug."""
    if isinstance(exc, CallFailure):
        return Happened(exc.what, str(exc))
    if isinstance(exc, GraphError):
        what = What.GRAPH_TIMEOUT if exc.timed_out else What.GRAPH_ERROR
        return Happened(what, str(exc), exc.code, exc.meta_message, exc.error_data)
    if isinstance(exc, MetaRefused):
        return Happened(What.GRAPH_ERROR, str(exc))
    if isinstance(exc, SdpError):
        return Happened(What.BAD_SDP, f"unusable SDP: {exc}")
    if isinstance(exc, CapacityExhausted | MediaFailed):
        return Happened(What.CAPACITY, f"capacity: {exc}")
    if isinstance(exc, AmiNotConnected):
        return Happened(What.NO_AMI, f"Asterisk AMI not connected: {exc}")
    if isinstance(exc, AsteriskRefused):
        return Happened(What.ORIGINATE_FAILED, f"Asterisk refused: {exc}")
    return Happened(What.GATEWAY_ERROR, f"gateway error: {exc!r}")
