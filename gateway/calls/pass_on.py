"""A draining gateway passes a new call on to a neighbour that still takes calls (the rolling
restart of docs/scaling.md).

When a gateway drains (SIGTERM), the load balancer takes a few seconds to see its /readyz
answer 503, and Meta retries a failed webhook to the same URL: a ``connect`` may still land
here. Rejecting it loses a caller another gateway on the same store could answer. So a
draining gateway offers the connect to its live neighbours over the hand-off seam
(gateway/handoff.py), one at a time in random order (the load spreads); the first that takes
it runs the call as if the webhook had landed there: its own claim in the store, its own
checks. A neighbour that is draining too, or has no Asterisk, refuses at once; one that does
not answer within :data:`PASS_ON_ANSWER_S` (stopped, its heartbeat not yet stale) is skipped,
and tried last for the next calls.
Only when none takes it is the connect handled here as before: claimed, and rejected as
shutdown.

The draining gateway claims nothing first: the taker's claim is the only one, so a copy of the
same connect that Meta delivered to a third gateway still starts one call. Alone on SQLite
there is no router and nothing is passed on.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable, Iterable
from typing import Any

from gateway.calls.manager import CallManager
from gateway.handoff import CallEventRouter, HandOff, event_from_dict, event_to_dict
from gateway.whatsapp.events import CallEvent, Event

log = logging.getLogger(__name__)

KIND = "connect"
"""The hand-off kind of a new call passed on (an answer ``taken`` True or False)."""
PASS_ON_ANSWER_S = 1.0
"""How long a neighbour has to answer: a hand-off takes about a millisecond (docs/scaling.md),
so silence means it is gone; the caller is ringing meanwhile, and WhatsApp rings for about a
minute, so even a few silent neighbours cost the caller little."""
SILENT_LAST_S = 60.0
"""A neighbour that did not answer is tried after the others for this long: as long as its
heartbeat may still look alive (gateway/instance.py GONE_AFTER_S), so only the first caller
waits for it."""


def is_new_call(ev: Event) -> bool:
    """A user's ``connect``: the only event a draining gateway passes on (a later event of a
    call goes to its owner, gateway/calls/routing.py)."""
    return isinstance(ev, CallEvent) and ev.event == "connect" \
        and ev.direction == "USER_INITIATED"


def refusal(calls: CallManager) -> str | None:
    """Why this gateway would not take a call passed on to it; None: it takes it. It must
    not take one only to reject it: the sender then tries another neighbour."""
    if calls.draining:
        return "draining"
    if not getattr(calls.deps.ami, "connected", False):
        return "Asterisk AMI not connected"
    return None


class NewCallPassOn:
    """Passes this draining gateway's new calls on, and takes those a draining neighbour
    passes here."""

    def __init__(self, calls: CallManager, router: CallEventRouter, instance_id: str, *,
                 neighbours: Callable[[], Iterable[str]],
                 order: Callable[[list[str]], None] = random.shuffle):
        self.calls = calls
        self.router = router
        self.instance_id = instance_id
        self.neighbours = neighbours
        """The other live gateways on the store (:meth:`Neighbours.alive_others`)."""
        self.order = order
        self.silent: dict[str, float] = {}
        """Neighbours that did not answer, until when (time.monotonic()) they are tried last."""
        self.passed = 0
        """New calls this gateway passed on while draining."""
        self.taken = 0
        """New calls a draining neighbour passed to this gateway and it took."""

    def wants(self, ev: Event) -> bool:
        """Should this event be passed on rather than handled here?"""
        return isinstance(ev, CallEvent) and is_new_call(ev) and self.calls.draining \
            and not self.calls.runs(ev)

    async def run(self, ev: CallEvent) -> None:
        """Pass ``ev`` on; when no neighbour takes it, handle it here (rejected: draining)."""
        taker = await self.pass_on(ev)
        if taker is None:
            log.warning("call %s: no other gateway takes calls; rejected here (draining)",
                        ev.call_id)
            self.calls.dispatch(ev)

    async def pass_on(self, ev: CallEvent) -> str | None:
        """Offer the connect to each live neighbour until one takes it; returns who did."""
        message = HandOff(KIND, event_to_dict(ev))
        for neighbour in self.candidates():
            answer = await self.router.send(neighbour, message, PASS_ON_ANSWER_S)
            if answer is None:
                log.warning("call %s: gateway %s did not answer; trying the next", ev.call_id,
                            neighbour)
                self.silent[neighbour] = time.monotonic() + SILENT_LAST_S
                continue
            self.silent.pop(neighbour, None)
            if answer.get("taken"):
                self.passed += 1
                log.info("call %s: draining; new call passed to gateway %s", ev.call_id,
                         neighbour)
                return neighbour
            log.info("call %s: gateway %s does not take it (%s)", ev.call_id, neighbour,
                     answer.get("why", "?"))
        return None

    def candidates(self) -> list[str]:
        """The live neighbours in the order to try them: at random, those that were silent
        lately last."""
        now = time.monotonic()
        self.silent = {n: until for n, until in self.silent.items() if until > now}
        candidates = sorted(set(self.neighbours()) - {self.instance_id})
        self.order(candidates)
        return sorted(candidates, key=lambda n: n in self.silent)  # stable: the order stays

    def receive(self, message: HandOff) -> dict[str, Any]:
        """A new call a draining neighbour passes here: run it, unless this gateway would only
        reject it."""
        why = refusal(self.calls)
        if why is not None:
            return {"taken": False, "why": why}
        try:
            ev = event_from_dict(message.body)
        except (KeyError, TypeError) as exc:
            log.warning("new call from %s is not an event (%s): refused", message.sender, exc)
            return {"taken": False, "why": "not an event"}
        if not is_new_call(ev):
            return {"taken": False, "why": "not a new call"}
        fresh = self.calls.deliver(ev)
        self.taken += fresh
        log.info("call %s: new call passed on by draining gateway %s: taken", ev.call_id,
                 message.sender)
        return {"taken": True, "duplicate": not fresh}
