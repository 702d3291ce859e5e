"""Call events pushed to CRMs: each configured URL gets every call's story as signed JSON.

Events: ``ringing``, ``answered``, ``dialplan_started``, ``ended`` (with the call record),
``voicemail``, ``recording_available``, ``transcription_available``. Each is one POST of a JSON
object (see :func:`event_body`) signed like Meta signs its webhooks, with the secret from
``crm_events.secret``: ``X-Gateway-Signature-256: sha256=<hex HMAC-SHA256 of the body>``.

Delivery never holds a call: the call code's observer notification only serialises the event
and appends it to one in-memory queue per URL. A worker per URL sends them one at a time, in
order; a failed attempt (no connection, timeout, 5xx, 408, 429) is retried with exponential
backoff up to ``max_retry_delay`` and blocks the events behind it, so the CRM sees them in the
order they happened (``seq`` counts them per URL, so a gap shows a drop). Any other 4xx is the
CRM refusing that event: it is counted and skipped. Each queue is bounded by ``queue_size``:
when a CRM stays down, the oldest waiting events are dropped and counted — memory stays
bounded and the newest state of every call still arrives.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import json
import logging
import random
import time
import uuid
from collections import deque
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import aiohttp

from gateway.calls.observer import CallObserver
from gateway.calls.record import CallRecord, Direction
from gateway.config import CrmEventsSettings
from gateway.metrics import GatewayMetrics

log = logging.getLogger(__name__)

SIGNATURE_HEADER = "X-Gateway-Signature-256"
EVENT_HEADER = "X-Gateway-Event"
DELIVERY_HEADER = "X-Gateway-Delivery"
FIRST_RETRY_DELAY_S = 0.5
RETRYABLE_STATUS = frozenset({408, 425, 429})
EVENTS = ("ringing", "answered", "dialplan_started", "ended", "voicemail",
          "recording_available", "transcription_available")


def public_url(url: str) -> str:
    """The URL as logs and metric labels show it: without user:password or query, where a
    CRM's own token may sit."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if parts.port:
        host = f"{host}:{parts.port}"
    return urlunsplit((parts.scheme, host, parts.path, "", ""))


def sign(secret: str, body: bytes) -> str:
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def signature_ok(secret: str, body: bytes, header: str | None) -> bool:
    """What a CRM does with the header (constant-time compare)."""
    if not header:
        return False
    return hmac.compare_digest(sign(secret, body).encode(), header.encode(errors="replace"))


def _call(record: CallRecord) -> dict[str, Any]:
    return {"wacid": record.wacid, "direction": record.direction.value,
            "phone_number_id": record.phone_number_id, "from": record.from_number,
            "to": record.to_number, "profile_name": record.profile_name,
            "asterisk_channel_id": record.channel_id, "asterisk_channel": record.channel}


def event_body(kind: str, record: CallRecord, fields: dict[str, Any], at: float) -> dict:
    """The JSON a CRM receives (``seq`` is added per URL when queued)."""
    body: dict[str, Any] = {"id": uuid.uuid4().hex, "event": kind, "time": round(at, 3),
                            "call": _call(record)}
    if fields:
        body["data"] = {k: v for k, v in fields.items() if v is not None}
    if kind == "ended":
        body["record"] = record.as_dict()
    return body


@dataclass
class _Queued:
    kind: str
    body: bytes
    delivery_id: str


class CrmSink:
    """One CRM URL: an ordered, bounded queue and the worker that empties it."""

    def __init__(self, url: str, settings: CrmEventsSettings, metrics: GatewayMetrics):
        self.url = url
        self.name = public_url(url)
        """What logs, metrics and /readyz show of the URL."""
        self.settings = settings
        self.metrics = metrics
        self.queue: deque[_Queued] = deque()
        self.seq = 0
        self.dropped = 0
        self.delivered = 0
        self._wake = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self._task: asyncio.Task | None = None
        self._gauge = metrics.crm_events_queued.labels(self.name)

    def put(self, kind: str, event_id: str, encoded: bytes) -> None:
        """Queue one event (synchronous, never waits): the oldest is dropped when full.

        ``encoded`` is the event's JSON object, serialised once for every URL; this URL's
        ``seq`` is spliced in front of its first key."""
        self.seq += 1
        data = b'{"seq":%d,%s' % (self.seq, encoded[1:])
        if len(self.queue) >= self.settings.queue_size:
            # Never the head: it may be on the wire right now.
            victim = self.queue[1] if len(self.queue) > 1 else self.queue[0]
            self.queue.remove(victim)
            self.dropped += 1
            self.metrics.crm_event(self.name, "dropped")
            if self.dropped == 1 or self.dropped % 100 == 0:
                log.warning("CRM %s: queue full (%d): dropped %d event(s) so far, oldest first",
                            self.name, self.settings.queue_size, self.dropped)
        self.queue.append(_Queued(kind, data, event_id))
        self._gauge.set(len(self.queue))
        self._idle.clear()
        self._wake.set()

    def start(self, session: aiohttp.ClientSession) -> None:
        self._task = asyncio.ensure_future(self._run(session))

    async def stop(self, drain_s: float) -> None:
        """Give the queue ``drain_s`` to empty, then stop (what is left is logged)."""
        if self._task is None:
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._idle.wait(), drain_s)
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        if self.queue:
            log.warning("CRM %s: %d event(s) not delivered at shutdown", self.name,
                        len(self.queue))

    async def _run(self, session: aiohttp.ClientSession) -> None:
        while True:
            if not self.queue:
                self._idle.set()
                self._wake.clear()
                await self._wake.wait()
                continue
            item = self.queue[0]
            await self._deliver(session, item)
            if self.queue and self.queue[0] is item:
                self.queue.popleft()
            self._gauge.set(len(self.queue))

    async def _deliver(self, session: aiohttp.ClientSession, item: _Queued) -> None:
        """Until the CRM takes it (2xx) or refuses it (4xx); retried with backoff otherwise."""
        headers = {"Content-Type": "application/json",
                   SIGNATURE_HEADER: sign(self.settings.secret.reveal(), item.body),
                   EVENT_HEADER: item.kind, DELIVERY_HEADER: item.delivery_id,
                   "User-Agent": "whatsapp-gateway"}
        timeout = aiohttp.ClientTimeout(total=self.settings.timeout_s)
        attempt = 0
        while True:
            attempt += 1
            try:
                async with session.post(self.url, data=item.body, headers=headers,
                                        timeout=timeout) as resp:
                    await resp.read()
                    status = resp.status
                problem = None if 200 <= status < 300 else f"HTTP {status}"
            except (aiohttp.ClientError, TimeoutError) as exc:
                status, problem = None, f"{type(exc).__name__}: {exc}" if str(exc) \
                    else type(exc).__name__
            if problem is None:
                self.delivered += 1
                self.metrics.crm_event(self.name, "delivered")
                if attempt > 1:
                    log.info("CRM %s: %s event delivered after %d attempts", self.name,
                             item.kind, attempt)
                return
            if status is not None and 400 <= status < 500 and status not in RETRYABLE_STATUS:
                self.metrics.crm_event(self.name, "rejected")
                log.warning("CRM %s refused the %s event (%s): skipped", self.name, item.kind,
                            problem)
                return
            self.metrics.crm_event(self.name, "retried")
            delay = min(self.settings.max_retry_delay_s,
                        FIRST_RETRY_DELAY_S * 2 ** (attempt - 1))
            delay *= random.uniform(0.8, 1.0)  # several gateways do not retry in lockstep
            if attempt == 1 or attempt % 10 == 0:
                log.warning("CRM %s: %s event not delivered (%s); retrying in %.1f s "
                            "(attempt %d, %d queued)", self.name, item.kind, problem, delay,
                            attempt, len(self.queue))
            await asyncio.sleep(delay)


class CrmEvents(CallObserver):
    """Turns call notifications into CRM events for every configured URL."""

    def __init__(self, settings: CrmEventsSettings, metrics: GatewayMetrics):
        self.settings = settings
        self.sinks = [CrmSink(url, settings, metrics) for url in settings.urls]
        self._session: aiohttp.ClientSession | None = None

    @property
    def enabled(self) -> bool:
        return bool(self.sinks)

    async def start(self) -> None:
        if not self.sinks:
            return
        self._session = aiohttp.ClientSession()
        for sink in self.sinks:
            sink.start(self._session)

    async def stop(self, drain_s: float = 2.0) -> None:
        for sink in self.sinks:
            await sink.stop(drain_s)
        if self._session is not None:
            await self._session.close()
            self._session = None

    def publish(self, kind: str, record: CallRecord, **fields: Any) -> None:
        if not self.sinks:
            return
        body = event_body(kind, record, fields, time.time())
        encoded = json.dumps(body, separators=(",", ":"), default=str).encode()
        for sink in self.sinks:
            sink.put(kind, body["id"], encoded)

    # ---- CallObserver -----------------------------------------------------------------------

    def call_admitted(self, record: CallRecord) -> None:
        if record.direction == Direction.INBOUND:
            self.publish("ringing", record)

    def call_setup(self, record: CallRecord, stage: str, seconds: float) -> None:
        if stage == "dialplan":
            self.publish("dialplan_started", record, context=record.context,
                         seconds_since_webhook=round(seconds, 3))

    def call_event(self, record: CallRecord, event: str, **fields: object) -> None:
        if event == "ringing" and record.direction == Direction.OUTBOUND:
            self.publish("ringing", record)
        elif (event == "accepted" and record.direction == Direction.INBOUND) or \
                (event == "bridged" and record.direction == Direction.OUTBOUND):
            self.publish("answered", record)
        elif event in ("voicemail", "recording_available", "transcription_available"):
            self.publish(event, record, **fields)

    def call_rejected(self, record: CallRecord) -> None:
        self.publish("ended", record)

    def call_ended(self, record: CallRecord) -> None:
        self.publish("ended", record)
