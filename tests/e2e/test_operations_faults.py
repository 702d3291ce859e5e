"""Operational faults against the real Asterisk and the simulator (issue 8): a full disk, Asterisk
gone for longer than the grace, a slow ``accept``, and the service being stopped or reloaded."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import numpy as np
import pytest
import yaml

from gateway.app import Gateway
from gateway.calls.record import Outcome
from gateway.media import aiortc_hooks
from gateway.sandbox.local_asterisk import LocalAsterisk
from gateway.simulator.cloud_api import CloudApiSimulator
from gateway.store import CallStore
from tests.ports import free_tcp_port, instance_name, udp_range

from .conftest import ACCESS_TOKEN, APP_SECRET, NUMBERS, make_config, number_for, start_simulator
from .test_operations import process_config, rtp_channel_prefix, start_gateway_process

pytestmark = pytest.mark.asterisk


@contextlib.asynccontextmanager
async def gateway_with(ami_port: int, store_path: Path,
                       **overrides) -> AsyncIterator[tuple[CloudApiSimulator, Gateway]]:
    """The simulator and an in-process gateway with config ``overrides`` (as make_config)."""
    aiortc_hooks.install()
    aiortc_hooks.set_host_addresses(["127.0.0.1", "::1"])
    sim = await start_simulator()
    gw = Gateway(make_config(sim.url, ami_port, store={"path": str(store_path)}, **overrides))
    try:
        await gw.start()
        sim.webhook_url = f"{gw.url}/webhook"
        yield sim, gw
    finally:
        await gw.stop()
        await sim.close()


async def settle(gw: Gateway) -> None:
    """Until the gateway's background call work (set-ups, teardowns) is done."""
    assert await gw.calls.settle(10)


async def place(sim: CloudApiSimulator, context: str, caller: str):
    pnid, display = number_for(context)
    return await sim.place_call(from_wa_id=caller, phone_number_id=pnid,
                                display_phone_number=display)


# ---- 3: disk full ------------------------------------------------------------------------------


@contextlib.contextmanager
def small_filesystem(path: Path, size: str = "2m"):
    """A tmpfs of its own at ``path`` (root only): a disk that really fills up."""
    path.mkdir(parents=True, exist_ok=True)
    try:
        subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                       check=True, capture_output=True)
    except (OSError, subprocess.CalledProcessError) as exc:
        pytest.skip(f"cannot mount a tmpfs here (needs root): {exc}")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def fill(path: Path) -> Path:
    """Write zeros into ``path`` until the filesystem says ENOSPC; returns the filler."""
    filler = path / "filler"
    chunk = bytes(16384)
    with open(filler, "wb", buffering=0) as f:
        while True:
            try:
                f.write(chunk)
            except OSError as exc:
                assert exc.errno == errno.ENOSPC, exc
                break
        # The last partial chunk: fill to the very last byte.
        for size in (4096, 512, 1):
            while True:
                try:
                    f.write(bytes(size))
                except OSError:
                    break
    return filler


async def test_a_full_disk_neither_ends_the_call_nor_loses_its_record(asterisk, tmp_path):
    """The store's disk fills before a call: the call is answered and stays up (the ledger
    write after accept and the record writes fail), the failures are counted, and once space
    is freed the record is written, with the right outcome when the call ends."""
    with small_filesystem(tmp_path / "disk") as disk:
        async with gateway_with(asterisk.ami_port, disk / "gateway.sqlite3") as (sim, gw):
            filler = fill(disk)
            call = await place(sim, "test-wait", "15550007001")
            await asyncio.wait_for(call.accepted.wait(), 15)
            await asyncio.wait_for(gw.ledger.writes.waiting.wait(), 10)  # after accept
            # The disk refused the record and the ledger's "a user call connected" write.
            assert gw.store.writes.errors >= 1 and gw.store.writes.pending == 1
            assert gw.ledger.writes.errors >= 1 and gw.ledger.writes.pending == 1
            text = gw.metrics.exposition().decode()
            assert 'whatsapp_gateway_store_pending_records{store="calls"} 1.0' in text
            assert 'whatsapp_gateway_store_errors_total{store="permissions"}' in text
            assert await gw.store.get(call.call_id) is None  # not on disk yet

            filler.unlink()  # space is back: the kept writes go to disk
            await asyncio.wait_for(gw.store.writes.drained.wait(), 30)
            await asyncio.wait_for(gw.ledger.writes.drained.wait(), 30)
            record = await gw.store.get(call.call_id)
            assert record is not None and record.outcome == Outcome.ACTIVE
            assert call.call_id in gw.calls.calls  # the call went on all along

            await call.hangup()
            await settle(gw)
            await asyncio.wait_for(gw.store.writes.drained.wait(), 10)
            record = await gw.store.get(call.call_id)
            assert record.outcome == Outcome.ANSWERED and record.hangup_side == "whatsapp"
            assert record.end_reason == "normal"


# ---- 8: a slow accept must not clip the first prompt -------------------------------------------

PROMPT_NUMBER = ("100000000000021", "15550000021")
PROMPT_TONES = (500, 700, 900, 1100, 1300, 1500, 1700, 1900)
SEGMENT_FRAMES = 5  # each tone lasts 100 ms
PROMPT_SEGMENTS = 30  # 3 s, no quiet frame anywhere: nothing in it may be skipped


def prompt_tones() -> list[int]:
    """The prompt's tone per segment: consecutive segments always differ."""
    return [PROMPT_TONES[(i * 3) % len(PROMPT_TONES)] for i in range(PROMPT_SEGMENTS)]


def write_prompt(asterisk) -> list[int]:
    """The prompt file the test-prompt context plays; returns its tone for every 20 ms frame."""
    rate, frame = 16000, 320
    t = np.arange(SEGMENT_FRAMES * frame) / rate
    pcm = np.concatenate([0.25 * np.sin(2 * np.pi * f * t) for f in prompt_tones()])
    (asterisk.instance_dir / "lib" / "wa-test-prompt.sln16").write_bytes(
        (pcm * 32767).astype("<i2").tobytes())
    return [f for f in prompt_tones() for _ in range(SEGMENT_FRAMES)]


def frame_tone(pcm: bytes) -> int | None:
    """The prompt tone a 20 ms frame carries (None: silence, 0: something else)."""
    x = np.frombuffer(pcm, dtype="<i2").astype(float)
    if x.size == 0 or np.sqrt(np.mean(x * x)) < 100:
        return None
    spectrum = np.abs(np.fft.rfft(x * np.hanning(x.size)))
    peak = float(np.argmax(spectrum)) * 16000 / x.size
    nearest = min(PROMPT_TONES, key=lambda f: abs(f - peak))
    return nearest if abs(nearest - peak) <= 60 else 0


@pytest.mark.parametrize("latency", [0.3, 0.7, 1.5])
async def test_a_slow_accept_delays_the_first_prompt_but_plays_it_whole(asterisk, tmp_path,
                                                                        latency):
    """Meta answers accept after ``latency`` s while the dialplan already plays its prompt:
    the caller hears every frame of it, in order, none dropped, none cut."""
    expected = write_prompt(asterisk)
    numbers = [{"phone_number_id": PROMPT_NUMBER[0], "display_number": PROMPT_NUMBER[1],
                "context": "test-prompt"}]
    async with gateway_with(asterisk.ami_port, tmp_path / "g.sqlite3",
                            numbers=numbers) as (sim, gw):
        sim.numbers[PROMPT_NUMBER[0]] = PROMPT_NUMBER[1]
        sim.timings.accept_latency_s = latency
        call = await sim.place_call(from_wa_id="15550007008", phone_number_id=PROMPT_NUMBER[0],
                                    display_phone_number=PROMPT_NUMBER[1])
        await asyncio.wait_for(call.accepted.wait(), 15)
        await asyncio.wait_for(call.phone.wait_audio(), 10)
        phone = call.phone
        loop = asyncio.get_running_loop()
        deadline = loop.time() + latency + 10
        while True:  # until the whole prompt (and a little after it) has been heard
            tones = [frame_tone(pcm) for _, pcm in phone.received]
            first = next(i for i, tone in enumerate(tones) if tone is not None)
            if len(tones) >= first + len(expected) + 10 or loop.time() > deadline:
                break
            await asyncio.sleep(0.1)
        await call.hangup()

    heard = tones[first:first + len(expected) + 10]
    # Frame by frame: each heard frame carries the prompt's tone at that frame (a frame the
    # codecs' delay puts across a segment boundary may carry its neighbour's).
    mismatches = [(i, heard[i], expected[max(0, i - 1):i + 2])
                  for i in range(len(expected)) if heard[i] not in expected[max(0, i - 1):i + 2]]
    assert mismatches == [], f"accept after {latency} s: frames differ: {mismatches[:10]}"
    sounding = sum(1 for tone in heard if tone is not None)  # the codecs ring on a frame or two
    assert len(expected) - 1 <= sounding <= len(expected) + 3, \
        f"accept after {latency} s: heard {sounding} frames of a {len(expected)}-frame prompt"


# ---- 7: Asterisk gone for longer than the grace ------------------------------------------------


async def test_calls_end_toward_whatsapp_when_asterisk_stays_away_past_the_grace(tmp_path):
    """Asterisk dies (SIGKILL: no Hangup event) and does not come back: after
    asterisk.ami_down_grace the WhatsApp call is terminated, with the reason recorded."""
    ast = LocalAsterisk(instance_name("amigrace"), ami_port=free_tcp_port(),
                        overlay_dir=Path(__file__).parent / "asterisk-overlay")
    await ast.start()
    try:
        async with gateway_with(ast.ami_port, tmp_path / "g.sqlite3",
                                asterisk={"ami_down_grace": 1}) as (sim, gw):
            changes: asyncio.Queue[bool] = asyncio.Queue()
            gw.ami.on_connection_change.append(changes.put_nowait)
            call = await place(sim, "test-wait", "15550007007")
            await asyncio.wait_for(call.accepted.wait(), 15)
            await ast.crash()  # no goodbye: no Hangup event reaches the gateway
            assert await asyncio.wait_for(changes.get(), 20) is False
            lost_at = asyncio.get_running_loop().time()
            await asyncio.wait_for(call.ended.wait(), 15)
            assert asyncio.get_running_loop().time() - lost_at >= 0.9  # not before the grace
            assert call.ended_by == "business"
            assert len(sim.requests_for(call.call_id, "terminate")) == 1
            await settle(gw)
            await asyncio.wait_for(gw.store.writes.drained.wait(), 10)
            record = await gw.store.get(call.call_id)
            assert record.end_reason == "asterisk_down" and "unreachable" in record.reason
    finally:
        await ast.stop()


# ---- 9: SIGTERM drains, SIGHUP reloads ---------------------------------------------------------


class GatewayProcess:
    """``whatsapp-gateway serve`` as its own process, its log read line by line."""

    def __init__(self, proc: asyncio.subprocess.Process, config_path: str):
        self.proc = proc
        self.config_path = config_path
        self.lines: list[str] = []

    async def wait_log(self, text: str, timeout: float = 15.0) -> str:
        """The next log line containing ``text`` (lines before it are kept in ``lines``)."""
        async def find() -> str:
            while True:
                raw = await self.proc.stdout.readline()
                if not raw:
                    raise AssertionError(f"gateway exited before logging {text!r}:\n" +
                                         "\n".join(self.lines[-20:]))
                line = raw.decode(errors="replace").rstrip()
                self.lines.append(line)
                if text in line:
                    return line
        return await asyncio.wait_for(find(), timeout)

    async def drain_log(self) -> None:
        """Keep reading the log so the pipe never fills (the process would block)."""
        with contextlib.suppress(Exception):
            while raw := await self.proc.stdout.readline():
                self.lines.append(raw.decode(errors="replace").rstrip())


@contextlib.asynccontextmanager
async def gateway_process(asterisk, tmp_path, rtp_offset: int, **extra):
    """The simulator and a gateway process (config in tmp_path/gateway.yaml, ``extra`` keys
    merged in); yields (sim, gateway process, config dict)."""
    sim = CloudApiSimulator(app_secret=APP_SECRET, access_token=ACCESS_TOKEN)
    for pnid, (display, _context) in NUMBERS.items():
        sim.numbers[pnid] = display
    sim.numbers[NEW_NUMBER[0]] = NEW_NUMBER[1]
    await sim.start()
    http_port = free_tcp_port()
    config, path = process_config(sim, asterisk, tmp_path, http_port,
                                  udp_range(rtp_offset, 100))
    config.update(extra)
    write_config(path, config)
    proc = await start_gateway_process(path)
    gw = GatewayProcess(proc, path)
    sim.webhook_url = f"http://127.0.0.1:{http_port}/webhook"
    try:
        yield sim, gw, config
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        for call in list(sim.calls.values()):
            await call.hangup()
        await sim.close()


NEW_NUMBER = ("100000000000031", "15550000031")


def write_config(path: str, config: dict) -> None:
    Path(path).write_text(yaml.safe_dump(config))


async def readyz(config: dict) -> tuple[int, dict]:
    url = f"http://{config['http']['listen']}/readyz"
    async with aiohttp.ClientSession() as session, session.get(url) as resp:
        return resp.status, await resp.json()


async def test_sigterm_drains_the_live_call_and_refuses_new_ones(asterisk, tmp_path):
    """SIGTERM with a call up: no new call is admitted (rejected, /readyz 503 draining), the
    live call goes on until its user hangs up, then the process exits by itself."""
    async with gateway_process(asterisk, tmp_path, 600,
                               service={"shutdown_grace": 60}) as (sim, gw, config):
        live = await place(sim, "test-wait", "15550007011")
        await asyncio.wait_for(live.accepted.wait(), 15)
        gw.proc.send_signal(signal.SIGTERM)
        await gw.wait_log("draining: no new calls; 1 call(s) in progress")
        status, body = await readyz(config)
        assert status == 503 and any("draining" in r for r in body["reasons"]), body

        refused = await place(sim, "test-echo", "15550007012")
        await asyncio.wait_for(refused.ended.wait(), 15)
        assert refused.ended_by == "business" and refused.accepted_at is None
        assert len(sim.requests_for(refused.call_id, "reject")) == 1

        assert not live.ended.is_set() and live.state == "accepted"  # still talking
        await live.hangup()
        await gw.wait_log("drain: every call has ended")
        assert await asyncio.wait_for(gw.proc.wait(), 15) == 0
    store = await CallStore.open(config["store"]["path"])
    try:
        record = await store.get(live.call_id)
        assert record.outcome == Outcome.ANSWERED and record.hangup_side == "whatsapp"
        rejected = await store.get(refused.call_id)
        assert rejected.outcome == Outcome.REJECTED and rejected.end_reason == "shutdown"
    finally:
        await store.close()


async def test_reload_with_a_new_number_leaves_the_live_call_alone(asterisk, tmp_path):
    """``whatsapp-gateway reload`` (SIGHUP through the pid file) after adding a number: the
    new number takes calls at once, the call in progress is not touched."""
    async with gateway_process(asterisk, tmp_path, 700) as (sim, gw, config):
        live = await place(sim, "test-wait", "15550007021")
        await asyncio.wait_for(live.accepted.wait(), 15)
        config["numbers"].append({"phone_number_id": NEW_NUMBER[0], "context": "test-echo"})
        write_config(gw.config_path, config)
        reload = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "gateway", "reload", "--config", gw.config_path,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
        out, _ = await reload.communicate()
        assert reload.returncode == 0, out
        line = await gw.wait_log("config reloaded")
        assert f"added {NEW_NUMBER[0]}" in line and "1 call(s) in progress untouched" in line

        new = await sim.place_call(from_wa_id="15550007022", phone_number_id=NEW_NUMBER[0],
                                   display_phone_number=NEW_NUMBER[1])
        await asyncio.wait_for(new.accepted.wait(), 15)
        await asyncio.wait_for(new.media_connected.wait(), 15)
        assert not live.ended.is_set() and live.state == "accepted"
        channels = await asterisk.cli("core show channels concise")
        assert channels.count(rtp_channel_prefix(config)) == 2, channels
        await new.hangup()
        await live.hangup()
        await gw.wait_log(f"event=ended wacid=\"{live.call_id}\"")


async def test_sighup_with_an_invalid_file_keeps_the_running_config(asterisk, tmp_path):
    async with gateway_process(asterisk, tmp_path, 800) as (sim, gw, config):
        broken = {**config, "numbers": [{**config["numbers"][0], "max_calls": "lots"}]}
        write_config(gw.config_path, broken)
        gw.proc.send_signal(signal.SIGHUP)
        line = await gw.wait_log("config reload refused")
        assert "the running config is kept" in line
        await gw.wait_log("numbers[0].max_calls: must be a whole number")
        # The old numbers still take calls (the broken file dropped all but the first).
        call = await place(sim, "test-echo", "15550007031")
        await asyncio.wait_for(call.accepted.wait(), 15)
        await call.hangup()
        assert gw.proc.returncode is None
