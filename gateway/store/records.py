"""Call records in SQLite: one row per call, kept across restarts, exportable next to the CDR.

SQLite is blocking, so every statement runs in one dedicated worker thread (a single-thread
executor, which also keeps writes in submission order) and the event loop only awaits it. The
record is turned into a row in the caller's thread, so a call that keeps changing its
:class:`CallRecord` cannot race the writer.

The file is versioned with ``PRAGMA user_version``: :data:`MIGRATIONS` lists the schema steps in
order and :meth:`CallStore.open` applies the missing ones, so later features (the outbound
permission ledger) add their tables by appending a step. WAL mode lets ``calls list`` read while
the gateway writes.

Join with Asterisk's CDR: ``wa_call_id`` is the ``WA_CALL_ID`` channel variable and
``asterisk_uniqueid`` the channel's Uniqueid (the CDR ``uniqueid`` column).
"""

from __future__ import annotations

import asyncio
import csv
import logging
import re
import sqlite3
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from datetime import UTC, datetime, timedelta, tzinfo
from pathlib import Path
from typing import IO, Any, TypeVar

from gateway.calls.observer import CallObserver
from gateway.calls.record import CallRecord, Direction, EndReason, HangupSide, Outcome
from gateway.sqlite_thread import DatabaseClosed, SqliteThread
from gateway.write_behind import WriteBehind

T = TypeVar("T")
log = logging.getLogger(__name__)

ORPHAN_REASON = "gateway stopped during the call"
DEFAULT_LIMIT = 100
MAX_LIMIT = 100_000

# Every CallRecord field, in the order of the table's columns. test_store checks it against
# the dataclass, so a new field cannot be silently left out of the store.
COLUMNS = (
    "wacid", "direction", "phone_number_id", "from_number", "to_number", "profile_name",
    "channel_id", "channel", "context", "codec", "webhook_at", "answered_at", "ended_at",
    "outcome", "reason", "end_reason", "hangup_side", "q850_cause", "meta_error_code",
    "meta_error_text",
    "packets_in", "packets_out", "packets_lost", "jitter_seconds", "rtt_seconds",
    "dtmf_in", "dtmf_out", "user_id", "username",
)

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
)

# CSV columns: (header, how to get it from a record). Times as CDR writes them.
CSV_COLUMNS: tuple[tuple[str, Callable[[CallRecord, tzinfo], Any]], ...] = (
    ("wa_call_id", lambda r, tz: r.wacid),
    ("asterisk_uniqueid", lambda r, tz: r.channel_id),
    ("asterisk_channel", lambda r, tz: r.channel),
    ("direction", lambda r, tz: r.direction.value),
    ("phone_number_id", lambda r, tz: r.phone_number_id),
    ("from", lambda r, tz: r.from_number),
    ("to", lambda r, tz: r.to_number),
    ("profile_name", lambda r, tz: r.profile_name),
    ("user_id", lambda r, tz: r.user_id),
    ("username", lambda r, tz: r.username),
    ("context", lambda r, tz: r.context),
    ("webhook_time", lambda r, tz: _cdr_time(r.webhook_at, tz)),
    ("answer_time", lambda r, tz: _cdr_time(r.answered_at, tz)),
    ("end_time", lambda r, tz: _cdr_time(r.ended_at, tz)),
    ("duration_seconds", lambda r, tz: "" if r.duration_seconds is None
     else f"{r.duration_seconds:.3f}"),
    ("outcome", lambda r, tz: r.outcome.value),
    ("reason", lambda r, tz: r.reason),
    ("end_reason", lambda r, tz: r.end_reason.value if r.end_reason else ""),
    ("hangup_side", lambda r, tz: r.hangup_side.value if r.hangup_side else ""),
    ("q850_cause", lambda r, tz: _blank(r.q850_cause)),
    ("meta_error_code", lambda r, tz: _blank(r.meta_error_code)),
    ("meta_error_text", lambda r, tz: r.meta_error_text),
    ("codec", lambda r, tz: r.codec),
    ("packets_in", lambda r, tz: r.packets_in),
    ("packets_out", lambda r, tz: r.packets_out),
    ("packets_lost", lambda r, tz: r.packets_lost),
    ("jitter_ms", lambda r, tz: "" if r.jitter_seconds is None
     else f"{r.jitter_seconds * 1000:.1f}"),
    ("rtt_ms", lambda r, tz: "" if r.rtt_seconds is None else f"{r.rtt_seconds * 1000:.1f}"),
    ("dtmf_in", lambda r, tz: r.dtmf_in),
    ("dtmf_out", lambda r, tz: r.dtmf_out),
)


def _blank(value: object) -> object:
    return "" if value is None else value


def _cdr_time(at: float | None, tz: tzinfo) -> str:
    """Asterisk's CDR format, ``2026-01-01 12:00:00``, so both files sort and compare alike."""
    if at is None:
        return ""
    return datetime.fromtimestamp(at, tz).strftime("%Y-%m-%d %H:%M:%S")


def record_to_row(record: CallRecord) -> tuple:
    data = {f.name: getattr(record, f.name) for f in fields(record)}
    for key in ("direction", "outcome", "hangup_side", "end_reason"):
        if data[key] is not None:
            data[key] = str(data[key].value if hasattr(data[key], "value") else data[key])
    return tuple(data[c] for c in COLUMNS)


def row_to_record(row: sqlite3.Row) -> CallRecord:
    data = {c: row[c] for c in COLUMNS}
    data["direction"] = Direction(data["direction"])
    data["outcome"] = Outcome(data["outcome"])
    data["hangup_side"] = HangupSide(data["hangup_side"]) if data["hangup_side"] else None
    data["end_reason"] = EndReason(data["end_reason"]) if data["end_reason"] else None
    return CallRecord(**data)


_RELATIVE = re.compile(r"(\d+)\s*([smhdw])")
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}


def parse_time(text: str, now: float | None = None) -> float:
    """``--since``/``since=`` values: ``90m``, ``24h``, ``7d`` ago; a date ``2026-01-31``
    (UTC midnight); an ISO 8601 time (UTC when no offset is given); or a Unix timestamp."""
    text = text.strip()
    now = time.time() if now is None else now
    match = _RELATIVE.fullmatch(text)
    if match:
        return now - timedelta(**{_UNITS[match.group(2)]: int(match.group(1))}).total_seconds()
    try:
        return float(text)
    except ValueError:
        pass
    try:
        at = datetime.fromisoformat(text)
    except ValueError:
        raise ValueError(f"not a time: {text!r} (use 24h, 7d, 2026-01-31, "
                         f"2026-01-31T08:00:00+01:00 or a Unix timestamp)") from None
    if at.tzinfo is None:
        at = at.replace(tzinfo=UTC)
    return at.timestamp()


def filters_from_query(query: Mapping[str, str], now: float | None = None) -> dict[str, Any]:
    """Turn ``GET /v1/calls`` query parameters or CLI options (since, until, direction,
    outcome, phone_number_id, limit) into :meth:`CallStore.list` arguments.

    Raises ValueError with a message fit for an HTTP 400 body or a CLI error."""
    known = {"since", "until", "direction", "outcome", "phone_number_id", "limit"}
    unknown = sorted(set(query) - known)
    if unknown:
        raise ValueError(f"unknown filter {', '.join(unknown)}; use {', '.join(sorted(known))}")
    out: dict[str, Any] = {}
    for key in ("since", "until"):
        if query.get(key):
            out[key] = parse_time(query[key], now)
    if query.get("direction"):
        try:
            out["direction"] = Direction(query["direction"])
        except ValueError:
            raise ValueError(f"direction must be inbound or outbound, got "
                             f"{query['direction']!r}") from None
    if query.get("outcome"):
        try:
            out["outcome"] = Outcome(query["outcome"])
        except ValueError:
            raise ValueError(f"outcome must be one of {', '.join(o.value for o in Outcome)}, "
                             f"got {query['outcome']!r}") from None
    if query.get("phone_number_id"):
        out["phone_number_id"] = query["phone_number_id"]
    if query.get("limit"):
        text = query["limit"]
        if not text.isdigit() or not 1 <= int(text) <= MAX_LIMIT:
            raise ValueError(f"limit must be a whole number from 1 to {MAX_LIMIT}, got {text!r}")
        out["limit"] = int(text)
    return out


@dataclass
class CallMedia:
    """A file Meta holds for a call: ``kind`` voicemail, recording or transcription."""

    wacid: str
    kind: str
    media_id: str
    mime_type: str = ""
    sha256: str = ""
    path: str | None = None
    """Where it was downloaded (store.media_dir), or None: only the media id is known."""
    error: str = ""
    """Why the download failed, if it did."""
    received_at: float = field(default_factory=time.time)


class StoreClosed(DatabaseClosed):
    """The store was used after :meth:`CallStore.close` (or before open)."""


class CallStore:
    """Call records in one SQLite file; every method is a coroutine run on the store thread."""

    def __init__(self, path: str | Path):
        self.path = str(path)
        self._sql = SqliteThread(path, "call-store", StoreClosed)
        self.writes = WriteBehind(f"call store {self.path}")
        """Record writes the disk refused, kept and retried (a full disk never loses one)."""

    # ---- life ----------------------------------------------------------------------------

    @classmethod
    async def open(cls, path: str | Path) -> CallStore:
        """Open (creating the file and its folder if needed) and bring the schema up to date."""
        store = cls(path)
        await store._sql.open(store._migrate)
        return store

    async def close(self) -> None:
        """Write what is waiting (logging what the disk still refuses), then close the file.
        Safe to call twice."""
        await self.writes.close()
        await self._sql.close()

    @property
    def schema_version(self) -> int:
        return len(MIGRATIONS)

    def _migrate(self, db: sqlite3.Connection) -> None:
        version = db.execute("PRAGMA user_version").fetchone()[0]
        if version > len(MIGRATIONS):
            raise RuntimeError(f"{self.path}: schema version {version} is newer than this "
                               f"gateway knows ({len(MIGRATIONS)}); upgrade the gateway")
        for number, script in enumerate(MIGRATIONS[version:], start=version + 1):
            db.executescript(f"BEGIN; {script}; PRAGMA user_version = {number}; COMMIT;")

    async def _run(self, fn: Callable[..., T], *args: Any) -> T:
        return await self._sql.run(fn, *args)

    @property
    def _conn(self) -> sqlite3.Connection:
        return self._sql.conn

    # ---- writing -------------------------------------------------------------------------

    async def save(self, record: CallRecord) -> None:
        """Insert or update the record (by wacid). A disk that refuses the write does not
        raise: the row is kept and written when it can be (:class:`WriteBehind`)."""
        await self.writes.write(("call", record.wacid), _SaveRow(self, record_to_row(record)))

    def save_soon(self, record: CallRecord) -> None:
        """Queue a save without awaiting it (for synchronous callers such as observers).

        Saves still happen in call order; a failing disk delays them, never loses them."""
        self.writes.write_soon(("call", record.wacid), _SaveRow(self, record_to_row(record)))

    def _save_row(self, row: tuple) -> None:
        placeholders = ", ".join("?" for _ in COLUMNS)
        updates = ", ".join(f"{c} = excluded.{c}" for c in COLUMNS if c != "wacid")
        # A closed record is final: a replayed webhook (even after a restart) must never
        # reopen or overwrite it, so only a record still active is updated.
        self._conn.execute(
            f"INSERT INTO calls ({', '.join(COLUMNS)}) VALUES ({placeholders}) "
            f"ON CONFLICT (wacid) DO UPDATE SET {updates} "
            f"WHERE calls.outcome = '{Outcome.ACTIVE.value}'", row)

    async def close_orphans(self, now: float | None = None) -> int:
        """Close calls left ``active`` by a previous run as failed; returns how many."""
        at = time.time() if now is None else now
        return await self._run(self._close_orphans, at)

    def _close_orphans(self, at: float) -> int:
        cursor = self._conn.execute(
            "UPDATE calls SET outcome = ?, reason = ?, end_reason = ?, ended_at = ?, "
            "hangup_side = COALESCE(hangup_side, ?) WHERE outcome = ?",
            (Outcome.FAILED.value, ORPHAN_REASON, EndReason.SHUTDOWN.value, at,
             HangupSide.GATEWAY.value, Outcome.ACTIVE.value))
        return cursor.rowcount

    async def check_writable(self, deadline_s: float = 2.0) -> tuple[bool, str]:
        """Write a probe row: (True, "") or (False, why) for /readyz."""
        try:
            await asyncio.wait_for(self._run(self._probe), deadline_s)
        except TimeoutError:
            return False, f"database {self.path} did not answer within {deadline_s:g} s"
        except (sqlite3.Error, OSError, StoreClosed) as exc:
            return False, f"database {self.path} is not writable: {exc}"
        return True, ""

    def _probe(self) -> None:
        self._conn.execute("INSERT INTO write_probe (id, at) VALUES (1, ?) "
                           "ON CONFLICT (id) DO UPDATE SET at = excluded.at", (time.time(),))

    async def save_media(self, media: CallMedia) -> None:
        """Link a voicemail, recording or transcript to its call (by wacid)."""
        await self._run(self._save_media, media)

    def _save_media(self, m: CallMedia) -> None:
        self._conn.execute(
            "INSERT INTO call_media (wacid, kind, media_id, mime_type, sha256, path, error, "
            "received_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (wacid, kind, media_id) "
            "DO UPDATE SET path = COALESCE(excluded.path, path), error = excluded.error",
            (m.wacid, m.kind, m.media_id, m.mime_type, m.sha256, m.path, m.error,
             m.received_at))

    async def media_for(self, wacid: str) -> list[CallMedia]:
        """The call's media, oldest first."""
        return await self._run(self._media_for, wacid)

    def _media_for(self, wacid: str) -> list[CallMedia]:
        rows = self._conn.execute(
            "SELECT wacid, kind, media_id, mime_type, sha256, path, error, received_at "
            "FROM call_media WHERE wacid = ? ORDER BY received_at, kind", (wacid,)).fetchall()
        return [CallMedia(**{k: row[k] for k in row.keys()}) for row in rows]

    # ---- reading -------------------------------------------------------------------------

    async def knows(self, wacid: str) -> bool:
        """Is there a record for this call id (from this run or an earlier one)?"""
        return await self._run(self._knows, wacid)

    def _knows(self, wacid: str) -> bool:
        return self._conn.execute("SELECT 1 FROM calls WHERE wacid = ?",
                                  (wacid,)).fetchone() is not None

    async def get(self, wacid: str) -> CallRecord | None:
        return await self._run(self._get, wacid)

    def _get(self, wacid: str) -> CallRecord | None:
        row = self._conn.execute(
            f"SELECT {', '.join(COLUMNS)} FROM calls WHERE wacid = ?", (wacid,)).fetchone()
        return row_to_record(row) if row else None

    async def list(self, since: float | None = None, until: float | None = None,
                   direction: Direction | str | None = None,
                   outcome: Outcome | str | None = None,
                   phone_number_id: str | None = None,
                   limit: int | None = DEFAULT_LIMIT) -> list[CallRecord]:
        """Calls whose webhook arrived in [since, until), newest first; ``limit=None`` for all."""
        return await self._run(self._list, since, until, direction, outcome, phone_number_id,
                               limit, True)

    def _list(self, since: float | None, until: float | None, direction: Any, outcome: Any,
              phone_number_id: str | None, limit: int | None,
              newest_first: bool) -> list[CallRecord]:
        where, args = [], []
        for clause, value in (("webhook_at >= ?", since), ("webhook_at < ?", until),
                              ("direction = ?", direction), ("outcome = ?", outcome),
                              ("phone_number_id = ?", phone_number_id)):
            if value is not None:
                where.append(clause)
                args.append(str(value.value) if hasattr(value, "value") else value)
        sql = f"SELECT {', '.join(COLUMNS)} FROM calls"
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += f" ORDER BY webhook_at {'DESC' if newest_first else 'ASC'}, wacid"
        if limit is not None:
            sql += " LIMIT ?"
            args.append(int(limit))
        return [row_to_record(row) for row in self._conn.execute(sql, args)]

    async def export_csv(self, stream: IO[str], *, tz: tzinfo = UTC,
                         **filters: Any) -> int:
        """Write matching calls as CSV, oldest first, times in ``tz`` (CDR style); returns
        the number of rows. Filters as in :meth:`list` (no limit by default)."""
        filters.setdefault("limit", None)
        records = await self._run(
            self._list, filters.get("since"), filters.get("until"), filters.get("direction"),
            filters.get("outcome"), filters.get("phone_number_id"), filters["limit"], False)
        writer = csv.writer(stream)
        writer.writerow([name for name, _ in CSV_COLUMNS])
        for record in records:
            writer.writerow([get(record, tz) for _, get in CSV_COLUMNS])
        return len(records)


class _SaveRow:
    """One pending upsert of a call record (the row is taken when the save is asked for)."""

    def __init__(self, store: CallStore, row: tuple):
        self.store = store
        self.row = row

    async def __call__(self) -> None:
        await self.store._run(self.store._save_row, self.row)

    def describe(self) -> str:
        return "call record " + ", ".join(f"{c}={v!r}" for c, v in zip(COLUMNS, self.row,
                                                                          strict=True)
                                          if v not in (None, "", 0))


class StoreObserver(CallObserver):
    """Saves the record when a call is admitted, rejected and ended (one row per call)."""

    def __init__(self, store: CallStore):
        self.store = store

    def call_admitted(self, record: CallRecord) -> None:
        self.store.save_soon(record)

    def call_rejected(self, record: CallRecord) -> None:
        self.store.save_soon(record)

    def call_ended(self, record: CallRecord) -> None:
        self.store.save_soon(record)
