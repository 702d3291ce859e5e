"""WriteBehind: a write the disk refuses is kept, in order, and written once the disk is back."""

from __future__ import annotations

import sqlite3

from gateway.write_behind import WriteBehind


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
