"""What operators see after real calls: /metrics, call records, /readyz, and a gateway that
dies mid-call (its record is closed as failed on restart and Asterisk's channel is swept)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
from pathlib import Path

import aiohttp
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from gateway.app import Gateway
from gateway.calls.record import Outcome
from gateway.config import parse_config
from gateway.sandbox.local_asterisk import LocalAsterisk
from gateway.simulator.cloud_api import CloudApiSimulator
from gateway.store import CallStore
from gateway.whatsapp.signature import sign
from tests.ports import free_tcp_port, instance_name, udp_range

from .conftest import ACCESS_TOKEN, APP_SECRET, NUMBERS, Stack, make_config, number_for

pytestmark = pytest.mark.asterisk


async def fetch(url: str) -> tuple[int, str]:
    async with aiohttp.ClientSession() as session:
        async with session.get(url) as resp:
            return resp.status, await resp.text()


async def settle(gw: Gateway) -> None:
    """Until the gateway's background call work (set-ups, teardowns, checks) is done."""
    await gw.calls.settle()


def samples(text: str) -> list[tuple[str, dict, float]]:
    return [(s.name, s.labels, s.value) for fam in text_string_to_metric_families(text)
            for s in fam.samples]


def process_config(sim: CloudApiSimulator, asterisk: LocalAsterisk, tmp_path, http_port: int,
                   rtp_ports: str, **extra) -> tuple[dict, str]:
    """A config for a gateway run as its own process (``extra``: more top-level keys), and the
    file it is written to."""
    config = {
        "whatsapp": {"graph_url": sim.url, "access_token": ACCESS_TOKEN,
                     "app_secret": APP_SECRET, "verify_token": "e2e-verify"},
        "numbers": [{"phone_number_id": pnid, "context": ctx}
                    for pnid, (_d, ctx) in NUMBERS.items()],
        "asterisk": {"ami": {"port": asterisk.ami_port, "username": "gateway",
                             "secret": "gateway-secret"}},
        "media": {"webrtc_addresses": ["127.0.0.1"], "rtp_ports": rtp_ports},
        "http": {"listen": f"127.0.0.1:{http_port}"},
        "store": {"path": str(tmp_path / "gateway.sqlite3")},
        **extra,
    }
    path = tmp_path / "gateway.yaml"
    path.write_text(yaml.safe_dump(config))
    return config, str(path)


@contextlib.asynccontextmanager
async def call_through_gateway_process(asterisk: LocalAsterisk, tmp_path, http_port: int,
                                       rtp_ports: str, caller: str, **extra):
    """A gateway running as its own process, with one answered call through it into the
    test-wait context: yields (config, process, call). Cleans up whatever the test did."""
    sim = CloudApiSimulator(app_secret=APP_SECRET, access_token=ACCESS_TOKEN)
    await sim.start()
    config, path = process_config(sim, asterisk, tmp_path, http_port, rtp_ports, **extra)
    proc = await start_gateway_process(path)
    call = None
    try:
        sim.webhook_url = f"http://127.0.0.1:{http_port}/webhook"
        pnid, display = number_for("test-wait")
        call = await sim.place_call(from_wa_id=caller, phone_number_id=pnid,
                                    display_phone_number=display)
        await asyncio.wait_for(call.accepted.wait(), 15)
        yield config, proc, call
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        if call is not None:
            await call.phone.hangup()
        await sim.close()


def rtp_channel_prefix(config: dict) -> str:
    """What the names of this gateway's UnicastRTP channels start with (its 100-port range)."""
    return "UnicastRTP/127.0.0.1:" + config["media"]["rtp_ports"].split("-")[0][:3]


async def start_gateway_process(config_path: str) -> asyncio.subprocess.Process:
    """``whatsapp-gateway serve`` as a real process; returns once it listens."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "gateway", "serve", "--config", config_path, "--workers", "1",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
        env={**os.environ, "PYTHONUNBUFFERED": "1"})
    while True:  # the gateway says when it listens
        line = await asyncio.wait_for(proc.stdout.readline(), 30)
        if not line:
            raise AssertionError("gateway exited before listening")
        if b"gateway listening" in line:
            return proc


def value(text: str, name: str, **labels: str) -> float:
    return sum(v for n, lab, v in samples(text)
               if n == name and all(lab.get(k) == want for k, want in labels.items()))


async def test_metrics_after_an_answered_call_a_rejected_call_and_a_forged_webhook(
        stack: Stack):
    pnid, _ = number_for("test-echo")
    call = await stack.place_call("test-echo")
    await asyncio.wait_for(call.accepted.wait(), 10)
    await asyncio.wait_for(call.media_connected.wait(), 10)
    await call.phone.press("5")
    await call.phone.say_tone(700, 0.5)
    await call.hangup()
    rejected = await stack.sim.place_call(from_wa_id="15550003333",
                                          phone_number_id="999999999999999")
    await asyncio.wait_for(rejected.ended.wait(), 10)
    body = b'{"object":"whatsapp_business_account","entry":[]}'
    async with aiohttp.ClientSession() as session:
        async with session.post(f"{stack.gateway.url}/webhook", data=body,
                                headers={"X-Hub-Signature-256": sign("forged", body)}) as r:
            assert r.status == 403
    await stack.wait_idle()

    status, text = await fetch(f"{stack.gateway.url}/metrics")
    assert status == 200
    m = "whatsapp_gateway_"
    assert value(text, f"{m}calls_total", phone_number_id=pnid, direction="inbound",
                 outcome="answered", hangup_side="whatsapp") == 1
    assert value(text, f"{m}calls_total", phone_number_id="unknown",
                 outcome="rejected", hangup_side="gateway") == 1
    assert value(text, f"{m}call_end_reasons_total", phone_number_id=pnid,
                 reason="normal") == 1
    assert value(text, f"{m}call_end_reasons_total", reason="unknown_number") == 1
    assert value(text, f"{m}webhook_requests_total", result="bad_signature") == 1
    assert value(text, f"{m}webhook_requests_total", result="ok") >= 3
    assert value(text, f"{m}active_calls", phone_number_id=pnid) == 0
    for stage in ("pre_accept", "dialplan", "media"):
        assert value(text, f"{m}call_setup_seconds_count", phone_number_id=pnid,
                     stage=stage) == 1, stage
    assert value(text, f"{m}graph_requests_total", action="pre_accept", result="ok") == 1
    assert value(text, f"{m}graph_requests_total", action="accept", result="ok") == 1
    assert value(text, f"{m}graph_requests_total", action="reject", result="ok") == 1
    assert value(text, f"{m}graph_request_duration_seconds_count", action="accept") == 1
    assert value(text, f"{m}rtp_packets_received_total", phone_number_id=pnid) > 20
    assert value(text, f"{m}dtmf_digits_total", phone_number_id=pnid, sender="whatsapp") == 1
    # Echo() plays the digit back: Asterisk → WhatsApp as RFC 4733, and the phone got it
    assert value(text, f"{m}dtmf_digits_total", phone_number_id=pnid, sender="asterisk") == 1
    assert call.phone.dtmf_received == ["5"]
    assert value(text, f"{m}ami_connected") == 1

    # ... and one call record each, with outcome and cause
    answered = await stack.gateway.store.get(call.call_id)
    assert answered.outcome == Outcome.ANSWERED and answered.hangup_side == "whatsapp"
    assert answered.q850_cause == 16 and answered.dtmf_in == 1
    assert answered.channel.startswith("UnicastRTP/127.0.0.1:")
    assert answered.duration_seconds and answered.duration_seconds > 0.5
    refused = await stack.gateway.store.get(rejected.call_id)
    assert refused.outcome == Outcome.REJECTED and "unknown phone_number_id" in refused.reason
    assert refused.end_reason == "unknown_number" and answered.end_reason == "normal"


async def test_call_records_api_and_csv(stack: Stack):
    call = await stack.place_call("test-hangup")
    await asyncio.wait_for(call.ended.wait(), 15)
    await stack.wait_idle()
    headers = {"Authorization": "Bearer e2e-api-token"}
    async with aiohttp.ClientSession(headers=headers) as session:
        async with session.get(f"{stack.gateway.url}/v1/calls?since=1h") as resp:
            assert resp.status == 200
            (record,) = (await resp.json())["calls"]
        assert record["wacid"] == call.call_id
        assert record["outcome"] == "answered" and record["hangup_side"] == "asterisk"
        assert record["q850_cause"] == 21
        async with session.get(f"{stack.gateway.url}/v1/calls?format=csv") as resp:
            csv_text = await resp.text()
        assert call.call_id in csv_text and "wa_call_id" in csv_text.splitlines()[0]
    async with aiohttp.ClientSession() as session:
        async with session.get(f"{stack.gateway.url}/v1/calls") as resp:
            assert resp.status == 401


async def test_readyz_follows_asterisk(tmp_path):
    """AMI goes away: not ready, with the reason; Asterisk returns: ready again."""
    ast = LocalAsterisk(instance_name("readyz"), ami_port=free_tcp_port())
    await ast.start()
    sim = CloudApiSimulator(app_secret=APP_SECRET, access_token=ACCESS_TOKEN)
    await sim.start()
    gw = Gateway(make_config(sim.url, ast.ami_port, store={"path": str(tmp_path / "g.sqlite3")}))
    changes: asyncio.Queue[bool] = asyncio.Queue()
    gw.ami.on_connection_change.append(changes.put_nowait)
    await gw.start()
    try:
        assert changes.get_nowait() is True  # the first connection
        status, body = await fetch(f"{gw.url}/readyz")
        assert status == 200, body
        await ast.stop()
        assert await asyncio.wait_for(changes.get(), 15) is False
        status, body = await fetch(f"{gw.url}/readyz")
        assert status == 503 and "ami" in body and "not connected" in body
        assert (await fetch(f"{gw.url}/healthz"))[0] == 200
        await ast.start()
        assert await asyncio.wait_for(changes.get(), 40) is True
        status, body = await fetch(f"{gw.url}/readyz")
        assert status == 200, body
    finally:
        await gw.stop()
        await sim.close()
        await ast.stop()


async def test_gateway_killed_mid_call_is_recovered_on_restart(asterisk: LocalAsterisk,
                                                                tmp_path):
    """SIGKILL the gateway process during a call: the next start closes the record as failed
    and hangs up the channel the dead gateway left in Asterisk."""
    async with call_through_gateway_process(asterisk, tmp_path, free_tcp_port(),
                                            udp_range(400, 100),
                                            "15550004444") as (config, proc, call):
        proc.send_signal(signal.SIGKILL)
        await proc.wait()
    db = config["store"]["path"]

    store = await CallStore.open(db)
    record = await store.get(call.call_id)
    assert record.outcome == Outcome.ACTIVE  # what the dead process left behind ...
    await store.close()
    assert rtp_channel_prefix(config) in await asterisk.cli("core show channels concise")

    cfg = parse_config(config, env={})
    gw = Gateway(cfg)
    await gw.start()  # sweeps orphaned channels on AMI connect ...
    await gw.calls.settle(60)  # ... and ends orphaned records (at Meta too), then closes them
    try:
        record = await gw.store.get(call.call_id)
        assert record.outcome == Outcome.FAILED and record.end_reason == "shutdown"
        assert "stopped" in record.reason
        channels = [c for c in await gw.ami.core_show_channels()
                    if c.get("Uniqueid", "").startswith("wa-")]
        assert channels == []
    finally:
        await gw.stop()


async def test_calls_outside_call_hours_go_to_the_closed_context(asterisk: LocalAsterisk,
                                                                 tmp_path):
    """The number is open only tomorrow: today's caller lands in closed_context."""
    import datetime as dt

    tomorrow = (dt.datetime.now(dt.UTC) + dt.timedelta(days=1)).strftime("%A").upper()
    sim = CloudApiSimulator(app_secret=APP_SECRET, access_token=ACCESS_TOKEN)
    await sim.start()
    cfg = make_config(sim.url, asterisk.ami_port,
                      numbers=[{"phone_number_id": "100000000000009",
                                "display_number": "15550000009", "context": "test-echo",
                                "closed_context": "test-marker",
                                "calling": {"call_hours": {
                                    "status": "ENABLED", "timezone_id": "UTC",
                                    "weekly_operating_hours": [
                                        {"day_of_week": tomorrow, "open_time": "0000",
                                         "close_time": "2359"}]}}}],
                      store={"path": str(tmp_path / "g.sqlite3")})
    gw = Gateway(cfg)
    events: asyncio.Queue[dict] = asyncio.Queue()
    gw.ami.add_event_listener("UserEvent", events.put_nowait)
    await gw.start()
    sim.webhook_url = f"{gw.url}/webhook"
    try:
        call = await sim.place_call(from_wa_id="15550005555", phone_number_id="100000000000009",
                                    display_phone_number="15550000009")
        marker = await asyncio.wait_for(events.get(), 15)
        assert marker["UserEvent"] == "TestMarker"
        assert marker["DialplanContext"] == "test-marker"
        assert marker["WaCallId"] == call.call_id
        await call.hangup()
    finally:
        await gw.stop()
        await sim.close()


async def test_sigterm_ends_live_calls_cleanly(asterisk: LocalAsterisk, tmp_path):
    """Stopping the service (SIGTERM) drains for service.shutdown_grace, then hangs up both
    sides of every call still up and closes its record, instead of leaving callers in
    Asterisk."""
    async with call_through_gateway_process(asterisk, tmp_path, free_tcp_port(),
                                            udp_range(500, 100), "15550006666",
                                            service={"shutdown_grace": 1}) as (config, proc,
                                                                              call):
        proc.send_signal(signal.SIGTERM)
        await asyncio.wait_for(call.ended.wait(), 15)
        assert call.ended_by == "business"
        assert await asyncio.wait_for(proc.wait(), 15) == 0
    db = config["store"]["path"]
    store = await CallStore.open(db)
    try:
        record = await store.get(call.call_id)
        assert record.outcome != Outcome.ACTIVE and "shutting down" in record.reason
    finally:
        await store.close()
    channels = await asterisk.cli("core show channels concise")
    assert rtp_channel_prefix(config) not in channels, channels


async def test_asterisk_crash_mid_call_ends_the_whatsapp_call_after_reconnect(tmp_path):
    """Asterisk dies (SIGKILL: no Hangup events) during a call and comes back within
    asterisk.ami_down_grace: on the AMI reconnect the gateway finds the channel gone and ends
    the WhatsApp call."""
    ast = LocalAsterisk(instance_name("crash"), ami_port=free_tcp_port(),
                        overlay_dir=Path(__file__).parent / "asterisk-overlay")
    await ast.start()
    sim = CloudApiSimulator(app_secret=APP_SECRET, access_token=ACCESS_TOKEN)
    await sim.start()
    gw = Gateway(make_config(sim.url, ast.ami_port, store={"path": str(tmp_path / "g.sqlite3")},
                             asterisk={"ami_down_grace": 300}))
    changes: asyncio.Queue[bool] = asyncio.Queue()
    gw.ami.on_connection_change.append(changes.put_nowait)
    await gw.start()
    sim.webhook_url = f"{gw.url}/webhook"
    try:
        assert changes.get_nowait() is True
        pnid, display = number_for("test-wait")
        call = await sim.place_call(from_wa_id="15550008888", phone_number_id=pnid,
                                    display_phone_number=display)
        await asyncio.wait_for(call.accepted.wait(), 15)
        await ast.crash()  # no goodbye: no Hangup event reaches the gateway
        assert await asyncio.wait_for(changes.get(), 20) is False
        assert not call.ended.is_set()
        await ast.start()
        assert await asyncio.wait_for(changes.get(), 60) is True
        await asyncio.wait_for(call.ended.wait(), 20)
        assert call.ended_by == "business"
        assert len(sim.requests_for(call.call_id, "terminate")) == 1
        record = await gw.store.get(call.call_id)
        assert record.hangup_side == "asterisk" and "vanished" in record.reason
        assert record.end_reason == "asterisk_vanished"
    finally:
        await gw.stop()
        await sim.close()
        await ast.stop()


async def test_a_context_missing_from_the_dialplan_is_reported_and_its_calls_end_cleanly(
        asterisk: LocalAsterisk, tmp_path, caplog):
    sim = CloudApiSimulator(app_secret=APP_SECRET, access_token=ACCESS_TOKEN)
    await sim.start()
    cfg = make_config(sim.url, asterisk.ami_port, store={"path": str(tmp_path / "g.sqlite3")},
                      numbers=[{"phone_number_id": "100000000000011",
                                "display_number": "15550000011", "context": "from-whatsap"},
                               {"phone_number_id": "100000000000002",
                                "display_number": "15550000002", "context": "test-echo"}])
    gw = Gateway(cfg)
    await gw.start()
    sim.webhook_url = f"{gw.url}/webhook"
    try:
        await settle(gw)  # the check runs on connect
        assert gw.dialplan_problems == [
            "numbers[0].context: extension 's' in context 'from-whatsap' does not exist in "
            "Asterisk's dialplan"]
        assert "numbers[0].context" in caplog.text
        status, body = await fetch(f"{gw.url}/readyz")
        assert status == 200 and "from-whatsap" in body  # reported, not fatal to the others
        call = await sim.place_call(from_wa_id="15550002222", phone_number_id="100000000000011",
                                    display_phone_number="15550000011")
        await asyncio.wait_for(call.ended.wait(), 15)
        await settle(gw)
        record = await gw.store.get(call.call_id)
        assert record.outcome == "failed" and record.end_reason == "asterisk_refused"
        assert [c for c in await gw.ami.core_show_channels()
                if c.get("Uniqueid", "").startswith("wa-")] == []
    finally:
        await gw.stop()
        await sim.close()
