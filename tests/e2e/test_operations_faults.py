"""Operational faults against the real Asterisk and the simulator (issue 8): a full disk, Asterisk
gone for longer than the grace, a slow ``accept``, and the service being stopped or reloaded."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from gateway.app import Gateway
from gateway.calls.record import Outcome
from gateway.media import aiortc_hooks
from gateway.simulator.cloud_api import CloudApiSimulator

from .conftest import ACCESS_TOKEN, APP_SECRET, NUMBERS, make_config, number_for

pytestmark = pytest.mark.asterisk


@contextlib.asynccontextmanager
async def gateway_with(ami_port: int, store_path: Path,
                       **overrides) -> AsyncIterator[tuple[CloudApiSimulator, Gateway]]:
    """The simulator and an in-process gateway with config ``overrides`` (as make_config)."""
    aiortc_hooks.install()
    aiortc_hooks.set_host_addresses(["127.0.0.1", "::1"])
    sim = CloudApiSimulator(app_secret=APP_SECRET, access_token=ACCESS_TOKEN)
    for pnid, (display, _context) in NUMBERS.items():
        sim.numbers[pnid] = display
    await sim.start()
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
    while gw.calls._tasks:
        await asyncio.wait(set(gw.calls._tasks), timeout=10)


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
