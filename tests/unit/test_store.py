"""CallStore: one row per call, kept across restarts, exported next to Asterisk's CDR.

Every test that touches a database runs on both backends: an SQLite file, and (marked
``postgres``) a fresh database on the real PostgreSQL tests/pg.py starts."""

from __future__ import annotations

import asyncio
import threading
from dataclasses import fields
from pathlib import Path

import psycopg
import pytest

from gateway.calls.record import CallRecord, Direction, HangupSide, Outcome
from gateway.store import (
    COLUMNS,
    CallStore,
    StoreUnavailable,
)
from gateway.store.postgres import MIGRATIONS as PG_MIGRATIONS
from tests.pg import PASSWORD, LocalPostgres

PNID = "106540352242922"


def record(wacid: str, at: float, **kw: object) -> CallRecord:
    base = dict(wacid=wacid, direction=Direction.INBOUND, phone_number_id=PNID,
                from_number="15550002222", to_number="15550001111", webhook_at=at)
    base.update(kw)
    return CallRecord(**base)  # type: ignore[arg-type]


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def target(request: pytest.FixtureRequest, tmp_path: Path) -> str | Path:
    """Where a store lives: an SQLite file, or a PostgreSQL database of its own."""
    if request.param == "postgres":
        return request.getfixturevalue("pg_url")
    return tmp_path / "var" / "gateway.sqlite3"


@pytest.fixture
async def store(target: str | Path):
    s = await CallStore.open(target, owner="gw-a")
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


async def test_sqlite_work_runs_off_the_event_loop_thread(tmp_path: Path) -> None:
    store = await CallStore.open(tmp_path / "g.sqlite3")
    seen: list[str] = []
    await store.backend.sql.run(lambda: seen.append(threading.current_thread().name))
    await store.close()
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


async def test_a_call_running_when_the_gateway_stopped_is_left_open_for_the_next_run(
        target: str | Path) -> None:
    """The next run finds it (and ends it at Meta through the ending table,
    gateway/calls/orphans.py); a finished call is not among them."""
    first = await CallStore.open(target)
    await first.save(record("wacid.live", 1000.0, channel_id="wa-7"))
    await first.save(record("wacid.done", 900.0, outcome=Outcome.ANSWERED, ended_at=950.0))
    await first.close()  # the gateway stops; the call never ended

    second = await CallStore.open(target)
    try:
        assert [r.wacid for r in await second.left_open()] == ["wacid.live"]
        assert (await second.get("wacid.done")).outcome is Outcome.ANSWERED
    finally:
        await second.close()


async def test_each_gateway_closes_only_its_own_orphans_on_a_shared_store(
        target: str | Path) -> None:
    """gw-a restarts while gw-b still runs a call: on PostgreSQL gw-a must leave gw-b's record
    active (and close records older than instance ids); alone on an SQLite file, a gateway
    closes every left-open record (its id may have changed with the hostname)."""
    writer = await CallStore.open(target)
    await writer.save(record("wacid.a", 1.0, owner="gw-a"))
    await writer.save(record("wacid.b", 2.0, owner="gw-b"))
    await writer.save(record("wacid.old", 3.0))  # written before instance ids
    await writer.close()
    gw_a = await CallStore.open(target, owner="gw-a")
    try:
        left = {r.wacid for r in await gw_a.left_open()}
        if gw_a.backend.shared:
            assert left == {"wacid.a", "wacid.old"}
        else:
            assert left == {"wacid.a", "wacid.b", "wacid.old"}
    finally:
        await gw_a.close()


async def test_two_gateways_claiming_the_same_calls_at_once_get_each_exactly_once(
        target: str | Path) -> None:
    """A connect delivered twice, to two gateways at the same moment: one call, not two."""
    gw_a = await CallStore.open(target, owner="gw-a")
    gw_b = await CallStore.open(target, owner="gw-b")
    try:
        wacids = [f"wacid.race-{i}" for i in range(40)]
        won = await asyncio.gather(*(s.claim(w) for w in wacids for s in (gw_a, gw_b)))
        by_call = [won[i:i + 2] for i in range(0, len(won), 2)]
        assert all(sorted(pair) == [False, True] for pair in by_call), by_call
        assert not await gw_a.claim(wacids[0])  # and never again, by anyone
    finally:
        await gw_a.close()
        await gw_b.close()


async def test_a_record_or_a_tombstone_written_by_one_gateway_stops_the_other(
        target: str | Path) -> None:
    gw_a = await CallStore.open(target, owner="gw-a")
    gw_b = await CallStore.open(target, owner="gw-b")
    try:
        await gw_a.save(record("wacid.done", 1.0, outcome=Outcome.ANSWERED))
        gw_a.tombstone_soon("wacid.terminated-first")  # terminate overtook its connect
        gw_a.tombstone_soon("wacid.long-ago", seconds=-1.0)  # expired
        await gw_a.writes.drained.wait()
        assert not await gw_b.claim("wacid.done")
        assert not await gw_b.claim("wacid.terminated-first")
        assert await gw_b.claim("wacid.long-ago")
    finally:
        await gw_a.close()
        await gw_b.close()


async def test_a_gone_gateways_calls_are_taken_over_by_one_gateway_each(
        target: str | Path) -> None:
    dead = await CallStore.open(target, owner="gw-dead")
    for i in range(20):
        await dead.save(record(f"wacid.left-{i}", float(i), owner="gw-dead"))
    await dead.save(record("wacid.ended", 99.0, owner="gw-dead", outcome=Outcome.ANSWERED))
    await dead.close()
    gw_a = await CallStore.open(target, owner="gw-a")
    gw_b = await CallStore.open(target, owner="gw-b")
    try:
        by_a, by_b = await asyncio.gather(gw_a.adopt({"gw-dead"}), gw_b.adopt({"gw-dead"}))
        a_ids, b_ids = {r.wacid for r in by_a}, {r.wacid for r in by_b}
        assert not a_ids & b_ids and a_ids | b_ids == {f"wacid.left-{i}" for i in range(20)}
        assert {r.owner for r in by_a} <= {"gw-a"} and {r.owner for r in by_b} <= {"gw-b"}
        for r in by_a:
            assert (await gw_b.get(r.wacid)).owner == "gw-a"
        assert (await gw_a.get("wacid.ended")).owner == "gw-dead"  # closed: nobody's to end
        assert await gw_a.adopt({"gw-dead"}) == []
    finally:
        await gw_a.close()
        await gw_b.close()


async def test_heartbeats_of_every_gateway_on_the_store(target: str | Path) -> None:
    gw_a = await CallStore.open(target, owner="gw-a")
    gw_b = await CallStore.open(target, owner="gw-b")
    try:
        first = await gw_a.heartbeat()
        seen = await gw_b.heartbeat()
        assert set(seen) == {"gw-a", "gw-b"} and seen["gw-a"] == first["gw-a"]
        assert seen["gw-b"] >= seen["gw-a"]
    finally:
        await gw_a.close()
        await gw_b.close()


@pytest.mark.postgres
async def test_postgres_schema_is_versioned_and_migrations_are_idempotent(pg_url: str) -> None:
    first, second = await asyncio.gather(CallStore.open(pg_url), CallStore.open(pg_url))
    await first.close()
    await second.close()
    with psycopg.connect(pg_url, autocommit=True) as db:
        (version,) = db.execute("SELECT version FROM wa_schema_versions "
                                "WHERE component = 'calls'").fetchone()
        assert version == len(PG_MIGRATIONS)
        db.execute("UPDATE wa_schema_versions SET version = version + 1")
    with pytest.raises(RuntimeError, match="newer than this gateway"):
        await CallStore.open(pg_url)


@pytest.mark.postgres
async def test_postgres_password_from_the_environment_and_never_in_a_message(
        postgres: LocalPostgres, monkeypatch: pytest.MonkeyPatch) -> None:
    url = postgres.url(password=False)  # libpq takes PGPASSWORD, as psql does
    monkeypatch.setenv("PGPASSWORD", PASSWORD)
    store = await CallStore.open(url)
    assert await store.check_writable() == (True, "")
    await store.close()
    monkeypatch.delenv("PGPASSWORD")
    wrong = postgres.url().replace(PASSWORD, "not-the-password")
    with pytest.raises(StoreUnavailable, match=r"^store\.url: cannot use") as refused:
        await CallStore.open(wrong)
    assert "not-the-password" not in str(refused.value) and "***" in str(refused.value)
