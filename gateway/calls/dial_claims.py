"""One ``UserEvent(WhatsAppDial)``, one outbound call, however many gateways see it.

Asterisk sends every UserEvent to every AMI session that reads ``user`` events: with several
gateways on one Asterisk (docs/scaling.md), each would place the agent's call, the WhatsApp
user's phone would ring twice, and both gateways would bridge to the same waiting channel. So
on a shared store each gateway first claims the event there (``store.claim_dial``, the same
atomic claim a ``connect`` gets) and only the one that wins dials. A draining gateway (a
rolling restart, docs/scaling.md) claims a little later, so a gateway still taking calls wins.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

from gateway.calls.deps import Ami
from gateway.calls.ending import What
from gateway.calls.manager import CallManager

log = logging.getLogger(__name__)

DialClaim = Callable[[str], Awaitable[bool]]
"""Takes one WhatsAppDial (by :func:`dial_key`) for this gateway: True for exactly one of the
gateways that ask (``CallStore.claim_dial``)."""


DRAINING_CLAIM_DELAY_S = 0.5
"""How much later a draining gateway claims a WhatsAppDial: the others' claims take about a
millisecond, so one still taking calls wins it, where the draining one would only fail it. If
none does (every gateway drains, or the others' store writes are slower than this), the
draining one claims it and fails it, as before; the agent waits this much longer then."""


def dial_key(ev: dict[str, str]) -> str:
    """What tells one WhatsAppDial from another, the same for every gateway: Asterisk sends
    one event with one channel snapshot to all AMI sessions, so the channel's Uniqueid (its
    name if absent) and the dialplan step that raised it (context, extension, priority) name
    it; a later attempt from the same channel at another step is another key."""
    channel = ev.get("Uniqueid") or ev.get("Channel", "")
    return f"{channel}:{ev.get('Context', '')}:{ev.get('Exten', '')}:{ev.get('Priority', '')}"


class ClaimedDials:
    """Places a WhatsAppDial only if this gateway claimed it."""

    def __init__(self, calls: CallManager, claim: DialClaim):
        self.calls = calls
        self.claim = claim
        self.draining_delay_s = DRAINING_CLAIM_DELAY_S

    def dial_from_dialplan(self, ev: dict[str, str], ami: Ami | None = None) -> None:
        """The AMI listener's entry: claims in the background (the listener must not wait).
        ``ami``: the server that sent it (see :meth:`CallManager.dial_from_dialplan`)."""
        self.calls.spawn(self._dial_if_claimed(ev, ami))

    async def _dial_if_claimed(self, ev: dict[str, str], ami: Ami | None = None) -> None:
        key = dial_key(ev)
        if self.calls.draining:
            await asyncio.sleep(self.draining_delay_s)
        try:
            claimed = await self.claim(key)
        except Exception as exc:
            # Without the store no gateway can tell who dials, so every one would. Calling
            # the user twice is worse than failing the agent's attempt: the second call rings
            # unanswered, and 4 unanswered in a row revoke the permission
            # (docs/meta-calling.md §10).
            log.warning("WhatsAppDial %s not placed: the call store cannot say which gateway "
                        "takes it (%s)", key, exc or type(exc).__name__)
            if ev.get("Channel"):
                await self.calls.refuse_dial(ev["Channel"], "call store unavailable",
                                             What.GATEWAY_ERROR, ami=ami)
            return
        if not claimed:
            log.info("WhatsAppDial %s taken by another gateway", key)
            return
        self.calls.dial_from_dialplan(ev, ami)
