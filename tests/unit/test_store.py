"""CallStore: one row per call, kept across restarts, exported next to Asterisk's CDR."""

from __future__ import annotations

import csv
import io
import sqlite3
import threading
from dataclasses import fields
from pathlib import Path

import pytest

from gateway.calls.record import CallRecord, Direction, HangupSide, Outcome
from gateway.store import (
    COLUMNS,
    MIGRATIONS,
    ORPHAN_REASON,
    CallStore,
    StoreClosed,
    filters_from_query,
    parse_time,
)

PNID = "106540352242922"


def record(wacid: str, at: float, **kw: object) -> CallRecord:
    base = dict(wacid=wacid, direction=Direction.INBOUND, phone_number_id=PNID,
                from_number="15550002222", to_number="15550001111", webhook_at=at)
    base.update(kw)
    return CallRecord(**base)  # type: ignore[arg-type]


@pytest.fixture
async def store(tmp_path: Path):
    s = await CallStore.open(tmp_path / "var" / "gateway.sqlite3")
    yield s
    await s.close()


def test_every_record_field_has_a_column() -> None:
    assert tuple(f.name for f in fields(CallRecord)) == COLUMNS


async def test_save_is_an_upsert_and_get_round_trips(store: CallStore) -> None:
    r = record("wacid.1", 1000.0, channel_id="wa-1", codec="g722")
    await store.save(r)
    r.answered_at, r.ended_at = 1001.0, 1031.5
    r.outcome, r.hangup_side, r.q850_cause = Outcome.ANSWERED, HangupSide.ASTERISK, 16
    r.meta_error_code, r.meta_error_text = 138021, "client received no media"
    r.jitter_seconds, r.dtmf_in = 0.0042, 4
    await store.save(r)
    got = await store.get("wacid.1")
    assert got == r
    assert got.duration_seconds == 30.5
    assert await store.get("wacid.none") is None
    assert len(await store.list()) == 1


async def test_sqlite_work_runs_off_the_event_loop_thread(store: CallStore) -> None:
    seen = []
    await store._run(lambda: seen.append(threading.current_thread().name))
    assert seen[0].startswith("call-store")
    assert seen[0] != threading.current_thread().name


async def test_list_filters_newest_first(store: CallStore) -> None:
    await store.save(record("wacid.a", 100.0, outcome=Outcome.ANSWERED))
    await store.save(record("wacid.b", 200.0, outcome=Outcome.FAILED))
    await store.save(record("wacid.c", 300.0, direction=Direction.OUTBOUND,
                            outcome=Outcome.ANSWERED, phone_number_id="42"))
    assert [r.wacid for r in await store.list()] == ["wacid.c", "wacid.b", "wacid.a"]
    assert [r.wacid for r in await store.list(since=150, until=300)] == ["wacid.b"]
    assert [r.wacid for r in await store.list(outcome=Outcome.ANSWERED,
                                              direction="inbound")] == ["wacid.a"]
    assert [r.wacid for r in await store.list(phone_number_id="42")] == ["wacid.c"]
    assert [r.wacid for r in await store.list(limit=1)] == ["wacid.c"]


async def test_a_call_running_when_the_gateway_stopped_is_closed_as_failed(
        tmp_path: Path) -> None:
    path = tmp_path / "gateway.sqlite3"
    first = await CallStore.open(path)
    await first.save(record("wacid.live", 1000.0, channel_id="wa-7"))
    await first.save(record("wacid.done", 900.0, outcome=Outcome.ANSWERED, ended_at=950.0))
    await first.close()  # the gateway stops; the call never ended

    second = await CallStore.open(path)
    try:
        assert await second.close_orphans(now=2000.0) == 1
        orphan = await second.get("wacid.live")
        assert orphan.outcome is Outcome.FAILED
        assert orphan.reason == ORPHAN_REASON
        assert orphan.ended_at == 2000.0
        assert orphan.hangup_side is HangupSide.GATEWAY
        assert (await second.get("wacid.done")).outcome is Outcome.ANSWERED
        assert await second.close_orphans(now=3000.0) == 0
    finally:
        await second.close()


async def test_schema_is_versioned_and_wal(tmp_path: Path) -> None:
    path = tmp_path / "g.sqlite3"
    await (await CallStore.open(path)).close()
    db = sqlite3.connect(path)
    assert db.execute("PRAGMA user_version").fetchone()[0] == len(MIGRATIONS)
    assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    db.execute(f"PRAGMA user_version = {len(MIGRATIONS) + 1}")
    db.close()
    with pytest.raises(RuntimeError, match="newer than this gateway"):
        await CallStore.open(path)


async def test_export_csv_joins_with_the_cdr(store: CallStore) -> None:
    await store.save(record("wacid.2", 1767225600.0, channel_id="wa-2",
                            channel="UnicastRTP/127.0.0.1:40000-0x1", answered_at=1767225602.0,
                            ended_at=1767225662.0, outcome=Outcome.ANSWERED,
                            hangup_side=HangupSide.WHATSAPP, q850_cause=16, rtt_seconds=0.12))
    await store.save(record("wacid.1", 1767225500.0, outcome=Outcome.REJECTED,
                            reason="unknown, with comma"))
    out = io.StringIO()
    assert await store.export_csv(out) == 2
    rows = list(csv.DictReader(io.StringIO(out.getvalue())))
    assert [r["wa_call_id"] for r in rows] == ["wacid.1", "wacid.2"]  # oldest first
    row = rows[1]
    assert row["asterisk_uniqueid"] == "wa-2"
    assert row["webhook_time"] == "2026-01-01 00:00:00"
    assert row["answer_time"] == "2026-01-01 00:00:02"
    assert row["duration_seconds"] == "60.000"
    assert row["q850_cause"] == "16" and row["meta_error_code"] == ""
    assert row["rtt_ms"] == "120.0"
    assert rows[0]["reason"] == "unknown, with comma"
    filtered = io.StringIO()
    assert await store.export_csv(filtered, outcome="answered") == 1


async def test_check_writable(tmp_path: Path) -> None:
    s = await CallStore.open(tmp_path / "g.sqlite3")
    assert await s.check_writable() == (True, "")
    await s.close()
    ok, why = await s.check_writable()
    assert not ok and "closed" in why
    with pytest.raises(StoreClosed):
        await s.save(record("wacid.x", 1.0))


def test_query_filters() -> None:
    assert parse_time("2h", now=10_000.0) == 10_000.0 - 7200
    assert parse_time("2026-01-01") == 1767225600.0
    assert parse_time("2026-01-01T01:00:00+01:00") == 1767225600.0
    assert parse_time("1767225600") == 1767225600.0
    with pytest.raises(ValueError, match="not a time"):
        parse_time("yesterday")
    got = filters_from_query({"since": "1d", "direction": "outbound", "outcome": "failed",
                              "limit": "10"}, now=86_400.0)
    assert got == {"since": 0.0, "direction": Direction.OUTBOUND, "outcome": Outcome.FAILED,
                   "limit": 10}
    with pytest.raises(ValueError, match="direction must be"):
        filters_from_query({"direction": "sideways"})
    with pytest.raises(ValueError, match="unknown filter"):
        filters_from_query({"sinse": "1d"})
