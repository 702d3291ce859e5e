"""Wiring: one running gateway = web app + AMI client + Graph client + call manager.

Nothing here makes decisions about calls; it builds the pieces from the validated config,
connects them, and starts/stops them in an order that never loses a call record: the store
opens before the first webhook is accepted and closes after the last call has ended.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass

from aiohttp import web

from gateway.asterisk.ami import AmiClient, AmiError
from gateway.calls.base import CallDeps
from gateway.calls.manager import CallManager
from gateway.calls.observer import CallObserver, ObserverGroup
from gateway.calls.record import CallRecord
from gateway.config import Config
from gateway.media import aiortc_hooks
from gateway.media.ports import PortPool
from gateway.whatsapp.graph import GraphClient
from gateway.whatsapp.webhook import add_webhook_routes

log = logging.getLogger(__name__)


class CallLog(CallObserver):
    """One log line per call event, with the WhatsApp call id and the Asterisk channel id, so
    an admin can follow a call across both systems (grep either id)."""

    def _line(self, record: CallRecord, event: str, level: int = logging.INFO,
              **fields: object) -> None:
        extra = " ".join(f"{k}={v}" for k, v in fields.items() if v not in (None, ""))
        log.log(level, "call event=%s wacid=%s channel=%s %s", event, record.wacid,
                record.channel_id or "-", extra)

    def call_admitted(self, record: CallRecord) -> None:
        self._line(record, "admitted", number=record.phone_number_id,
                   caller=f"+{record.from_number}", context=record.context)

    def call_rejected(self, record: CallRecord) -> None:
        self._line(record, "rejected", logging.WARNING, reason=repr(record.reason))

    def call_setup(self, record: CallRecord, stage: str, seconds: float) -> None:
        self._line(record, f"setup_{stage}", seconds=f"{seconds:.3f}")

    def call_event(self, record: CallRecord, event: str, **fields: object) -> None:
        self._line(record, event, **fields)

    def call_ended(self, record: CallRecord) -> None:
        self._line(record, "ended", outcome=record.outcome.value,
                   side=record.hangup_side.value if record.hangup_side else None,
                   q850=record.q850_cause, meta_code=record.meta_error_code,
                   duration=f"{record.duration_seconds:.1f}" if record.duration_seconds else None,
                   reason=repr(record.reason))


@dataclass
class Gateway:
    config: Config

    def __post_init__(self) -> None:
        aiortc_hooks.install()
        self.observers = ObserverGroup(CallLog())
        self.graph = GraphClient(self.config.whatsapp, observer=self._graph_observed)
        self.ami = AmiClient(self.config.asterisk.ami)
        self.ports = PortPool(self.config.media.rtp_ports)
        self.calls = CallManager(CallDeps(config=self.config, graph=self.graph, ami=self.ami,
                                          ports=self.ports, observer=self.observers))
        self.ami.owned = self.calls.owns_channel
        self.web = web.Application()
        add_webhook_routes(self.web, self.config.whatsapp, self.calls.handle,
                           self._webhook_observed)
        self._runner: web.AppRunner | None = None
        self.port: int | None = None

    # Hooks for metrics (issue: operators); logging only until then.
    def _graph_observed(self, action: str, result: str, seconds: float) -> None:
        log.debug("graph %s -> %s in %.3f s", action, result, seconds)

    def _webhook_observed(self, result: str) -> None:
        log.debug("webhook %s", result)

    @property
    def url(self) -> str:
        return f"http://{self.config.http.host}:{self.port}"

    async def start(self) -> None:
        await self.graph.start()
        try:
            await self.ami.connect()
        except AmiError as exc:
            # Keep running: calls are refused with a reason until Asterisk is back.
            log.warning("starting without Asterisk: %s", exc)
        self._runner = web.AppRunner(self.web, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.config.http.host, self.config.http.port)
        await site.start()
        server = site._server
        sockets = getattr(server, "sockets", None) or []
        self.port = sockets[0].getsockname()[1] if sockets else self.config.http.port
        log.info("gateway listening on %s (webhook %s/webhook)", self.url, self.url)

    async def stop(self) -> None:
        await self.calls.shutdown()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        await self.ami.close()
        await self.graph.close()

    async def serve_forever(self) -> None:
        await self.start()
        try:
            await asyncio.Event().wait()
        finally:
            await self.stop()
