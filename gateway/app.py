"""Wiring: one running gateway = web app + AMI client + Graph client + call manager.

Nothing here makes decisions about calls; it builds the pieces from the validated config,
connects them, and starts/stops them in an order that never loses a call record: the store
opens (and closes the records a previous run left active) before the first webhook is accepted,
and closes after the last call has ended.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
from collections.abc import Callable
from dataclasses import dataclass

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError

from gateway.account_health import AccountHealth, PickupRate
from gateway.api import add_api_routes
from gateway.asterisk.ami import AmiClient, AmiError
from gateway.asterisk.pool import AsteriskPool
from gateway.asterisk.route_watch import RouteWatch
from gateway.call_media import CallMediaLinker
from gateway.calling_settings import calling_warnings, route_for
from gateway.calls.base import CallDeps
from gateway.calls.dial_claims import ClaimedDials
from gateway.calls.ending import What
from gateway.calls.manager import CallManager
from gateway.calls.neighbours import NeighbourWatch
from gateway.calls.observer import CallObserver, ObserverGroup
from gateway.calls.orphans import OrphanSweep
from gateway.calls.permissions import PermissionLedger, PermissionService, open_ledger
from gateway.calls.record import CallRecord
from gateway.calls.routing import CallHandOff, open_handoff
from gateway.config import Config
from gateway.crm_events import CrmEvents
from gateway.health import PortUsage, ReadinessInputs, add_health_routes
from gateway.instance import Neighbours, sweep_spares
from gateway.logs import LogObserver
from gateway.media import aiortc_hooks
from gateway.media.ports import PortPool
from gateway.metrics import GatewayMetrics, MetricsObserver
from gateway.store import CallStore, StoreObserver
from gateway.voicemail import VoicemailWatchdog
from gateway.whatsapp.events import CallEvent, Event, PermissionReply, UserIdChanged
from gateway.whatsapp.graph import GraphClient
from gateway.whatsapp.webhook import add_webhook_routes

log = logging.getLogger(__name__)

DRAIN_BEAT_S = 2.0
"""How long a drain waits for its fresh heartbeat reading before it stops admitting calls
(a store that is down must not hold the drain; the last reading is used then)."""


class _ParserRefusals(logging.Filter):
    """aiohttp logs every request its HTTP parser refuses (an 8 KB request line, a header
    with a bare CR) at ERROR with a traceback, after answering 400 itself. Anyone can send
    those, so they become one WARNING line: no traceback for an admin to chase."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if isinstance(exc, HttpProcessingError) and 400 <= (exc.code or 0) < 500:
            record.levelno, record.levelname = logging.WARNING, "WARNING"
            record.msg, record.args = "HTTP request refused by the parser (%s): %s", \
                (exc.code, exc.message.splitlines()[0] if exc.message else type(exc).__name__)
            record.exc_info = record.exc_text = None
        return True


logging.getLogger("aiohttp.server").addFilter(_ParserRefusals())


class _PermissionMetrics(CallObserver):
    """Outbound calls the ledger refused before dialing, by the ledger's reason (the API's
    refusals are counted by its :class:`PermissionService`: such a call is never dialed)."""

    def __init__(self, metrics: GatewayMetrics):
        self.metrics = metrics

    def call_event(self, record: CallRecord, event: str, **fields: object) -> None:
        if event == "permission_refused":
            self.metrics.permission_refused(str(fields.get("reason")), record.phone_number_id,
                                            what="call")


@dataclass
class Gateway:
    config: Config

    def __post_init__(self) -> None:
        aiortc_hooks.install()
        cfg = self.config
        self.metrics = GatewayMetrics.from_config(cfg)
        self.store: CallStore | None = None
        self.handoff: CallHandOff | None = None
        """On a shared store: later events of calls another gateway runs go there."""
        self.crm = CrmEvents(cfg.crm_events, self.metrics)
        self.observers = ObserverGroup(LogObserver(), MetricsObserver(self.metrics),
                                       _PermissionMetrics(self.metrics),
                                       PickupRate(self.metrics),
                                       VoicemailWatchdog(cfg, self.metrics), self.crm)
        self.graph = GraphClient(cfg.whatsapp, observer=self.metrics.graph_request)
        self.account = AccountHealth(cfg, self.metrics)
        self.media = CallMediaLinker(self.graph, lambda: self.store, self.observers,
                                     self.metrics, cfg.store.media_dir)
        # One AMI client per Asterisk server, the first (self.ami) the primary: asterisk/pool.py
        self.asterisk = AsteriskPool.from_settings(cfg.asterisk.all_servers, cfg.asterisk.policy)
        self.ami = self.asterisk.primary
        for client in self.asterisk.clients:
            name = self.asterisk.name(client)
            self.metrics.ami_connection(False, server=name)  # shown as 0 until it connects
            client.on_connection_change.append(
                lambda up, name=name: self.metrics.ami_connection(up, server=name))
            client.on_connection_change.append(
                lambda up, client=client: self._ami_connection_changed(up, client))
        self.ports = PortPool(cfg.media.rtp_ports)
        self.ledger: PermissionLedger | None = None
        self.permissions: PermissionService | None = None
        self.calls = CallManager(CallDeps(config=cfg, graph=self.graph, ami=self.ami,
                                          ports=self.ports, observer=self.observers))
        self.calls.servers = self.asterisk
        self.calls.route_hook = self._route
        self.dials: CallManager | ClaimedDials = self.calls  # who places a WhatsAppDial
        self.calls.event_hooks += [self.account.handle, self.media.handle]
        # Before anyone hears "connected", each (re)connect hangs up channels no call owns,
        # sparing those of other gateways still alive (gateway/instance.py).
        self.neighbours = Neighbours(cfg.gateway.instance_id, cfg.gateway.gone_after_s)
        self.watch: NeighbourWatch | None = None
        self.orphan_sweep = OrphanSweep(
            self.ami, sweep_spares(cfg.gateway.instance_id, self.calls.owns_channel,
                                   self.neighbours.spares)).install()
        # each server's own sweep, sparing what the primary's spares (a worker narrows that)
        self.orphan_sweeps = [self.orphan_sweep, *(
            OrphanSweep(client, lambda uid: self.orphan_sweep.owned(uid)).install()
            for client in self.asterisk.clients[1:])]
        for client in self.asterisk.clients:
            client.add_event_listener(
                "UserEvent", lambda ev, client=client: self._on_user_event(ev, client))
        self.routes = RouteWatch(self.asterisk, lambda: self.config, self.metrics,
                                 self.calls.spawn)
        for client in self.asterisk.clients:
            client.add_event_listener("Reload", self.routes.on_reload)
        self.web = web.Application()
        add_webhook_routes(self.web, lambda: self.config.whatsapp, self.calls.handle,
                           self.metrics.webhook)
        self.metrics.add_route(self.web)
        add_health_routes(self.web, self._readiness)
        self._runner: web.AppRunner | None = None
        self.port: int | None = None
        self._ami_lost_timers: dict[AmiClient, asyncio.Task] = {}
        """Per server gone: ends its calls after asterisk.ami_down_grace."""
        # --- hooks for serve --workers N (gateway/workers/worker.py sets them) ---
        self.claims_dial: Callable[[dict[str, str]], bool] = lambda ev: True
        """Is this AMI ``UserEvent(WhatsAppDial)`` this gateway's to dial? Every worker sees it."""
        self.owns_record: Callable[[CallRecord], bool] = lambda record: True
        """Is an active record left by a previous run this gateway's to end at start?"""
        self.unix_path: str | None = None
        """Listen on this Unix socket instead of ``http.listen`` (a worker, behind its
        supervisor)."""

    def _route(self, event: CallEvent) -> tuple[str, str] | None:
        """Closed hours send the call to the number's closed_context (settings.call_hours)."""
        number = self.config.number(event.phone_number_id)
        if number is None:
            return None
        route = route_for(number, dt.datetime.now(dt.UTC))
        return route.context, route.extension

    def _ami_connection_changed(self, connected: bool, client: AmiClient) -> None:
        timer = self._ami_lost_timers.pop(client, None) if connected \
            else self._ami_lost_timers.get(client)
        if connected and timer is not None:
            timer.cancel()
        elif not connected and timer is None:
            self._ami_lost_timers[client] = asyncio.ensure_future(
                self._end_calls_after_ami_grace(client))
        if connected and (self.calls.calls or self.calls.outbound):
            self.calls.spawn(self.calls.reconcile_channels(client))
        if connected:
            self.calls.spawn(self.routes.check())

    async def _end_calls_after_ami_grace(self, client: AmiClient) -> None:
        """A server's AMI is gone. A short outage is survived (the reconnect checks each
        call's channel); past ``asterisk.ami_down_grace`` the live calls on that server are
        ended toward WhatsApp, since their callers hear silence and nothing here can tell
        whether Asterisk still carries them. Calls on the other servers go on."""
        grace = self.config.asterisk.ami_down_grace_s
        await asyncio.sleep(grace)
        self._ami_lost_timers.pop(client, None)
        if client.connected:
            return
        where = self.asterisk.name(client)
        ended = self.calls.end_all(
            What.AMI_LOST, f"Asterisk AMI {where} unreachable for more than {grace:g} s",
            on=client)
        if ended:
            log.warning("Asterisk AMI %s unreachable for more than %g s: ended its %d live "
                        "call(s) toward WhatsApp (asterisk.ami_down_grace)", where, grace, ended)

    @property
    def dialplan_problems(self) -> list[str]:
        """Configured routes the dialplan lacks (gateway/asterisk/route_watch.py)."""
        return self.routes.problems

    def _on_user_event(self, ev: dict[str, str], client: AmiClient | None = None) -> None:
        # A worker of serve --workers N dials only its users' (claims_dial); gateways sharing
        # a store claim each dial there, so exactly one of them places it (self.dials).
        # The agent's channel is on the server that sent it: the call is bridged there.
        if ev.get("UserEvent") == "WhatsAppDial" and self.claims_dial(ev):
            self.dials.dial_from_dialplan(ev, client)

    async def _readiness(self) -> ReadinessInputs:
        self.metrics.rtp_ports(self.ports.free)
        writable, detail = (await self.store.check_writable()) if self.store \
            else (False, "store not open")
        servers = self.asterisk.states()
        down = [name for name, up in servers.items() if not up]
        return ReadinessInputs(
            ami_connected=self.asterisk.connected,
            ami_detail=f"AMI {', '.join(down)}",
            ami_servers=servers if len(servers) > 1 else {},
            store_writable=writable, store_detail=detail,
            port_pools=(PortUsage("asterisk_rtp", self.ports.free, len(self.ports.range)),),
            draining=self.calls.draining,
            warnings=(*self.routes.problems,
                      *(f"asterisk server {name}: AMI not connected; new calls go to the "
                        "others" for name in down if len(down) < len(servers))),
            extra=self._readiness_info())

    def _readiness_info(self) -> dict:
        """Shown in /readyz ``info``; none of it makes the gateway unready."""
        info: dict = {}
        account = self.account.info()
        if account:
            info["account"] = account  # docs/meta-2026-settings-events.md §3
        if self.handoff is not None:
            info["handoff"] = {**vars(self.handoff.stats),  # and a drain's new calls:
                               "new_calls_passed": self.handoff.new_calls.passed,
                               "new_calls_taken": self.handoff.new_calls.taken}
        if self.crm.enabled:
            info["crm_events"] = {s.name: {"queued": len(s.queue), "delivered": s.delivered,
                                          "dropped": s.dropped} for s in self.crm.sinks}
        return info

    @property
    def url(self) -> str:
        return f"http://{self.config.http.host}:{self.port}"

    async def start(self) -> None:
        self.store = await CallStore.open(self.config.store.calls_at,
                                          owner=self.config.gateway.instance_id)
        self.calls.deps.store = self.store
        # Records a killed previous run left active: Meta still has those calls up. They stay
        # active until end_orphaned_records (below) has ended each at Meta and saved its
        # closed record once, with what happened (a closed record is final).
        # This instance's only, on a shared store; this worker's only, under --workers N.
        left_open = [r for r in await self.store.left_open() if self.owns_record(r)]
        if left_open:
            log.warning("%d call record(s) left active by a previous run: ending them",
                        len(left_open))
        self.store.writes.set_hooks(on_error=lambda: self.metrics.store_error("calls"),
                                    on_pending=lambda n: self.metrics.store_backlog("calls", n))
        self.observers.observers.append(StoreObserver(self.store))
        # Replayed connects (even across restarts) and duplicates delivered to two gateways
        self.calls.known_call = self._call_taken
        self.calls.shared_tombstone = self.store.tombstone_soon
        for i, number in enumerate(self.config.numbers):
            for warning in calling_warnings(number.calling, f"numbers[{i}].calling",
                                            self.config.media.connect_timeout_s):
                log.warning("config: %s", warning)
        self.neighbours.shared = self.store.backend.shared
        # Before the AMI connect: its sweep must know who is gone (their calls: below)
        self.watch = NeighbourWatch(self.neighbours, self.store, self.calls,
                                    self.orphan_sweeps, self.config.gateway.heartbeat_s)
        await self.watch.beat(take_over=False)
        self.watch.start()
        await self.crm.start()
        await self._start_ledger()
        await self.graph.start()
        if left_open:  # Meta still has those calls up: end them (retried, in the background)
            self.calls.spawn(self.calls.end_orphaned_records(left_open))
        if self.neighbours.shared and self.neighbours.gone():
            self.calls.spawn(self.watch.adopt(self.neighbours.gone()))
        # Several gateways on one store: later events and API requests go to the call's
        # gateway, and one gateway only places an agent's WhatsAppDial
        self.handoff = await open_handoff(self.calls, self.store, self.config,
                                          self.neighbours.gone, self.neighbours.alive_others)
        if self.handoff is not None:
            self.dials = ClaimedDials(self.calls, self.store.claim_dial)
        try:
            await self.asterisk.connect()
        except AmiError as exc:
            # Keep running: calls are refused with a reason until Asterisk is back.
            log.warning("starting without Asterisk: %s", exc)
        add_api_routes(self.web, lambda: self.config, self.calls, store=self.store,
                       graph=self.graph, permissions=self.permissions, handoff=self.handoff)
        # lingering_time: after refusing an over-cap body (413), read and drop what the
        # client still sends for at most 2 s (aiohttp's 10 s would hold the connection open).
        self._runner = web.AppRunner(self.web, access_log=None, lingering_time=2.0)
        await self._runner.setup()
        if self.unix_path is not None:
            await web.UnixSite(self._runner, self.unix_path).start()
            log.info("gateway worker listening on unix:%s", self.unix_path)
        else:
            site = web.TCPSite(self._runner, self.config.http.host, self.config.http.port)
            await site.start()
            sockets = getattr(site._server, "sockets", None) or []
            self.port = sockets[0].getsockname()[1] if sockets else self.config.http.port
            log.info("gateway listening on %s (webhook %s/webhook)", self.url, self.url)
        self.routes.start()

    async def _call_taken(self, wacid: str) -> bool:
        assert self.store is not None
        return not await self.store.claim(wacid)

    async def _start_ledger(self) -> None:
        """The outbound permission ledger, where the call records are: in PostgreSQL when
        store.url is set (shared, so Meta's per-pair limits hold for all the number's gateways,
        docs/scaling.md), else in the SQLite file at store.path."""
        self.ledger = await open_ledger(self.config)
        self.permissions = PermissionService(self.graph, self.ledger, self.metrics)
        self.ledger.writes.set_hooks(
            on_error=lambda: self.metrics.store_error("permissions"),
            on_pending=lambda n: self.metrics.store_backlog("permissions", n))
        self.calls.deps.ledger = self.ledger
        self.calls.event_hooks.append(self._permission_reply)

    def _permission_reply(self, event: Event) -> bool:
        if isinstance(event, UserIdChanged) and self.ledger is not None:
            # docs/meta-2026-identity.md §1: re-key the user
            self.calls.spawn(self.ledger.change_user_id(event))
            return True
        if not isinstance(event, PermissionReply) or self.ledger is None:
            return False
        self.calls.spawn(self.ledger.apply_reply(event))
        self.metrics.permission_request(
            "accepted" if event.response == "accept" else "rejected", event.phone_number_id)
        return True

    # --- operations: reload and drain -----------------------------------------------------------

    def reload(self, new: Config) -> list[str]:
        """Apply a re-read config (SIGHUP / ``whatsapp-gateway reload``) without touching calls
        in progress: numbers, routes, limits, call hours and tokens change for the next call
        or request. Returns the changed keys only a restart applies (they keep their value)."""
        from gateway.logs import add_secrets, config_secrets

        applied, restart = self.config.reloaded(new)
        add_secrets(config_secrets(applied))
        before = {n.phone_number_id for n in self.config.numbers}
        after = {n.phone_number_id for n in applied.numbers}
        self.config = applied
        self.calls.deps.config = applied
        self.graph.settings = applied.whatsapp
        self.metrics.configure_numbers(applied)
        if self.ledger is not None:
            for n in applied.numbers:
                self.ledger.set_display_number(n.phone_number_id, n.display_number)
        log.info("config reloaded from %s: %d number(s)%s%s; %d call(s) in progress untouched",
                 applied.source, len(applied.numbers),
                 f", added {', '.join(sorted(after - before))}" if after - before else "",
                 f", removed {', '.join(sorted(before - after))}" if before - after else "",
                 len(self.calls.live_calls()))
        for key in restart:
            log.warning("config reload: %s changed, but only a restart applies it; the running "
                        "value is kept", key)
        if self.asterisk.connected:
            self.calls.spawn(self.routes.check())
        return restart

    async def drain(self) -> None:
        """SIGTERM: admit no new call (/readyz says draining; on a shared store a new call is
        passed to a gateway still taking calls, else rejected) and let the live ones finish,
        for up to ``service.shutdown_grace``; :meth:`stop` ends the rest."""
        grace = self.config.service.shutdown_grace_s
        if self.watch is not None and self.neighbours.shared:
            # First a fresh reading of who is alive (the last beat may be HEARTBEAT_S old and
            # miss a gateway started since): new calls go to them (gateway/calls/pass_on.py)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.watch.beat(take_over=False), DRAIN_BEAT_S)
        self.calls.stop_admitting()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + grace
        live = self.calls.live_calls()
        log.info("draining: no new calls; %d call(s) in progress may go on for up to %g s "
                 "(service.shutdown_grace)", len(live), grace)
        while live and (left := deadline - loop.time()) > 0:
            waits = {asyncio.ensure_future(c.done.wait()) for c in live}
            try:
                await asyncio.wait(waits, timeout=left, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for w in waits:
                    w.cancel()
            live = [c for c in self.calls.live_calls() if not c.done.is_set()]
        if live:
            log.warning("drain: %d call(s) still up after %g s: ending them", len(live), grace)
        else:
            log.info("drain: every call has ended")

    async def stop(self) -> None:
        self.routes.stop()
        if self.watch is not None:
            self.watch.stop()
        for timer in self._ami_lost_timers.values():
            timer.cancel()
        self._ami_lost_timers.clear()
        await self.calls.shutdown()
        if self.handoff is not None:
            await self.handoff.close()
            self.handoff = None
        await self.media.stop()
        await self.crm.stop()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        await self.asterisk.close()
        await self.graph.close()
        if self.ledger is not None:
            await self.ledger.close()
        if self.store is not None:
            await self.store.close()
            self.store = None
