"""The call store in one SQLite file: the default, for one gateway on one box.

SQLite is blocking, so every statement runs in one dedicated worker thread
(gateway/sqlite_thread.py, a single-thread executor that also keeps writes in submission order)
and the event loop only awaits it. WAL mode lets ``calls list`` read while the gateway writes.

The file is versioned with ``PRAGMA user_version``: :data:`MIGRATIONS` lists the schema steps in
order and :meth:`SqliteBackend.open` applies the missing ones, each in one transaction.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

from gateway.calls.record import CallRecord
from gateway.sqlite_thread import SqliteThread
from gateway.store.backend import OWNER_SQL, ListQuery, StoreClosed, claim_sql, upsert_sql
from gateway.store.records import COLUMNS, CallMedia, row_to_record

MIGRATIONS: tuple[str, ...] = (
    # 1: call records
    """
    CREATE TABLE calls (
        wacid TEXT PRIMARY KEY,
        direction TEXT NOT NULL,
        phone_number_id TEXT NOT NULL,
        from_number TEXT NOT NULL DEFAULT '',
        to_number TEXT NOT NULL DEFAULT '',
        profile_name TEXT NOT NULL DEFAULT '',
        channel_id TEXT NOT NULL DEFAULT '',
        channel TEXT NOT NULL DEFAULT '',
        context TEXT NOT NULL DEFAULT '',
        codec TEXT NOT NULL DEFAULT '',
        webhook_at REAL NOT NULL,
        answered_at REAL,
        ended_at REAL,
        outcome TEXT NOT NULL,
        reason TEXT NOT NULL DEFAULT '',
        hangup_side TEXT,
        q850_cause INTEGER,
        meta_error_code INTEGER,
        meta_error_text TEXT NOT NULL DEFAULT '',
        packets_in INTEGER NOT NULL DEFAULT 0,
        packets_out INTEGER NOT NULL DEFAULT 0,
        packets_lost INTEGER NOT NULL DEFAULT 0,
        jitter_seconds REAL,
        rtt_seconds REAL,
        dtmf_in INTEGER NOT NULL DEFAULT 0,
        dtmf_out INTEGER NOT NULL DEFAULT 0
    );
    CREATE INDEX calls_webhook_at ON calls (webhook_at);
    CREATE INDEX calls_outcome ON calls (outcome);
    CREATE INDEX calls_channel_id ON calls (channel_id);
    CREATE TABLE write_probe (id INTEGER PRIMARY KEY CHECK (id = 1), at REAL NOT NULL);
    """,
    # 2: why a call ended, in a few bounded words (calls.record.EndReason)
    """
    ALTER TABLE calls ADD COLUMN end_reason TEXT
    """,
    # 3: who the WhatsApp user is when there is no number: BSUID and username
    # (docs/meta-2026-identity.md §1)
    """
    ALTER TABLE calls ADD COLUMN user_id TEXT NOT NULL DEFAULT '';
    ALTER TABLE calls ADD COLUMN username TEXT NOT NULL DEFAULT '';
    CREATE INDEX calls_user_id ON calls (user_id)
    """,
    # 4: Meta's media of a call, linked by wacid: the voicemail the caller left, the call's
    # recording and transcript (docs/meta-2026-settings-events.md §2, §4, §5). A table of its own,
    # not columns on calls: a call has none or several, each arrives after the call's record was
    # last written, and a call record upsert must not clobber them.
    """
    CREATE TABLE call_media (
        wacid TEXT NOT NULL,
        kind TEXT NOT NULL,
        media_id TEXT NOT NULL,
        mime_type TEXT NOT NULL DEFAULT '',
        sha256 TEXT NOT NULL DEFAULT '',
        path TEXT,
        error TEXT NOT NULL DEFAULT '',
        received_at REAL NOT NULL,
        PRIMARY KEY (wacid, kind, media_id)
    )
    """,
    # 5: several gateways, one store (docs/scaling.md): which instance runs each call, who
    # claimed each inbound call id, the tombstones of ended or never-started calls, and when
    # each instance was last seen alive
    """
    ALTER TABLE calls ADD COLUMN owner TEXT NOT NULL DEFAULT '';
    CREATE INDEX calls_owner_outcome ON calls (owner, outcome);
    CREATE TABLE call_claims (
        wacid TEXT PRIMARY KEY,
        owner TEXT NOT NULL,
        claimed_at REAL NOT NULL
    );
    CREATE TABLE call_tombstones (wacid TEXT PRIMARY KEY, until REAL NOT NULL);
    CREATE INDEX call_tombstones_until ON call_tombstones (until);
    CREATE TABLE gateway_instances (instance_id TEXT PRIMARY KEY, last_seen REAL NOT NULL)
    """,
)

SAVE_MEDIA = ("INSERT INTO call_media (wacid, kind, media_id, mime_type, sha256, path, error, "
              "received_at) VALUES ({m}, {m}, {m}, {m}, {m}, {m}, {m}, {m}) "
              "ON CONFLICT (wacid, kind, media_id) "
              "DO UPDATE SET path = COALESCE(excluded.path, call_media.path), "
              "error = excluded.error")
MEDIA_FOR = ("SELECT wacid, kind, media_id, mime_type, sha256, path, error, received_at "
             "FROM call_media WHERE wacid = {m} ORDER BY received_at, kind")
HEARTBEAT = ("INSERT INTO gateway_instances (instance_id, last_seen) VALUES ({m}, {m}) "
             "ON CONFLICT (instance_id) DO UPDATE SET last_seen = excluded.last_seen")
"""SQL both backends run, with ``{m}`` for the dialect's placeholder."""


def media_args(m: CallMedia) -> tuple:
    return (m.wacid, m.kind, m.media_id, m.mime_type, m.sha256, m.path, m.error, m.received_at)


class SqliteBackend:
    """Call records in one SQLite file; every method runs its SQL on the store thread."""

    shared = False
    storage_errors: tuple[type[BaseException], ...] = (sqlite3.OperationalError, OSError)
    """SQLITE_FULL, SQLITE_IOERR, SQLITE_BUSY, ENOSPC: the disk cannot take it now."""
    schema_version = len(MIGRATIONS)

    def __init__(self, path: str | Path):
        self.where = str(path)
        self.sql = SqliteThread(path, "call-store", StoreClosed)

    async def open(self) -> None:
        """Open (creating the file and its folder if needed) and bring the schema up to date."""
        await self.sql.open(self._migrate)

    async def close(self) -> None:
        await self.sql.close()

    def _migrate(self, db: sqlite3.Connection) -> None:
        version = db.execute("PRAGMA user_version").fetchone()[0]
        if version > len(MIGRATIONS):
            raise RuntimeError(f"{self.where}: schema version {version} is newer than this "
                               f"gateway knows ({len(MIGRATIONS)}); upgrade the gateway")
        for number, script in enumerate(MIGRATIONS[version:], start=version + 1):
            db.executescript(f"BEGIN; {script}; PRAGMA user_version = {number}; COMMIT;")

    @property
    def _db(self) -> sqlite3.Connection:
        return self.sql.conn

    async def save_row(self, row: tuple) -> None:
        await self.sql.run(lambda: self._db.execute(upsert_sql("?"), row))

    async def probe(self, at: float) -> None:
        await self.sql.run(lambda: self._db.execute(
            "INSERT INTO write_probe (id, at) VALUES (1, ?) "
            "ON CONFLICT (id) DO UPDATE SET at = excluded.at", (at,)))

    async def save_media(self, media: CallMedia) -> None:
        await self.sql.run(lambda: self._db.execute(SAVE_MEDIA.format(m="?"),
                                                    media_args(media)))

    async def media_for(self, wacid: str) -> list[CallMedia]:
        def run() -> list[CallMedia]:
            rows = self._db.execute(MEDIA_FOR.format(m="?"), (wacid,)).fetchall()
            return [CallMedia(**{k: row[k] for k in row.keys()}) for row in rows]
        return await self.sql.run(run)

    async def knows(self, wacid: str) -> bool:
        return await self.sql.run(lambda: self._db.execute(
            "SELECT 1 FROM calls WHERE wacid = ?", (wacid,)).fetchone() is not None)

    async def get(self, wacid: str) -> CallRecord | None:
        def run() -> CallRecord | None:
            row = self._db.execute(f"SELECT {', '.join(COLUMNS)} FROM calls WHERE wacid = ?",
                                   (wacid,)).fetchone()
            return row_to_record(row) if row else None
        return await self.sql.run(run)

    async def list(self, query: ListQuery) -> list[CallRecord]:
        sql, args = query.sql("?")
        return await self.sql.run(
            lambda: [row_to_record(row) for row in self._db.execute(sql, args)])

    async def claim(self, wacid: str, owner: str, at: float) -> bool:
        return await self.sql.run(lambda: self._db.execute(
            claim_sql("?"), (wacid, owner, at, wacid, wacid, at)).rowcount == 1)

    async def owner_of(self, wacid: str) -> str | None:
        def run() -> str | None:
            row = self._db.execute(OWNER_SQL.format(m="?"), (wacid,) * 3).fetchone()
            return row[0] if row else None
        return await self.sql.run(run)

    async def tombstone(self, wacid: str, until: float, now: float) -> None:
        def run() -> None:
            self._db.execute("DELETE FROM call_tombstones WHERE until < ?", (now,))
            self._db.execute("INSERT INTO call_tombstones (wacid, until) VALUES (?, ?) "
                             "ON CONFLICT (wacid) DO UPDATE SET until = excluded.until",
                             (wacid, until))
        await self.sql.run(run)

    async def heartbeat(self, instance_id: str, at: float) -> dict[str, float]:
        def run() -> dict[str, float]:
            self._db.execute(HEARTBEAT.format(m="?"), (instance_id, at))
            return {row[0]: row[1] for row in self._db.execute(
                "SELECT instance_id, last_seen FROM gateway_instances")}
        return await self.sql.run(run)

    async def adopt(self, gone: Sequence[str], owner: str) -> list[CallRecord]:
        def run() -> list[CallRecord]:
            marks = ", ".join("?" for _ in gone)
            where = f"outcome = 'active' AND owner IN ({marks})"
            self._db.execute("BEGIN IMMEDIATE")  # another process's adopt waits
            try:
                rows = self._db.execute(f"SELECT {', '.join(COLUMNS)} FROM calls WHERE {where}",
                                        list(gone)).fetchall()
                self._db.execute(f"UPDATE calls SET owner = ? WHERE {where}", [owner, *gone])
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            return [replace(row_to_record(row), owner=owner) for row in rows]
        return await self.sql.run(run) if gone else []
