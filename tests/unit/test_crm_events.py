"""CRM event delivery against a real HTTP server: signed, in order, retried while the CRM is
down, refused events skipped, a bounded queue that drops the oldest."""

from __future__ import annotations

from gateway.calls.record import CallRecord, Direction
from gateway.config import CrmEventsSettings, Secret
from gateway.crm_events import CrmEvents
from gateway.metrics import GatewayMetrics
from tests.crm import SECRET, Crm


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


def test_a_token_in_the_crm_url_never_reaches_logs_or_metrics():
    from gateway.crm_events import public_url

    assert public_url("https://user:pw@crm.example.com:8443/hook?token=s3cret") == \
        "https://crm.example.com:8443/hook"
    settings = CrmEventsSettings(urls=("https://crm.example.com/hook?token=s3cret",),
                                 secret=Secret(SECRET))
    events = CrmEvents(settings, GatewayMetrics(["1"], process=False))
    events.call_admitted(record())  # queued (not started): the gauge is set
    text = events.sinks[0].metrics.exposition().decode()
    assert "s3cret" not in text and 'url="https://crm.example.com/hook"' in text
