"""Meta's 2026 additions end to end, with the simulator and the real Asterisk: voicemail's
TIMEOUT against a slow dialplan, account warnings in /metrics and /readyz, call events pushed
to a CRM (a real aiohttp server) in order and after an outage, and Meta's recording fetched
into store.media_dir and linked to the call record."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

from gateway.app import Gateway
from gateway.media import aiortc_hooks
from gateway.sandbox.local_asterisk import LocalAsterisk
from gateway.simulator.cloud_api import CloudApiSimulator
from tests.crm import SECRET, Crm

from .conftest import ACCESS_TOKEN, API_TOKEN, APP_SECRET, NUMBERS, Stack, make_config

pytestmark = pytest.mark.asterisk

SLOW = "100000000000007"  # voicemail TIMEOUT 2 s, a dialplan that takes 3 s to answer
VOICEMAIL_AT_ONCE = "100000000000008"  # voicemail TIMEOUT 0 s: Meta always wins
RECORDED = "100000000000009"  # recording + transcription opted in
HANGUP = "100000000000004"  # test-hangup: answers, hangs up after 0.2 s
EXTRA = {SLOW: ("15550000007", "test-slow"), VOICEMAIL_AT_ONCE: ("15550000008", "test-wait"),
         RECORDED: ("15550000009", "test-hangup")}
RECORDING = {"purpose": "Quality assurance", "announcement_language": "en_US",
             "transcription": True}


def voicemail(timeout_s: int) -> dict:
    return {"status": "ENABLED", "triggers": ["TIMEOUT"],
            "audio": {"default": {"announcement_media_id": 938884519013664,
                                  "timeout_seconds": timeout_s}}}


@pytest.fixture
async def crm() -> AsyncIterator[Crm]:
    server = Crm()
    await server.start()
    try:
        yield server
    finally:
        await server.close()


@pytest.fixture
async def stack(asterisk: LocalAsterisk, tmp_path, crm: Crm) -> AsyncIterator[Stack]:
    aiortc_hooks.install()
    aiortc_hooks.set_host_addresses(["127.0.0.1", "::1"])
    sim = CloudApiSimulator(app_secret=APP_SECRET, access_token=ACCESS_TOKEN,
                            recording_delay_s=0.2, voicemail_length_s=0.3)
    numbers = {**NUMBERS, **EXTRA}
    for pnid, (display, _context) in numbers.items():
        sim.numbers[pnid] = display
    sim.number_settings(SLOW)["calling"]["voicemail"] = voicemail(2)
    sim.number_settings(VOICEMAIL_AT_ONCE)["calling"]["voicemail"] = voicemail(0)
    await sim.start()
    entries = []
    for pnid, (display, context) in numbers.items():
        entry: dict = {"phone_number_id": pnid, "display_number": display, "context": context}
        if pnid == SLOW:
            entry["calling"] = {"voicemail": voicemail(2)}
        elif pnid == VOICEMAIL_AT_ONCE:
            entry["calling"] = {"voicemail": voicemail(0)}
        elif pnid == RECORDED:
            entry["recording"] = RECORDING
        entries.append(entry)
    config = make_config(sim.url, asterisk.ami_port, numbers=entries,
                         store={"path": str(tmp_path / "gateway.sqlite3"),
                                "media_dir": str(tmp_path / "media")},
                         crm_events={"urls": [crm.url], "secret": SECRET,
                                     "max_retry_delay": 0.3})
    gateway = Gateway(config)
    await gateway.start()
    sim.webhook_url = f"{gateway.url}/webhook"
    s = Stack(sim=sim, gateway=gateway, asterisk=asterisk)
    gateway.ami.add_event_listener("*", s.on_event)
    try:
        yield s
    finally:
        await gateway.stop()
        await sim.close()


async def call_on(stack: Stack, pnid: str, **kw):
    display = {**NUMBERS, **EXTRA}[pnid][0]
    return await stack.sim.place_call(from_wa_id=kw.pop("from_wa_id", "15550002222"),
                                      phone_number_id=pnid, display_phone_number=display, **kw)


async def read(path: str | Path) -> bytes:
    return await asyncio.to_thread(Path(path).read_bytes)


async def get(url: str) -> tuple[int, str]:
    async with aiohttp.ClientSession() as session:
        async with session.get(url) as resp:
            return resp.status, await resp.text()


def metric(text: str, name: str, **labels: str) -> float | None:
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                return s.value
    return None


async def crm_events_of(crm: Crm, wacid: str, last: str, timeout: float = 15) -> list[str]:
    async with crm.arrived:
        await asyncio.wait_for(crm.arrived.wait_for(lambda: any(
            e["call"]["wacid"] == wacid and e["event"] == last for e in crm.accepted)), timeout)
    return [e["event"] for e in crm.accepted if e["call"]["wacid"] == wacid]


async def test_voicemail_timeout_does_not_take_a_call_whose_dialplan_is_slow(stack: Stack,
                                                                              caplog):
    caplog.set_level(logging.INFO, logger="gateway.voicemail")
    call = await call_on(stack, SLOW)
    # The dialplan works for 3 s before it answers; Meta's voicemail would take the call at 2 s.
    ev = await stack.wait_event(lambda e: e.get("UserEvent") == "TestSlow", timeout=15)
    assert ev["WaCallId"] == call.call_id
    assert call.state == "accepted" and call.voicemail_at is None
    assert call.accepted_at - call.started_at < 2
    assert "before Meta's voicemail (TIMEOUT 2 s) would take it" in caplog.text
    await call.hangup()
    await stack.wait_idle()


async def test_a_call_meta_voicemail_took_is_logged_linked_and_announced(stack: Stack, crm: Crm,
                                                                         caplog):
    caplog.set_level(logging.INFO, logger="gateway.voicemail")
    call = await call_on(stack, VOICEMAIL_AT_ONCE)
    events = await crm_events_of(crm, call.call_id, "voicemail")
    # Meta promises no order between the terminate and the voicemail message.
    assert events[0] == "ringing" and {"ended", "voicemail"} <= set(events)
    assert "answered" not in events
    assert "not accepted within voicemail.timeout_seconds (0 s): Meta's voicemail takes " \
           "the call" in caplog.text
    await stack.gateway.media.wait_idle()
    store = stack.gateway.store
    record = await store.get(call.call_id)
    assert record is not None and record.answered_at is None
    (media,) = await store.media_for(call.call_id)
    assert media.kind == "voicemail" and media.media_id == call.voicemail_media_id
    assert await read(media.path) == stack.sim.media[media.media_id].content
    voicemail_event = next(e for e in crm.accepted if e["event"] == "voicemail")
    assert voicemail_event["data"]["media_id"] == media.media_id
    _, text = await get(f"{stack.gateway.url}/metrics")
    assert metric(text, "whatsapp_gateway_voicemail_deadline_missed_total",
                  phone_number_id=VOICEMAIL_AT_ONCE) == 1
    assert metric(text, "whatsapp_gateway_inbound_pickup_ratio",
                  phone_number_id=VOICEMAIL_AT_ONCE) == 0
    await stack.wait_idle()


async def test_account_warnings_show_in_metrics_and_readyz(stack: Stack):
    pnid = "100000000000001"
    assert (await stack.sim.send_account_violation(pnid)).ok
    assert (await stack.sim.restrict_calling(pnid)).ok
    _, text = await get(f"{stack.gateway.url}/metrics")
    assert metric(text, "whatsapp_gateway_account_updates_total", phone_number_id=pnid,
                  event="ACCOUNT_VIOLATION", type="USER_INITIATED_CALLS_LOW_PICKUP_RATE") == 1
    assert metric(text, "whatsapp_gateway_account_restricted", phone_number_id=pnid,
                  restriction_type="RESTRICTED_BUSINESS_INITIATED_CALLING") == 1
    status, body = await get(f"{stack.gateway.url}/readyz")
    account = json.loads(body)["info"]["account"][pnid]
    assert status == 200  # a warning is information, not unreadiness
    assert account["warnings"][0]["type"] == "USER_INITIATED_CALLS_LOW_PICKUP_RATE"
    assert account["restrictions"][0]["type"] == "RESTRICTED_BUSINESS_INITIATED_CALLING"


async def test_crm_gets_signed_events_in_order_and_after_an_outage(stack: Stack, crm: Crm):
    first = await call_on(stack, HANGUP)
    assert await crm_events_of(crm, first.call_id, "ended") == [
        "ringing", "dialplan_started", "answered", "ended"]
    ended = [e for e in crm.accepted if e["event"] == "ended"][0]
    assert ended["record"]["outcome"] == "answered" and ended["record"]["q850_cause"] == 21
    assert crm.bad_signatures == 0
    await stack.wait_idle()

    await crm.close()  # the CRM goes down; calls go on
    second = await call_on(stack, HANGUP, from_wa_id="15550003333")
    await second.wait_ended(15)
    await stack.wait_idle()
    sink = stack.gateway.crm.sinks[0]
    assert sink.queue and crm.accepted[-1]["call"]["wacid"] == first.call_id
    await crm.start(port=crm.port)  # back: everything arrives, in order
    assert await crm_events_of(crm, second.call_id, "ended") == [
        "ringing", "dialplan_started", "answered", "ended"]
    seqs = [e["seq"] for e in crm.accepted]
    assert seqs == list(range(1, len(seqs) + 1))


async def test_meta_recording_is_fetched_into_media_dir_and_linked(stack: Stack, crm: Crm):
    call = await call_on(stack, RECORDED)
    await crm_events_of(crm, call.call_id, "transcription_available")
    (accept,) = stack.sim.requests_for(call.call_id, "accept")
    assert accept.body["recording"] == {"status": "ENABLED", "purpose": "Quality assurance",
                                        "announcement_language": "en_US"}
    assert accept.body["transcription"]["status"] == "ENABLED"
    await stack.gateway.media.wait_idle()
    media = {m.kind: m for m in await stack.gateway.store.media_for(call.call_id)}
    assert set(media) == {"recording", "transcription"}
    recording = Path(media["recording"].path)
    assert recording.is_relative_to(stack.gateway.config.store.media_dir)
    content = await read(recording)
    assert content == stack.sim.media[media["recording"].media_id].content
    assert content[:4] == b"OggS" and recording.suffix == ".ogg"
    assert Path(media["transcription"].path).suffix == ".json"
    event = next(e for e in crm.accepted if e["event"] == "recording_available")
    assert event["data"]["path"] == str(recording)
    async with aiohttp.ClientSession() as session:  # the call record shows them too
        async with session.get(f"{stack.gateway.url}/v1/calls/{call.call_id}",
                               headers={"Authorization": f"Bearer {API_TOKEN}"}) as resp:
            shown = await resp.json()
    assert {m["kind"]: m["path"] for m in shown["media"]} == \
        {k: m.path for k, m in media.items()}
    await stack.wait_idle()


async def test_an_outbound_call_asks_meta_to_record_on_connect(stack: Stack, crm: Crm):
    user = "15550007777"
    stack.sim.add_user(user, permission="temporary", on_call="answer", answer_after_s=0.3)
    async with aiohttp.ClientSession() as session:
        async with session.post(f"{stack.gateway.url}/v1/calls",
                                headers={"Authorization": f"Bearer {API_TOKEN}"},
                                json={"to": f"+{user}", "phone_number_id": RECORDED,
                                      "context": "test-hangup"}) as resp:
            assert resp.status == 201, await resp.text()
    call = await stack.sim.wait_outbound_call(to=user, timeout=15)
    (connect,) = stack.sim.requests_for(call.call_id, "connect")
    assert connect.body["recording"] == {"status": "ENABLED", "purpose": "Quality assurance",
                                         "announcement_language": "en_US"}
    events = await crm_events_of(crm, call.call_id, "recording_available")
    assert events[:3] == ["ringing", "dialplan_started", "answered"]
    assert {"ended", "recording_available"} <= set(events)  # Meta: about a minute after
    await stack.gateway.media.wait_idle()
    await stack.wait_idle()
