"""The orphan sweep: which Asterisk channels a (re)connected gateway hangs up, and why.

chan_rtp has no RTP timeout, so a UnicastRTP channel whose gateway crashed (or lost it while
AMI was down) stays up forever: its caller would sit in a queue or an IVR with nobody on the
line (docs/asterisk-handoff.md, "Hangups"). So on every AMI (re)connect, before the gateway
takes calls again, every channel that

- is a ``UnicastRTP/`` channel,
- has a Uniqueid with this gateway's :data:`CHANNEL_PREFIX` (every call's channel id has it),
- and is owned by no live call of this process,

is hung up with cause :data:`ORPHAN_CAUSE`. The AMI client only offers the mechanism (its
``on_connect`` hook, ``core_show_channels``, ``hangup``); this policy is the calls' business.
A client that is not the gateway (``check-config --asterisk``) installs no sweep: it owns no
call, so every live call of a running gateway would look orphaned to it.

After a reconnect, the opposite: :func:`reconcile` ends the calls whose channel is gone.

The other orphans are call records a killed previous run left active: Meta still has those
calls up, so at start :func:`end_records` ends their WhatsApp side and closes the records.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Protocol

from gateway.asterisk.causes import NORMAL_TEMPORARY_FAILURE
from gateway.calls.ending import CallState, GraphAction, What, ending_for
from gateway.calls.outbound import OutboundCall
from gateway.calls.record import CallRecord, Direction
from gateway.instance import CHANNEL_PREFIX
from gateway.store import ORPHAN_REASON
from gateway.whatsapp.graph import GraphError

if TYPE_CHECKING:
    from gateway.calls.base import Call
    from gateway.calls.deps import CallDeps

log = logging.getLogger(__name__)

Event = dict[str, str]


ORPHAN_CAUSE = NORMAL_TEMPORARY_FAILURE
"""Cause for swept orphans: the call ended because the gateway lost it, not normally."""


class SweepingAmi(Protocol):
    """What the sweep needs of the AMI client (gateway/asterisk/ami.py)."""

    on_connect: list

    @property
    def connected(self) -> bool: ...

    async def core_show_channels(self) -> list[Event]: ...

    async def hangup(self, channel_id: str, cause: int = 16) -> bool: ...


def orphans(channels: Iterable[Event], owned: Callable[[str], bool],
            prefix: str = CHANNEL_PREFIX) -> list[Event]:
    """The channels among ``channels`` (CoreShowChannel events) to hang up."""
    return [c for c in channels
            if c.get("Uniqueid", "").startswith(prefix)
            and c.get("Channel", "").startswith("UnicastRTP/")
            and not owned(c.get("Uniqueid", ""))]


class OrphanSweep:
    """Hangs up this gateway's orphaned channels on every AMI (re)connect."""

    def __init__(self, ami: SweepingAmi, owned: Callable[[str], bool],
                 prefix: str = CHANNEL_PREFIX):
        self.ami = ami
        self.owned = owned
        """Does a live call own this channel id? (``CallManager.owns_channel``)"""
        self.prefix = prefix

    def install(self) -> OrphanSweep:
        """Run :meth:`sweep` on every connect, before the client reports itself connected."""
        self.ami.on_connect.append(self.sweep)
        return self

    async def sweep(self) -> list[str]:
        """Hang up the orphans now; return the ids that were hung up."""
        swept = []
        for channel in orphans(await self.ami.core_show_channels(), self.owned, self.prefix):
            uniqueid = channel["Uniqueid"]
            log.warning("AMI: hanging up orphaned channel %s (%s)", uniqueid, channel["Channel"])
            if await self.ami.hangup(uniqueid, ORPHAN_CAUSE):
                swept.append(uniqueid)
        return swept


def reconcile(calls: Sequence[Call], channels: Iterable[Event]) -> None:
    """After an AMI reconnect: end the ``calls`` (those on that Asterisk) whose channel is
    not among ``channels`` (CoreShowChannel events), and cancel the outbound dials whose
    waiting agent channel is gone.

    While AMI was down, Asterisk may have restarted (taking every channel with it) or hung
    channels up without the gateway hearing the Hangup event; those WhatsApp callers would
    otherwise sit in silence until they gave up."""
    alive = {c.get("Uniqueid", "") for c in channels}
    for call in calls:
        if call.channel_made and call.channel_id not in alive:
            call.end(What.ASTERISK_VANISHED, "the Asterisk channel vanished while AMI was down")
        if isinstance(call, OutboundCall) and call.request.agent_uniqueid \
                and call.state != CallState.ANSWERED \
                and call.request.agent_uniqueid not in alive:
            call.cancel_dial("the waiting channel vanished while AMI was down")


async def end_records(deps: CallDeps, records: Iterable[CallRecord], *,
                      why: str = ORPHAN_REASON, when: str = "on restart") -> int:
    """Calls a previous run left open (it was killed): end their WhatsApp side — Meta
    still has them up, the users connected to nothing — and close their records.

    ``records`` are the store's active records as read at start, or those taken over from a
    gone gateway (``why`` and ``when`` then say so in each record's reason); returns how
    many were ended on the WhatsApp side."""
    ended = 0
    for record in records:
        state = CallState.ANSWERED if record.answered_at else (
            CallState.CALLING if record.direction == Direction.OUTBOUND
            else CallState.RINGING)
        ending = ending_for(What.CRASH, state, direction=record.direction)
        record.outcome, record.end_reason = ending.outcome, ending.reason
        record.hangup_side = record.hangup_side or ending.side
        record.ended_at = record.ended_at or time.time()
        record.reason = why
        if ending.graph != GraphAction.NONE and record.wacid:
            # The record may predate an accept that went through before the crash: when
            # Meta refuses the reject as such, the call was accepted after all.
            actions = [ending.graph] + ([GraphAction.TERMINATE]
                                        if ending.graph == GraphAction.REJECT else [])
            for action in actions:
                send = deps.graph.terminate if action == GraphAction.TERMINATE \
                    else deps.graph.reject
                try:
                    await send(record.phone_number_id, record.wacid)
                except GraphError as exc:
                    record.reason += f"; {action.value} {when} failed: {exc}"
                    log.warning("call %s left by the previous run: %s failed: %s",
                                record.wacid, action.value, exc)
                    if exc.retryable:
                        break  # Meta is down, not refusing: the other would fail too
                    continue
                record.reason += f"; WhatsApp side ended with {action.value} {when}"
                ended += 1
                break
        log.warning("call %s left by the previous run closed: %s", record.wacid,
                    record.reason)
        if deps.store is not None:
            try:
                await deps.store.save(record)
            except Exception as exc:
                log.error("call %s: record not saved: %s", record.wacid, exc)
    return ended
