"""The registry of live calls and the gate every webhook event goes through.

Meta delivers webhooks at least once and in no guaranteed order (docs/meta-calling.md §7), so
this is where idempotence lives: events are de-duplicated on (call id, event, timestamp), an
ended call leaves a tombstone for a while so a late ``connect`` cannot revive it, and a
``terminate`` that overtakes its ``connect`` leaves a tombstone too — the call is then never
started, so nothing is left half-open.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import replace
from typing import Any

from gateway.bounded import BoundedDict
from gateway.calls.base import Call, CallDeps
from gateway.calls.deps import Ami, AsteriskServers
from gateway.calls.ending import CallState, GraphAction, What, ending_for
from gateway.calls.inbound import InboundCall
from gateway.calls.orphans import end_records, reconcile
from gateway.calls.outbound import DialRequest, OutboundCall, dial_request, refuse_dial
from gateway.calls.record import CallRecord, Direction
from gateway.media.ports import PortsExhausted
from gateway.media.sdp_offer import validate_offer
from gateway.media.webrtc import SdpError
from gateway.whatsapp.events import CallEvent, Event, ParsedWebhook, StatusEvent
from gateway.whatsapp.graph import GraphError

log = logging.getLogger(__name__)

TOMBSTONE_SECONDS = 600.0
SEEN_EVENTS = 20000
FINISHED_OUTBOUND = 1000
MAX_CONNECT_AGE_S = 300.0
"""A connect stamped longer ago than this is a replay or a delivery so late the caller has
long hung up (WhatsApp rings for about a minute). Not Meta's retry window: Meta retries a
webhook for up to 7 days (docs/meta-calling.md §7), far past any ringing call."""

KnownCall = Callable[[str], Awaitable[bool]]
"""Is this call id already taken: recorded or tombstoned (by this run, an earlier one, or
another gateway on the same store), or claimed by another gateway? Set by the app (``not
store.claim``): a signed connect replayed after a restart, or delivered twice to two
gateways, starts no second call."""

TombstoneHook = Callable[[str], None]
"""Tells the shared store about a tombstone no record stands for (``store.tombstone_soon``)."""

RouteHook = Callable[[CallEvent], tuple[str, str] | None]
"""Returns (context, extension) to override the number's route (e.g. closed hours), or None."""


class CallManager:
    def __init__(self, deps: CallDeps):
        self.deps = deps
        """What every call needs; ``deps.ami`` is the primary Asterisk."""
        self.servers: AsteriskServers | None = None
        """Set by the app with ``asterisk.servers``: each new call is placed on the server it
        picks, and keeps it (its own ``deps.ami``)."""
        self.calls: dict[str, InboundCall] = {}
        """Inbound calls by wacid."""
        self.outbound: dict[str, OutboundCall] = {}
        """Outbound calls by our id (the wacid is only known once Meta answers connect)."""
        self._seen: BoundedDict[tuple, None] = BoundedDict(SEEN_EVENTS)
        self._tombstones: dict[str, float] = {}
        self._tasks: set[asyncio.Task] = set()
        self.route_hook: RouteHook | None = None
        self.event_hooks: list[Callable[[Event], bool]] = []
        """Handlers tried first for each event (outbound calls, permission replies); a hook
        returning True has consumed the event."""
        self.draining = False
        """No new call is admitted (inbound ones are rejected as shutdown): see
        :meth:`stop_admitting`."""
        self.finished_outbound: BoundedDict[str, OutboundCall] = BoundedDict(FINISHED_OUTBOUND)
        """Ended outbound calls, still answerable by id (the API's GET after the end)."""
        self.known_call: KnownCall | None = None
        self.shared_tombstone: TombstoneHook | None = None
        """Set by the app: another gateway must not start a call this one tombstoned."""
        self._admitting: set[str] = set()
        """Connects waiting for :attr:`known_call`'s answer, so a second copy is not admitted."""
        self.elsewhere: Callable[[str], int] = lambda phone_number_id: 0
        """Calls of this number other processes carry (``serve --workers N`` sets it:
        ``max_calls`` is the number's cap, not each worker's)."""

    @property
    def accepting(self) -> bool:
        return not self.draining

    @property
    def ami_connected(self) -> bool:
        """Can a new call reach Asterisk (any server connected)?"""
        if self.servers is not None:
            return self.servers.connected
        return bool(getattr(self.deps.ami, "connected", False))

    def deps_for_new_call(self, ami: Ami | None = None) -> CallDeps:
        """The deps a new call keeps for its life: on ``ami`` (the server a WhatsAppDial
        came from), else on the server :attr:`servers` picks. Its channel lives on that one
        Asterisk, so every action and event of the call goes through that client."""
        if ami is None and self.servers is not None:
            ami = self.servers.pick()
        if ami is None or ami is self.deps.ami:
            return self.deps
        return replace(self.deps, ami=ami)

    def stop_admitting(self) -> None:
        """Drain: calls in progress go on, new ones are refused (inbound: ``reject``ed with
        end reason shutdown; outbound: ended at once, WA_DIAL_STATUS FAILED)."""
        self.draining = True

    # --- bookkeeping ----------------------------------------------------------------------------

    def owns_channel(self, channel_id: str) -> bool:
        return any(c.channel_id == channel_id
                   for c in self.live_calls())

    def _outbound_for(self, call_id: str, callback_data: str | None) -> OutboundCall | None:
        if callback_data and callback_data in self.outbound:
            return self.outbound[callback_data]
        return next((c for c in self.outbound.values() if c.record.wacid == call_id), None)

    @property
    def active_count(self) -> int:
        return len(self.calls) + len(self.outbound)

    def active_for(self, phone_number_id: str) -> int:
        return sum(1 for c in self.live_calls()
                   if c.record.phone_number_id == phone_number_id)

    def _is_duplicate(self, key: tuple) -> bool:
        return not self._seen.first_time(key)

    def _tombstoned(self, call_id: str) -> bool:
        now = time.monotonic()
        for cid in [c for c, t in self._tombstones.items() if t < now]:
            del self._tombstones[cid]
        return call_id in self._tombstones

    def tombstone(self, call_id: str, *, shared: bool = False) -> None:
        """``shared``: also in the store, for the other gateways. Only where no record
        stands for the call (a terminate before its connect, a stale connect): a recorded
        call is refused by the store's claim already."""
        self._tombstones[call_id] = time.monotonic() + TOMBSTONE_SECONDS
        if shared and self.shared_tombstone is not None:
            self.shared_tombstone(call_id)

    def spawn(self, coro: Awaitable[Any]) -> asyncio.Future:
        """Run ``coro`` as the manager's background work: :meth:`settle` waits for it."""
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task


    async def settle(self, timeout: float | None = None) -> bool:
        """Until every call task and background job (including ones they start) is done;
        False if ``timeout`` passed first."""
        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else loop.time() + timeout
        while self._tasks:
            left = None if deadline is None else deadline - loop.time()
            if left is not None and left <= 0:
                return False
            await asyncio.wait(set(self._tasks), timeout=left)
        return True

    def live_calls(self) -> list[Call]:
        """Every call in progress, inbound and outbound."""
        return [*self.calls.values(), *self.outbound.values()]

    def find(self, call_id: str) -> Call | None:
        """A live call by Meta's call id, or an outbound call by our id."""
        return self.calls.get(call_id) or self.outbound.get(call_id) or next(
            (c for c in self.outbound.values() if c.record.wacid == call_id), None)

    def end(self, call_id: str, what: What, why: str = "") -> bool:
        """End one live call because ``what`` happened (the table decides the rest)."""
        call = self.find(call_id)
        return call is not None and call.end(what, why)

    def end_all(self, what: What, why: str = "", *, on: Ami | None = None) -> int:
        """End every live call (``on``: every one on that Asterisk) because ``what`` happened
        (shutdown, Asterisk gone); returns how many were ended. Their teardowns run in their
        own tasks: :meth:`settle`."""
        return sum(1 for call in self.live_calls()
                   if (on is None or call.deps.ami is on) and call.end(what, why))

    # --- events ---------------------------------------------------------------------------------

    def handle(self, parsed: ParsedWebhook) -> int:
        """Dispatch every event of one webhook body; returns how many were duplicates."""
        duplicates = 0
        for what in parsed.ignored:
            log.info("webhook: ignored %s", what)
        for ev in parsed.events:
            if self._is_duplicate(ev.dedup_key):
                duplicates += 1
                log.info("webhook: duplicate %s ignored", ev.dedup_key)
                continue
            if any(hook(ev) for hook in self.event_hooks):
                continue
            self.dispatch(ev)
        return duplicates

    def dispatch(self, ev: Event) -> None:
        """Act on one new event here (de-duplicated, past the hooks)."""
        if isinstance(ev, CallEvent):
            self._on_call_event(ev)
        elif isinstance(ev, StatusEvent):
            call = self._outbound_for(ev.call_id, ev.biz_opaque_callback_data)
            if call is not None:
                call.status_webhook(ev)
            else:
                log.info("call %s: status %s for no live call", ev.call_id, ev.status)
        else:
            log.info("webhook: %s for %s not handled here", type(ev).__name__,
                     getattr(ev, "call_id", "?"))

    def deliver(self, ev: Event) -> bool:
        """An event handed over by another gateway (gateway/handoff.py): de-duplicated (Meta
        may have sent it here too), dispatched without the hooks. False: a duplicate."""
        if self._is_duplicate(ev.dedup_key):
            return False
        self.dispatch(ev)
        return True

    def runs(self, ev: CallEvent | StatusEvent) -> bool:
        """Is the event's call live here? If not, the store says who runs it (a connect being
        admitted may be another gateway's claim: gateway/calls/routing.py)."""
        if isinstance(ev, StatusEvent) or ev.direction == "BUSINESS_INITIATED":
            return self._outbound_for(ev.call_id, ev.biz_opaque_callback_data) is not None
        return ev.call_id in self.calls

    def _on_call_event(self, ev: CallEvent) -> None:
        if ev.direction == "BUSINESS_INITIATED":
            out = self._outbound_for(ev.call_id, ev.biz_opaque_callback_data)
            if out is None:
                log.info("call %s: %s for no live outbound call", ev.call_id, ev.event)
            elif ev.event == "connect":
                out.connect_webhook(ev)
            elif ev.event == "terminate":
                out.whatsapp_terminated(ev)
            return
        call = self.calls.get(ev.call_id)
        if ev.event == "connect" and ev.direction == "USER_INITIATED":
            if call is not None or self._tombstoned(ev.call_id) \
                    or ev.call_id in self._admitting:
                log.info("call %s: connect for a known or ended call ignored", ev.call_id)
                return
            if ev.timestamp and ev.timestamp < time.time() - MAX_CONNECT_AGE_S:
                self.tombstone(ev.call_id, shared=True)
                log.warning("call %s: connect stamped %d s ago ignored (replayed or far too "
                            "late)", ev.call_id, int(time.time() - ev.timestamp))
                return
            if self.known_call is None:
                self._admit(ev)
            else:
                self._admitting.add(ev.call_id)
                self.spawn(self._admit_unless_known(ev))
        elif ev.event == "terminate":
            if call is not None:
                # A connect stamped in the future must not make the real terminate stale:
                # compare with the earlier of its stamp and when it actually arrived.
                since = min(call.last_event_ts, int(call.record.webhook_at))
                if ev.timestamp and ev.timestamp < since:
                    log.info("call %s: stale terminate ignored", ev.call_id)
                    return
                call.whatsapp_terminated(ev)
            else:
                # Before its connect (out of order) or after the call ended: never start it.
                self.tombstone(ev.call_id, shared=True)
                log.info("call %s: terminate for no live call (tombstoned)", ev.call_id)
        else:
            log.info("call %s: unknown call event %r (%s) ignored", ev.call_id, ev.event,
                     ev.direction)

    # --- admission ------------------------------------------------------------------------------

    async def _admit_unless_known(self, ev: CallEvent) -> None:
        assert self.known_call is not None
        try:
            known = await self.known_call(ev.call_id)
        except Exception as exc:  # the store is down: admit, the call matters more
            log.warning("call %s: cannot ask the call store about it (%s); admitting",
                        ev.call_id, exc or type(exc).__name__)
            known = False
        finally:
            self._admitting.discard(ev.call_id)
        if known:
            self.tombstone(ev.call_id)
            log.warning("call %s: connect for a call the store already holds ignored "
                        "(replayed)", ev.call_id)
            return
        if self._tombstoned(ev.call_id) or ev.call_id in self.calls:
            log.info("call %s: ended before it was admitted", ev.call_id)
            return
        self._admit(ev)

    def _refusal(self, ev: CallEvent) -> tuple[What, str] | None:
        try:  # first: a hostile offer is refused the same way whatever else is true
            validate_offer(ev.sdp or "")
        except SdpError as exc:
            return What.BAD_SDP, f"unusable SDP offer: {exc}"
        cfg = self.deps.config
        number = cfg.number(ev.phone_number_id)
        if number is None:
            return (What.UNKNOWN_NUMBER,
                    f"unknown phone_number_id {ev.phone_number_id} (not in numbers:)")
        if self.draining:
            return What.SHUTDOWN, "gateway is shutting down (draining)"
        if not self.ami_connected:
            return What.NO_AMI, "Asterisk AMI not connected"
        if self.active_for(ev.phone_number_id) + self.elsewhere(ev.phone_number_id) \
                >= number.max_calls:
            return (What.CAPACITY,
                    f"capacity: {number.max_calls} calls active for this number (max_calls)")
        return None

    def _admit(self, ev: CallEvent) -> None:
        refusal = self._refusal(ev)
        number = self.deps.config.number(ev.phone_number_id)
        call = None
        if refusal is None:
            assert number is not None
            route = self.route_hook(ev) if self.route_hook else None
            context, extension = route if route else (None, None)
            call = InboundCall(ev, number, self.deps_for_new_call(), context=context,
                               extension=extension)
            try:
                call.reserve_port()  # now, not after ICE: simultaneous calls cannot race
            except PortsExhausted as exc:
                refusal = What.CAPACITY, f"capacity: {exc}"
        if refusal is not None:
            self.tombstone(ev.call_id)
            self.spawn(self._reject(ev, *refusal))
            return
        assert call is not None
        self.calls[ev.call_id] = call
        self.spawn(self._run(call))

    async def _run(self, call: InboundCall) -> None:
        try:
            await call.run()
        finally:
            self.calls.pop(call.event.call_id, None)
            self.tombstone(call.event.call_id)

    async def _reject(self, ev: CallEvent, what: What, reason: str) -> None:
        """A call refused at admission: no call object, the same table."""
        ending = ending_for(what, CallState.NEW, direction=Direction.INBOUND)
        record = CallRecord(
            wacid=ev.call_id, direction=Direction.INBOUND, phone_number_id=ev.phone_number_id,
            from_number=ev.from_number, to_number=ev.to_number or ev.display_phone_number,
            profile_name=ev.profile_name, user_id=ev.user_id, username=ev.username,
            owner=self.deps.config.gateway.instance_id, outcome=ending.outcome, reason=reason,
            end_reason=ending.reason, hangup_side=ending.side)
        if ending.graph == GraphAction.REJECT:
            try:
                await self.deps.graph.reject(ev.phone_number_id, ev.call_id)
            except GraphError as exc:
                record.meta_error_code = exc.code
                record.meta_error_text = exc.meta_message
                record.reason = f"{reason}; reject failed: {exc}"
                log.warning("call %s: reject failed: %s", ev.call_id, exc)
        record.ended_at = time.time()
        self.deps.observer.call_rejected(record)

    # --- outbound ---------------------------------------------------------------------------------

    def dial(self, request: DialRequest, ami: Ami | None = None) -> OutboundCall:
        """Start an outbound call (its permission check runs inside the call), on ``ami``
        (the server whose dialplan asked) or the one :attr:`servers` picks."""
        call = OutboundCall(request, self.deps_for_new_call(ami))
        if self.draining:
            call.end(What.SHUTDOWN, "gateway is shutting down (draining)")
        else:
            try:
                call.reserve_port()
            except PortsExhausted as exc:
                call.end(What.CAPACITY, f"capacity: {exc}")
        self.outbound[call.gateway_id] = call
        self.spawn(self._run_outbound(call))
        return call

    async def _run_outbound(self, call: OutboundCall) -> None:
        try:
            await call.run()
        finally:
            self.outbound.pop(call.gateway_id, None)
            if call.record.wacid:
                self.tombstone(call.record.wacid)
            self.finished_outbound[call.gateway_id] = call

    def dial_from_dialplan(self, ev: dict[str, str],
                           ami: Ami | None = None) -> OutboundCall | None:
        """AMI ``UserEvent(WhatsAppDial,To: +E164,From: <business number>)`` from a waiting
        channel (asterisk-conf/extensions.conf [to-whatsapp]). ``To:`` may be a BSUID (or
        given as ``Recipient:``): the call then goes to Meta as ``recipient``
        (docs/meta-2026-identity.md §1). ``ami``: the server that sent it (the waiting
        channel is there, so the call is bridged there); None: the primary."""
        request = dial_request(ev, self.deps.config.numbers)
        if isinstance(request, str):
            channel = ev.get("Channel", "")
            log.warning("WhatsAppDial from %s refused: %s", channel or "?", request)
            if channel:
                self.spawn(self.refuse_dial(channel, request, ami=ami))
            return None
        return self.dial(request, ami or self.deps.ami)

    async def refuse_dial(self, channel: str, why: str, what: What = What.UNKNOWN_NUMBER,
                          *, ami: Ami | None = None) -> None:
        """A WhatsAppDial this gateway will not place (on ``ami``, the server that sent it;
        None: the primary): see :func:`outbound.refuse_dial`."""
        await refuse_dial(ami or self.deps.ami, channel, why, what)

    def find_outbound(self, gateway_id: str) -> OutboundCall | None:
        return self.outbound.get(gateway_id) or self.finished_outbound.get(gateway_id)

    # --- Asterisk reconnects -------------------------------------------------------------------

    async def reconcile_channels(self, ami: Ami | None = None) -> None:
        """After an AMI reconnect (of ``ami``; None: the primary): end the calls on it whose
        channel vanished while AMI was down (:func:`~gateway.calls.orphans.reconcile`)."""
        ami = ami or self.deps.ami
        try:
            channels = await ami.core_show_channels()
        except Exception as exc:
            log.warning("cannot list Asterisk channels after reconnect: %s", exc)
            return
        reconcile([c for c in self.live_calls() if c.deps.ami is ami], channels)

    # --- restarts -------------------------------------------------------------------------------

    async def end_orphaned_records(self, records: Iterable[CallRecord], **why: str) -> int:
        """Calls a previous run (or a gone gateway) left open: see
        :func:`gateway.calls.orphans.end_records`."""
        return await end_records(self.deps, records, **why)

    # --- shutdown -------------------------------------------------------------------------------

    async def shutdown(self, timeout: float = 10.0) -> None:
        """End every live call on both sides (gateway stopping), and wait for them."""
        self.stop_admitting()
        self.end_all(What.SHUTDOWN, "gateway shutting down")
        await self.settle(timeout)
