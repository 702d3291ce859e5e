"""CRM event delivery against a real HTTP server: signed, in order, retried while the CRM is
down, refused events skipped, a bounded queue that drops the oldest."""

from __future__ import annotations

import asyncio
import json

from aiohttp import web

from gateway.calls.record import CallRecord, Direction
from gateway.config import CrmEventsSettings, Secret
from gateway.crm_events import SIGNATURE_HEADER, CrmEvents, signature_ok
from gateway.metrics import GatewayMetrics

SECRET = "crm-test-secret"


class Crm:
    """A CRM endpoint: answers with ``status`` (settable) and keeps what it accepted."""

    def __init__(self) -> None:
        self.status = 200
        self.accepted: list[dict] = []
        self.attempts = 0
        self.bad_signatures = 0
        self.arrived = asyncio.Condition()
        self.url = ""
        self._runner: web.AppRunner | None = None

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/events", self._post)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.url = f"http://127.0.0.1:{site._server.sockets[0].getsockname()[1]}/events"

    async def close(self) -> None:
        await self._runner.cleanup()

    async def _post(self, request: web.Request) -> web.Response:
        body = await request.read()
        async with self.arrived:
            self.attempts += 1
            self.arrived.notify_all()
        if not signature_ok(SECRET, body, request.headers.get(SIGNATURE_HEADER)):
            self.bad_signatures += 1
            return web.Response(status=401)
        if self.status != 200:
            return web.Response(status=self.status)
        event = json.loads(body)
        assert request.headers["X-Gateway-Event"] == event["event"]
        async with self.arrived:
            self.accepted.append(event)
            self.arrived.notify_all()
        return web.Response(text="ok")

    async def wait_attempts(self, count: int, timeout: float = 10) -> None:
        async with self.arrived:
            await asyncio.wait_for(self.arrived.wait_for(lambda: self.attempts >= count),
                                   timeout)

    async def wait_for(self, count: int, timeout: float = 10) -> list[dict]:
        async with self.arrived:
            await asyncio.wait_for(self.arrived.wait_for(lambda: len(self.accepted) >= count),
                                   timeout)
        return self.accepted


def record(i: int = 0) -> CallRecord:
    return CallRecord(wacid=f"wacid.{i}", direction=Direction.INBOUND,
                      phone_number_id="1", from_number="15550002222", to_number="15550001111",
                      channel_id=f"wa-{i}")


async def events_for(crm: Crm, **kw) -> CrmEvents:
    settings = CrmEventsSettings(urls=(crm.url,), secret=Secret(SECRET),
                                 max_retry_delay_s=0.2, **kw)
    events = CrmEvents(settings, GatewayMetrics(["1"], process=False))
    await events.start()
    return events


async def test_call_events_arrive_signed_and_in_order():
    crm = Crm()
    await crm.start()
    events = await events_for(crm)
    try:
        rec = record()
        events.call_admitted(rec)
        events.call_setup(rec, "pre_accept", 0.1)  # not an event
        events.call_setup(rec, "dialplan", 0.4)
        events.call_event(rec, "accepted")
        events.call_event(rec, "dtmf", digit="1")  # not an event
        events.call_event(rec, "voicemail", media_id="123")
        events.call_ended(rec)
        got = await crm.wait_for(5)
        assert [e["event"] for e in got] == ["ringing", "dialplan_started", "answered",
                                             "voicemail", "ended"]
        assert [e["seq"] for e in got] == [1, 2, 3, 4, 5]
        assert got[0]["call"]["wacid"] == "wacid.0"
        assert got[0]["call"]["asterisk_channel_id"] == "wa-0"
        assert got[3]["data"] == {"media_id": "123"}
        assert got[4]["record"]["outcome"] == "active" and "record" not in got[0]
        assert crm.bad_signatures == 0
    finally:
        await events.stop()
        await crm.close()


async def test_a_crm_that_is_down_gets_everything_in_order_when_it_is_back():
    crm = Crm()
    await crm.start()
    crm.status = 503
    events = await events_for(crm)
    try:
        for i in range(5):
            events.call_admitted(record(i))
        await crm.wait_attempts(3)  # retried while down...
        assert crm.accepted == []
        crm.status = 200  # ...and delivered in order once it is back
        got = await crm.wait_for(5)
        assert [e["call"]["wacid"] for e in got] == [f"wacid.{i}" for i in range(5)]
        sink = events.sinks[0]
        assert sink.delivered == 5 and not sink.queue
    finally:
        await events.stop()
        await crm.close()


async def test_a_refused_event_is_skipped_and_a_full_queue_drops_the_oldest():
    crm = Crm()
    await crm.start()
    crm.status = 400
    events = await events_for(crm, queue_size=3)
    try:
        events.call_admitted(record(0))
        await crm.wait_attempts(1)
        crm.status = 503
        for i in range(1, 7):
            events.call_admitted(record(i))
        sink = events.sinks[0]
        assert len(sink.queue) == 3 and sink.dropped >= 3
        crm.status = 200
        got = await crm.wait_for(3)
        wacids = [e["call"]["wacid"] for e in got]
        assert "wacid.0" not in wacids and wacids[-1] == "wacid.6"
        assert [e["seq"] for e in got] == sorted(e["seq"] for e in got)
        text = events.sinks[0].metrics.exposition().decode()
        assert f'whatsapp_gateway_crm_events_total{{result="rejected",url="{crm.url}"}} 1.0' \
            in text
        assert 'result="dropped"' in text
    finally:
        await events.stop()
        await crm.close()
