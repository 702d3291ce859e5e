"""Every later event of a call reaches the gateway that runs it (the call manager's side of
the hand-off seam, gateway/handoff.py).

Who owns a call: an outbound call's id (our ``biz_opaque_callback_data``, the API's call id)
is a channel id carrying its instance (gateway/instance.py); an inbound call's owner is in
the store (its active record, else its claim). A call no live gateway owns (never claimed,
ended, or its owner gone, whose calls a take-over ends) is handled where the event landed, as
on one gateway: a ``terminate`` leaves a tombstone, so a late ``connect`` never starts it.

Delivery is acknowledged: an event is sent again, with growing waits, until the owner says it
took it, for as long as the owner's heartbeat says it is alive (:data:`EVENT_GIVE_UP_S`); the
owner's de-duplication (Meta's own ``dedup_key``) drops a copy that did arrive twice. An owner
that is gone, or never answers within that time, is treated as no owner.

A new call (a user's ``connect``) is the store's claim to decide, except at a draining gateway:
that one passes it on to a neighbour still taking calls (gateway/calls/pass_on.py).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from gateway.calls.manager import CallManager
from gateway.calls.pass_on import KIND as NEW_CALL
from gateway.calls.pass_on import NewCallPassOn, is_new_call
from gateway.handoff import CallEventRouter, HandOff, event_from_dict, event_to_dict
from gateway.instance import GONE_AFTER_S, channel_instance
from gateway.whatsapp.events import CallEvent, Event, StatusEvent

log = logging.getLogger(__name__)

EVENT_ACK_S = 1.0
"""How long an event waits for the owner's acknowledgement before it is sent again: a hand-off
takes about a millisecond on one host (docs/scaling.md), so a missing answer means the message
was lost (the owner's listening connection was being re-made) or the owner is stuck."""
EVENT_ACK_MAX_S = 5.0
"""The longest wait for one acknowledgement: each unanswered send waits twice as long as the
one before (1, 2, 4, 5, 5 ... s), so a loaded owner is not flooded with copies."""
EVENT_GIVE_UP_S = GONE_AFTER_S
"""An event is sent again for as long as its owner is alive: giving up sooner would leave the
call up at the owner with nobody to end it (a lost terminate). Past this, or once the owner's
heartbeat says it is gone, the event is handled where it landed."""
API_ANSWER_S = 15.0
"""An API request for a call on another gateway: ``DELETE`` waits for the call to end there
(its teardown: Graph terminate, Asterisk hangup), which is seconds at worst."""

OwnerOf = Callable[[str], Awaitable[str | None]]
"""The instance running an inbound call, from the store (``CallStore.owner_of``)."""
StateOf = Callable[[Any], dict[str, Any]]
"""An outbound call as the API shows it (gateway/api.py ``call_state``)."""


@dataclass
class HandOffStats:
    """Events handed off and received, and how long the owner took to acknowledge the last
    one (shown in /readyz)."""

    sent: int = 0
    received: int = 0
    unanswered: int = 0
    last_ack_s: float | None = None


class CallHandOff:
    """Sends the later events of calls another gateway runs to that gateway, answers the
    hand-offs addressed to this one, and asks the owner about a live call for the API."""

    def __init__(self, calls: CallManager, router: CallEventRouter, instance_id: str, *,
                 owner_of: OwnerOf, state_of: StateOf,
                 gone: Callable[[], set[str]] = set,
                 alive: Callable[[], set[str]] = set,
                 give_up_s: float = EVENT_GIVE_UP_S):
        self.calls = calls
        self.give_up_s = give_up_s
        """How long an event is re-sent to an owner that is not yet gone: the store's
        gone-after time (``gateway.gone_after_s``), after which the owner counts as gone."""
        self.router = router
        self.instance_id = instance_id
        self.owner_of = owner_of
        self.state_of = state_of
        self.gone = gone
        """Instances silent for too long: their calls are taken over, not handed to."""
        self.stats = HandOffStats()
        self.new_calls = NewCallPassOn(calls, router, instance_id, neighbours=alive)
        """While draining, new calls go to a neighbour still taking calls."""

    async def start(self) -> None:
        await self.router.start(self.receive)
        self.calls.event_hooks.append(self.hook)

    async def close(self) -> None:
        if self.hook in self.calls.event_hooks:
            self.calls.event_hooks.remove(self.hook)
        await self.router.close()

    # --- sending --------------------------------------------------------------------------------

    def hook(self, ev: Event) -> bool:
        """A :attr:`CallManager.event_hooks` entry: takes the later events of calls not live
        here (True), to be routed in the background."""
        if not isinstance(ev, CallEvent | StatusEvent):
            return False
        if self.new_calls.wants(ev):  # draining: a neighbour still taking calls runs it
            assert isinstance(ev, CallEvent)
            self.calls.spawn(self.new_calls.run(ev))
            return True
        if is_new_call(ev):
            return False  # a new call: the store's claim decides who runs it
        if self.calls.runs(ev):
            return False
        self.calls.spawn(self._route(ev))
        return True

    async def owner(self, ev: CallEvent | StatusEvent) -> str | None:
        """Which instance runs the event's call: None when no live gateway does."""
        owner = channel_instance(ev.biz_opaque_callback_data or "")
        if owner is None:
            try:
                owner = await self.owner_of(ev.call_id)
            except Exception as exc:  # the store is down: nobody can be asked
                log.warning("call %s: cannot ask the call store who runs it (%s)", ev.call_id,
                            exc or type(exc).__name__)
                return None
        return owner if owner and owner not in self.gone() else None

    async def _route(self, ev: CallEvent | StatusEvent) -> None:
        owner = await self.owner(ev)
        if owner is not None and owner != self.instance_id:
            what = ev.event if isinstance(ev, CallEvent) else ev.status
            message = HandOff("event", event_to_dict(ev))
            deadline = time.monotonic() + self.give_up_s
            wait, attempt = EVENT_ACK_S, 0
            while owner not in self.gone() and time.monotonic() < deadline:
                attempt += 1
                started = time.perf_counter()
                answer = await self.router.send(owner, message, wait)
                if answer is not None:
                    self._acked(time.perf_counter() - started)
                    log.info("call %s: %s handed to gateway %s", ev.call_id, what, owner)
                    return
                log.warning("call %s: gateway %s did not acknowledge the %s within %g s "
                            "(attempt %d); sending it again while that gateway is alive",
                            ev.call_id, owner, what, wait, attempt)
                wait = min(wait * 2, EVENT_ACK_MAX_S)
            self.stats.unanswered += 1
        # No live owner elsewhere: as a single gateway would (a terminate leaves a tombstone)
        self.calls.dispatch(ev)

    def _acked(self, seconds: float) -> None:
        self.stats.sent += 1
        self.stats.last_ack_s = seconds

    def elsewhere(self, call_id: str) -> str | None:
        """The live gateway that runs API call ``call_id``, when it is not this one."""
        owner = channel_instance(call_id)
        if owner is None or owner == self.instance_id or owner in self.gone():
            return None
        return owner

    async def get_call(self, call_id: str) -> dict[str, Any] | None:
        """The API's view of a live call on another gateway; None: not live there."""
        return await self._ask("get_call", call_id)

    async def delete_call(self, call_id: str) -> dict[str, Any] | None:
        """Hang up a call another gateway runs, once it has ended there; None: not live."""
        return await self._ask("delete_call", call_id)

    async def _ask(self, kind: str, call_id: str) -> dict[str, Any] | None:
        owner = self.elsewhere(call_id)
        if owner is None:
            return None
        answer = await self.router.send(owner, HandOff(kind, {"id": call_id}), API_ANSWER_S)
        if answer is None:
            log.warning("API %s %s: gateway %s did not answer", kind, call_id, owner)
            return None
        return answer.get("call")

    # --- receiving ------------------------------------------------------------------------------

    async def receive(self, message: HandOff) -> dict[str, Any] | None:
        """A hand-off for this gateway: act on it and answer."""
        self.stats.received += 1
        if message.kind == "event":
            try:
                ev = event_from_dict(message.body)
            except (KeyError, TypeError) as exc:
                log.warning("hand-off from %s is not an event (%s): dropped", message.sender,
                            exc)
                return {"ok": False}
            fresh = self.calls.deliver(ev)
            return {"ok": True, "duplicate": not fresh}
        if message.kind == NEW_CALL:
            return self.new_calls.receive(message)
        call_id = str(message.body.get("id", ""))
        call = self.calls.find_outbound(call_id)
        if message.kind == "get_call":
            return {"call": self.state_of(call) if call is not None else None}
        if message.kind == "delete_call":
            if call is None:
                return {"call": None}
            call.hangup(f"hung up through the API (at gateway {message.sender})")
            await call.done.wait()
            return {"call": self.state_of(call)}
        log.warning("hand-off of unknown kind %r from %s: dropped", message.kind,
                    message.sender)
        return None


async def open_handoff(calls: CallManager, store: Any, config: Any,
                       gone: Callable[[], set[str]],
                       alive: Callable[[], set[str]] = set) -> CallHandOff | None:
    """The hand-off of a gateway on a shared PostgreSQL store, started (LISTEN/NOTIFY,
    gateway/store/notify.py); None alone on SQLite, where nothing is handed off."""
    if not (store.backend.shared and config.store.url):
        return None
    from gateway.api import call_state  # the API's own view of a call, not a dependency
    from gateway.store.notify import PgNotifyRouter  # psycopg: only with a PostgreSQL store

    instance = config.gateway.instance_id
    handoff = CallHandOff(calls, PgNotifyRouter(config.store.url, instance), instance,
                          owner_of=store.owner_of, state_of=call_state, gone=gone,
                          alive=alive, give_up_s=config.gateway.gone_after_s)
    await handoff.start()
    return handoff
