"""asterisk.servers against two real Asterisks: a call lands on the primary; the primary dies
(SIGKILL, no Hangup event) and its call is ended toward WhatsApp after the grace while a new
call lands on the secondary and echoes; /readyz and the metrics show each server; round_robin
spreads calls over both. Both Asterisks run the tests' overlay dialplan."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import aiohttp
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from gateway.app import Gateway
from gateway.asterisk.ami import AmiClient
from gateway.media import aiortc_hooks
from gateway.sandbox.local_asterisk import LocalAsterisk
from gateway.simulator.cloud_api import CloudApiSimulator
from tests.ports import free_tcp_port, instance_name

from .conftest import make_config, number_for, start_simulator
from .test_config_checks import whatsapp_gateway

pytestmark = pytest.mark.asterisk

OVERLAY = Path(__file__).parent / "asterisk-overlay"


@pytest.fixture(scope="module")
def pbxes() -> Iterator[tuple[LocalAsterisk, LocalAsterisk]]:
    """Two Asterisks of this suite's own (started by each test: one may have been killed)."""
    pair = (LocalAsterisk(instance_name("primary"), ami_port=free_tcp_port(),
                          overlay_dir=OVERLAY),
            LocalAsterisk(instance_name("secondary"), ami_port=free_tcp_port(),
                          overlay_dir=OVERLAY))
    try:
        yield pair
    finally:
        for pbx in pair:
            asyncio.run(pbx.stop())


def server(name: str, pbx: LocalAsterisk) -> dict:
    return {"name": name, "host": "127.0.0.1", "port": pbx.ami_port, "username": "gateway",
            "secret": "gateway-secret"}


@contextlib.asynccontextmanager
async def gateway_on(pbxes: tuple[LocalAsterisk, LocalAsterisk], tmp_path: Path,
                     **asterisk) -> AsyncIterator[tuple[CloudApiSimulator, Gateway]]:
    for pbx in pbxes:
        await pbx.start()
    aiortc_hooks.install()
    aiortc_hooks.set_host_addresses(["127.0.0.1", "::1"])
    sim = await start_simulator()
    primary, secondary = pbxes
    gw = Gateway(make_config(
        sim.url, primary.ami_port, store={"path": str(tmp_path / "g.sqlite3")},
        asterisk={"ami": None, "servers": [server("primary", primary),
                                           server("secondary", secondary)], **asterisk}))
    try:
        await gw.start()
        sim.webhook_url = f"{gw.url}/webhook"
        yield sim, gw
    finally:
        await gw.stop()
        await sim.close()


async def place(sim: CloudApiSimulator, context: str, caller: str):
    pnid, display = number_for(context)
    call = await sim.place_call(from_wa_id=caller, phone_number_id=pnid,
                                display_phone_number=display)
    await asyncio.wait_for(call.accepted.wait(), 15)
    return call


async def channel_ids(pbx: LocalAsterisk) -> str:
    """What the real Asterisk lists as its channels (a call's channel id is in it)."""
    return await pbx.cli("core show channels concise")


async def get(url: str) -> tuple[int, str]:
    async with aiohttp.ClientSession() as session, session.get(url) as resp:
        return resp.status, await resp.text()


def ami_connected(metrics: str) -> dict[str, float]:
    return {s.labels["server"]: s.value for fam in text_string_to_metric_families(metrics)
            for s in fam.samples if s.name == "whatsapp_gateway_ami_connected"}


async def test_primary_dies_its_call_ends_and_new_calls_land_on_the_secondary(pbxes, tmp_path):
    primary, secondary = pbxes
    async with gateway_on(pbxes, tmp_path, ami_down_grace=1) as (sim, gw):
        first_client, second_client = gw.asterisk.clients
        assert all(c.connected for c in gw.asterisk.clients)
        changes: asyncio.Queue[bool] = asyncio.Queue()
        first_client.on_connection_change.append(changes.put_nowait)

        first = await place(sim, "test-wait", "15550007101")
        channel = gw.calls.calls[first.call_id].channel_id
        assert gw.calls.calls[first.call_id].deps.ami is first_client
        assert channel in await channel_ids(primary)
        assert channel not in await channel_ids(secondary)

        await primary.crash()  # no goodbye: no Hangup event reaches the gateway
        assert await asyncio.wait_for(changes.get(), 20) is False
        lost_at = asyncio.get_running_loop().time()
        await asyncio.wait_for(first.ended.wait(), 15)
        assert asyncio.get_running_loop().time() - lost_at >= 0.9  # not before the grace
        assert first.ended_by == "business"
        assert len(sim.requests_for(first.call_id, "terminate")) == 1

        status, body = await get(f"{gw.url}/readyz")
        ready = json.loads(body)
        assert status == 200 and ready["status"] == "degraded", body
        assert ready["checks"]["ami"]["servers"] == {"primary": "not connected",
                                                     "secondary": "connected"}
        assert any("primary" in w for w in ready["warnings"]), body
        assert ami_connected((await get(f"{gw.url}/metrics"))[1]) == \
            {"primary": 0.0, "secondary": 1.0}

        second = await place(sim, "test-echo", "15550007102")
        call = gw.calls.calls[second.call_id]
        assert call.deps.ami is second_client and isinstance(call.deps.ami, AmiClient)
        assert call.channel_id in await channel_ids(secondary)
        await asyncio.wait_for(second.media_connected.wait(), 10)
        started = second.transcript.now()
        await second.phone.say_tone(700, 2.0)
        heard = second.phone.heard(since=started + 0.5, until=second.transcript.now())
        assert heard.kind == "tone" and heard.frequency == pytest.approx(700, abs=25), heard
        await second.hangup()
        assert await gw.calls.settle(10)
        await asyncio.wait_for(gw.store.writes.drained.wait(), 10)
        record = await gw.store.get(first.call_id)
        assert record.end_reason == "asterisk_down" and "primary" in record.reason
        assert (await gw.store.get(second.call_id)).outcome == "answered"


async def test_round_robin_spreads_calls_over_both_servers(pbxes, tmp_path):
    primary, secondary = pbxes
    async with gateway_on(pbxes, tmp_path, policy="round_robin") as (sim, gw):
        calls = [await place(sim, "test-wait", caller)
                 for caller in ("15550007201", "15550007202")]
        ids = [gw.calls.calls[c.call_id].channel_id for c in calls]
        on_primary, on_secondary = await channel_ids(primary), await channel_ids(secondary)
        assert (ids[0] in on_primary) != (ids[0] in on_secondary)
        assert {ids[0] in on_primary, ids[1] in on_primary} == {True, False}, \
            "both calls landed on one server"
        for call in calls:
            await call.hangup()
        assert await gw.calls.settle(10)


async def test_check_config_checks_every_server(pbxes, tmp_path):
    """``check-config --asterisk`` with asterisk.servers: each server is checked (a call may
    land on any); one unreachable fails the check, naming it."""
    primary, secondary = pbxes
    for pbx in pbxes:
        await pbx.start()
    down = free_tcp_port()  # nothing listens there
    config = {
        "whatsapp": {"graph_url": "http://127.0.0.1:9/v23.0", "access_token": "${WA_TOKEN}",
                     "app_secret": "${WA_SECRET}", "verify_token": "v"},
        "numbers": [{"phone_number_id": "100000000000091", "context": "from-whatsapp"}],
        "asterisk": {"servers": [{**server("primary", primary), "connect_timeout": 1},
                                 {**server("secondary", secondary), "connect_timeout": 1}]},
        "store": {"path": str(tmp_path / "gateway.sqlite3")},
    }
    path = tmp_path / "gateway.yaml"
    path.write_text(yaml.safe_dump(config))
    code, out = await whatsapp_gateway("check-config", "-c", str(path), "--asterisk")
    assert code == 0, out
    assert f"Asterisk AMI 127.0.0.1:{primary.ami_port}: connected" in out
    assert f"Asterisk AMI 127.0.0.1:{secondary.ami_port}: connected" in out
    config["asterisk"]["servers"][1]["port"] = down
    path.write_text(yaml.safe_dump(config))
    code, out = await whatsapp_gateway("check-config", "-c", str(path), "--asterisk")
    assert code == 1, out
    assert f"no AMI connection to 127.0.0.1:{down}" in out
    assert f"Asterisk AMI 127.0.0.1:{primary.ami_port}: connected" in out
