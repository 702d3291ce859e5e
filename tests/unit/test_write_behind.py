"""WriteBehind: a write the disk refuses is kept, in order, and written once the disk is back;
and so does the call store on a real database that refuses writes (SQLite and PostgreSQL)."""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from gateway.calls.record import CallRecord, Direction
from gateway.store import CallStore
from gateway.store.postgres import PostgresBackend
from gateway.write_behind import WriteBehind
from tests.pg import LocalPostgres


class FlakyDisk:
    """An in-memory stand-in for the database: refuses writes while ``full``."""

    def __init__(self) -> None:
        self.full = False
        self.rows: list[tuple[str, int]] = []

    def op(self, key: str, value: int):
        async def write() -> None:
            if self.full:
                raise sqlite3.OperationalError("database or disk is full")
            self.rows.append((key, value))
        return write


async def test_writes_go_straight_through_while_the_disk_takes_them():
    disk, errors = FlakyDisk(), []
    writes = WriteBehind("test", on_error=lambda: errors.append(1))
    await writes.write("a", disk.op("a", 1))
    assert disk.rows == [("a", 1)] and writes.pending == 0 and errors == []


async def test_refused_writes_are_kept_in_order_and_written_when_the_disk_is_back():
    disk, pending = FlakyDisk(), []
    writes = WriteBehind("test", on_pending=pending.append, retry_first_s=0.01,
                         retry_max_s=0.02)
    disk.full = True
    await writes.write("a", disk.op("a", 1))  # does not raise
    await writes.write("b", disk.op("b", 1))
    writes.write_soon("a", disk.op("a", 2))  # the newer row of "a" replaces the kept one
    assert writes.pending == 2 and writes.errors >= 1 and writes.waiting.is_set()
    disk.full = False
    await writes.drained.wait()
    assert disk.rows == [("a", 2), ("b", 1)]
    assert pending[-1] == 0


async def test_close_writes_what_it_can_and_reports_what_it_cannot():
    disk = FlakyDisk()
    writes = WriteBehind("test", retry_first_s=10)
    disk.full = True
    await writes.write("a", disk.op("a", 1))
    assert await writes.close(timeout_s=0.5) == 1
    disk.full = False
    writes2 = WriteBehind("test", retry_first_s=10)
    disk.full = True
    await writes2.write("b", disk.op("b", 1))
    disk.full = False
    assert await writes2.close() == 0 and disk.rows == [("b", 1)]


# ---- a real database that refuses writes for a while, on both backends ------------------------

PNID = "106540352242922"


@contextlib.asynccontextmanager
async def sqlite_outage(tmp_path: Path) -> AsyncIterator[tuple[CallStore, Callable, Callable]]:
    """Another process holds the SQLite file's write lock (SQLITE_BUSY), then lets go."""
    store = await CallStore.open(tmp_path / "g.sqlite3")
    await store.backend.sql.run(lambda: store.backend.sql.conn.execute(
        "PRAGMA busy_timeout = 50"))
    other = sqlite3.connect(tmp_path / "g.sqlite3", isolation_level=None)
    try:
        yield (store, lambda: other.execute("BEGIN EXCLUSIVE"),
               lambda: other.execute("COMMIT"))
    finally:
        other.close()
        await store.close()


@contextlib.asynccontextmanager
async def postgres_outage(server: LocalPostgres) -> AsyncIterator[tuple[CallStore, Callable,
                                                                        Callable]]:
    """The PostgreSQL server drops the gateway's connections and refuses its logins (as during
    a failover), then takes them again."""
    with server.refusable_database() as (url, refuse, restore):
        backend = PostgresBackend(url, connect_timeout_s=1.0)
        await backend.open()
        store = CallStore(backend)
        try:
            yield store, refuse, restore
        finally:
            await store.close()


@pytest.mark.parametrize("backend", ["sqlite", pytest.param("postgres",
                                                            marks=pytest.mark.postgres)])
async def test_a_record_the_database_refuses_is_kept_and_written_once_it_is_back(
        backend: str, tmp_path: Path, request: pytest.FixtureRequest) -> None:
    outage = sqlite_outage(tmp_path) if backend == "sqlite" \
        else postgres_outage(request.getfixturevalue("postgres"))
    async with outage as (store, refuse, restore):
        store.writes.retry_first_s = store.writes.retry_max_s = 0.05
        record = CallRecord(wacid="wacid.kept", direction=Direction.INBOUND,
                            phone_number_id=PNID, from_number="15550002222",
                            to_number="15550001111", webhook_at=1000.0)
        refuse()
        await store.save(record)  # does not raise: the call goes on
        assert store.writes.pending == 1 and store.writes.errors >= 1
        ok, why = await store.check_writable()
        assert not ok and why
        # a new call does not wait long for a store that cannot answer (it is then admitted)
        loop = asyncio.get_running_loop()
        started = loop.time()
        with pytest.raises((TimeoutError, *store.backend.storage_errors)):
            await store.claim("wacid.new", deadline_s=0.5)
        assert loop.time() - started < 1.5
        restore()
        await asyncio.wait_for(store.writes.drained.wait(), 15)
        assert await store.get("wacid.kept") == record
        assert await store.check_writable() == (True, "")
