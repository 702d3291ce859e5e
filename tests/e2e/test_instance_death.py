"""An instance dies (issue 10): two ``serve`` processes on one real PostgreSQL and the session's
real Asterisk; gw-a is SIGKILLed mid-call and gw-b, once gw-a's heartbeat is older than
``gateway.gone_after_s``, ends that call at Meta, hangs up its channel and closes its record,
while new calls land on gw-b.

Nothing is faked: gw-a gets no chance to clean up (SIGKILL), its heartbeat simply stops. The
heartbeat interval and the gone-after time are set small (0.5 s / 3 s) so the take-over comes
within seconds, as it would within a minute with the defaults.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

import pytest

from gateway.asterisk.ami import AmiClient
from gateway.config import parse_config
from gateway.sandbox.local_asterisk import LocalAsterisk
from gateway.simulator.cloud_api import CloudApiSimulator
from tests.ports import free_tcp_port, udp_range

from .conftest import ACCESS_TOKEN, APP_SECRET, NUMBERS, number_for
from .test_operations import process_config
from .test_shared_store import stored
from .test_workers import echoes

pytestmark = [pytest.mark.asterisk, pytest.mark.postgres]

HEARTBEAT_S = 0.5
GONE_AFTER_S = 3.0
TAKE_OVER_BOUND_S = GONE_AFTER_S + 12.0
"""From the kill to Meta's terminate: the silence gw-b waits for, then a beat or two of
gw-b, the store's take-over and one Graph request; the rest is slack for a loaded machine."""

T = TypeVar("T")


async def until(check: Callable[[], Awaitable[T]], what: str, timeout: float = 15.0) -> T:
    """Poll ``check`` until it returns something true (and return that): channels, rows and
    processes change on their own time, and only asking them again tells when."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        result = await check()
        if result:
            return result
        if loop.time() > deadline:
            raise AssertionError(f"{what}: not within {timeout} s (last: {result!r})")
        await asyncio.sleep(0.05)


@dataclass
class GatewayProcess:
    """One ``serve --workers 1`` process and everything it logged."""

    instance_id: str
    http_port: int
    proc: asyncio.subprocess.Process
    output: list[str] = field(default_factory=list)
    reader: asyncio.Task | None = None

    @property
    def webhook_url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}/webhook"

    async def stop(self) -> None:
        """SIGTERM twice (drain, then end the calls now), SIGKILL if that hangs."""
        if self.proc.returncode is None:
            self.proc.send_signal(signal.SIGTERM)
            self.proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(self.proc.wait(), 20)
            except TimeoutError:
                self.proc.kill()
                await self.proc.wait()
        if self.reader is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.reader, 5)
        print(f"{self.instance_id} logged:\n" + "\n".join(self.output))  # shown on failure


async def spawn(instance_id: str, http_port: int, path: str
                ) -> tuple[GatewayProcess, asyncio.Future[None]]:
    """Start a gateway process; returns it and a future done once it listens (or failed with
    its log if it exits first). The caller's ``finally`` stops it either way."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "gateway", "serve", "--config", path, "--workers", "1",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
        env={**os.environ, "PYTHONUNBUFFERED": "1"})
    gw = GatewayProcess(instance_id, http_port, proc)
    listening = asyncio.get_running_loop().create_future()

    async def read_output() -> None:  # all of it, so the pipe never fills
        while line := await proc.stdout.readline():
            gw.output.append(line.decode(errors="replace").rstrip())
            if b"gateway listening" in line and not listening.done():
                listening.set_result(None)
        if not listening.done():
            listening.set_exception(AssertionError(
                f"{instance_id} exited:\n" + "\n".join(gw.output)))

    gw.reader = asyncio.ensure_future(read_output())
    return gw, listening


@dataclass
class Pair:
    sim: CloudApiSimulator
    ami: AmiClient
    gateways: dict[str, GatewayProcess]

    async def channels(self, instance_id: str) -> dict[str, dict]:
        """The instance's channels in Asterisk, by Uniqueid (``wa-<instance>-<hex>``)."""
        return {c["Uniqueid"]: c for c in await self.ami.core_show_channels()
                if c.get("Uniqueid", "").startswith(f"wa-{instance_id}-")}


@pytest.fixture
async def pair(asterisk: LocalAsterisk, pg_url: str, tmp_path: Path) -> AsyncIterator[Pair]:
    sim = CloudApiSimulator(app_secret=APP_SECRET, access_token=ACCESS_TOKEN)
    for pnid, (display, _context) in NUMBERS.items():
        sim.numbers[pnid] = display
    await sim.start()  # its URL goes into the configs
    # Everything that can fail is made before the processes, which the finally must stop.
    configs: dict[str, tuple[int, str]] = {}
    for i, instance_id in enumerate(("gw-a", "gw-b")):
        folder = tmp_path / instance_id
        folder.mkdir()
        http_port = free_tcp_port()
        config, path = process_config(
            sim, asterisk, folder, http_port, "",
            media={"webrtc_addresses": ["127.0.0.1"],
                   "rtp_ports": udp_range(1000 + 400 * i, 200),
                   "webrtc_ports": udp_range(1200 + 400 * i, 200)},
            store={"path": str(folder / "gateway.sqlite3"), "url": pg_url},
            gateway={"instance_id": instance_id, "heartbeat_s": HEARTBEAT_S,
                     "gone_after_s": GONE_AFTER_S})
        configs[instance_id] = http_port, path
    ami = AmiClient(parse_config(config, env={}).asterisk.ami)  # no sweep: it owns no call
    gateways: dict[str, GatewayProcess] = {}
    try:
        starting = []
        for instance_id, (http_port, path) in configs.items():
            gateways[instance_id], listening = await spawn(instance_id, http_port, path)
            starting.append(listening)
        await asyncio.wait_for(asyncio.gather(*starting), 60)
        await ami.connect()
        yield Pair(sim, ami, gateways)
    finally:
        for gw in gateways.values():
            await gw.stop()
        with contextlib.suppress(Exception):  # a failed test's caller left in Echo()
            for channel in await ami.core_show_channels():
                if channel.get("Uniqueid", "").startswith(("wa-gw-a-", "wa-gw-b-")):
                    await ami.hangup(channel["Uniqueid"])
        await ami.close()
        await sim.close()


async def test_a_killed_gateways_call_is_ended_by_the_survivor_and_new_calls_land_there(
        pair: Pair, pg_url: str) -> None:
    sim, gw_a, gw_b = pair.sim, pair.gateways["gw-a"], pair.gateways["gw-b"]
    pnid, display = number_for("test-echo")

    sim.webhook_url = gw_a.webhook_url
    call = await sim.place_call(from_wa_id="15550008881", phone_number_id=pnid,
                                display_phone_number=display)
    await asyncio.wait_for(call.accepted.wait(), 20)
    await asyncio.wait_for(call.media_connected.wait(), 20)
    (channel,) = await until(
        lambda: pair.channels("gw-a"), "gw-a's channel up in Asterisk")
    assert await echoes(call)  # mid-call: audio goes round through gw-a and Asterisk
    row = await until(lambda: _answered(pg_url, call.call_id), "the answer in PostgreSQL")
    assert row == {"owner": "gw-a", "outcome": "active"}  # what gw-b will find
    assert not call.ended.is_set()

    gw_a.proc.send_signal(signal.SIGKILL)
    killed_at = time.monotonic()
    await gw_a.proc.wait()
    sim.webhook_url = gw_b.webhook_url  # Meta's webhooks now reach the survivor only

    # gw-b takes gw-a for gone and ends the call at Meta ...
    await asyncio.wait_for(call.ended.wait(), TAKE_OVER_BOUND_S)
    took_s = time.monotonic() - killed_at
    print(f"take-over: call ended at Meta {took_s:.2f} s after SIGKILL "
          f"(heartbeat {HEARTBEAT_S} s, gone after {GONE_AFTER_S} s)")
    assert took_s >= GONE_AFTER_S - 2 * HEARTBEAT_S  # not before gw-a could count as gone
    assert call.ended_by == "business"
    assert [r.status for r in sim.requests_for(call.call_id, "terminate")] == [200]
    # ... hangs up its channel in Asterisk ...
    await until(lambda: _gone(pair, channel), f"gw-a's channel {channel} hung up")
    # ... and closes its record as its own, saying why
    row = await until(lambda: _closed(pg_url, call.call_id), "the record closed")
    assert row["owner"] == "gw-b" and row["outcome"] == "failed", row
    assert row["end_reason"] == "shutdown", row
    assert row["reason"] == ("gateway gw-a went silent during the call; WhatsApp side ended "
                             "with terminate on take-over by gw-b"), row
    assert any("taking over their calls" in line for line in gw_b.output), gw_b.output

    # A new call reaches the survivor, lands in Asterisk under gw-b and echoes.
    fresh = await sim.place_call(from_wa_id="15550008882", phone_number_id=pnid,
                                 display_phone_number=display)
    await asyncio.wait_for(fresh.accepted.wait(), 20)
    await asyncio.wait_for(fresh.media_connected.wait(), 20)
    (new_channel,) = await until(lambda: pair.channels("gw-b"), "gw-b's channel up")
    assert await echoes(fresh)
    await fresh.hangup()
    await until(lambda: _gone(pair, new_channel), "gw-b's channel hung up")
    row = await until(lambda: _closed(pg_url, fresh.call_id), "the new call's record closed")
    assert row["owner"] == "gw-b" and row["outcome"] == "answered", row
    assert row["hangup_side"] == "whatsapp", row


async def _gone(pair: Pair, channel: str) -> bool:
    return channel not in {c.get("Uniqueid") for c in await pair.ami.core_show_channels()}


async def _answered(pg_url: str, wacid: str) -> dict | None:
    """The live call's row once its answer is saved (write-behind: a moment after)."""
    rows = await asyncio.to_thread(
        stored, pg_url, "SELECT owner, outcome FROM calls "
        "WHERE wacid = %s AND answered_at IS NOT NULL", wacid)
    return rows[0] if rows else None


async def _closed(pg_url: str, wacid: str) -> dict | None:
    rows = await asyncio.to_thread(
        stored, pg_url, "SELECT owner, outcome, end_reason, reason, hangup_side FROM calls "
        "WHERE wacid = %s AND outcome <> 'active'", wacid)
    return rows[0] if rows else None
