"""What a call store backend does: the small typed seam between :class:`~gateway.store.CallStore`
(ordering, write-behind, the record's life) and one database.

Two backends: SQLite (gateway/store/sqlite.py, the one-box default) and PostgreSQL
(gateway/store/postgres.py, shared by several gateways, docs/scaling.md). Both keep the same
tables and answer the same questions; only the SQL dialect, the driver and what counts as "the
database cannot take this now" differ.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from gateway.calls.record import CallRecord
from gateway.errors import StorageError
from gateway.sqlite_thread import DatabaseClosed
from gateway.store.records import COLUMNS, CallMedia


class StoreClosed(DatabaseClosed):
    """The store was used after :meth:`CallStore.close` (or before open)."""


class StoreUnavailable(StorageError, RuntimeError):
    """The store cannot be opened (bad URL, server unreachable, driver missing): the message
    names the config key and never holds the password."""


@dataclass(frozen=True)
class ListQuery:
    """Which records :meth:`StoreBackend.list` returns: webhook time in [since, until)."""

    since: float | None = None
    until: float | None = None
    direction: Any = None
    outcome: Any = None
    phone_number_id: str | None = None
    owners: Sequence[str] | None = None
    """Only records of these gateway instances (None: every instance's)."""
    limit: int | None = 100
    newest_first: bool = True

    def sql(self, mark: str) -> tuple[str, list[Any]]:
        """``SELECT`` of the matching rows with ``mark`` as the parameter placeholder (``?``
        for SQLite, ``%s`` for psycopg); the same text otherwise for both."""
        where, args = [], []
        for clause, value in (("webhook_at >= {}", self.since), ("webhook_at < {}", self.until),
                              ("direction = {}", self.direction),
                              ("outcome = {}", self.outcome),
                              ("phone_number_id = {}", self.phone_number_id)):
            if value is not None:
                where.append(clause.format(mark))
                args.append(str(value.value) if hasattr(value, "value") else value)
        if self.owners is not None:
            where.append(f"owner IN ({', '.join(mark for _ in self.owners)})"
                         if self.owners else "FALSE")
            args.extend(self.owners)
        sql = f"SELECT {', '.join(COLUMNS)} FROM calls"
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += f" ORDER BY webhook_at {'DESC' if self.newest_first else 'ASC'}, wacid"
        if self.limit is not None:
            sql += f" LIMIT {mark}"
            args.append(int(self.limit))
        return sql, args


def upsert_sql(mark: str) -> str:
    """Insert or update a call row. A closed record is final: a replayed webhook (even after a
    restart, even at another gateway) must never reopen or overwrite it, so only a record
    still active is updated."""
    placeholders = ", ".join(mark for _ in COLUMNS)
    updates = ", ".join(f"{c} = excluded.{c}" for c in COLUMNS if c != "wacid")
    return (f"INSERT INTO calls ({', '.join(COLUMNS)}) VALUES ({placeholders}) "
            f"ON CONFLICT (wacid) DO UPDATE SET {updates} WHERE calls.outcome = 'active'")


def claim_sql(mark: str) -> str:
    """Take a new inbound call for one gateway instance, atomically: only when no record, no
    live tombstone and no earlier claim of that call id exists. The primary key makes a second
    claimant (a duplicate webhook delivered to another gateway) wait for the first one's
    commit and then insert nothing. Parameters: wacid, owner, now, wacid, wacid, now."""
    m = mark
    return (f"INSERT INTO call_claims (wacid, owner, claimed_at) SELECT {m}, {m}, {m} "
            f"WHERE NOT EXISTS (SELECT 1 FROM calls WHERE wacid = {m}) "
            f"AND NOT EXISTS (SELECT 1 FROM call_tombstones WHERE wacid = {m} AND until >= {m}) "
            f"ON CONFLICT (wacid) DO NOTHING")


OWNER_SQL = ("SELECT owner FROM calls WHERE wacid = {m} AND outcome = 'active' "
             "UNION ALL SELECT owner FROM call_claims WHERE wacid = {m} "
             "AND NOT EXISTS (SELECT 1 FROM calls WHERE wacid = {m}) LIMIT 1")
"""Who runs a live call: the owner of its active record (a take-over changes it), else of
its claim while the record is not written yet; no row once the record is closed. Parameters:
wacid three times."""


class StoreBackend(Protocol):
    """One database holding call records, their media, claims and tombstones."""

    where: str
    """For messages: the file, or the URL without its password."""
    shared: bool
    """Several gateways may use it at once (each then closes only its own orphans)."""
    storage_errors: tuple[type[BaseException], ...]
    """Errors that mean "cannot take this now, try again" (:class:`WriteBehind` keeps the
    write); anything else is a bug in the write."""
    schema_version: int

    async def open(self) -> None:
        """Connect and bring the schema up to date (idempotent; concurrent opens are safe)."""

    async def close(self) -> None: ...

    async def save_row(self, row: tuple) -> None:
        """Upsert one :func:`~gateway.store.records.record_to_row` row (:func:`upsert_sql`)."""

    async def probe(self, at: float) -> None:
        """Write the probe row (readiness: the database takes writes)."""

    async def save_media(self, media: CallMedia) -> None: ...

    async def media_for(self, wacid: str) -> list[CallMedia]: ...

    async def knows(self, wacid: str) -> bool: ...

    async def get(self, wacid: str) -> CallRecord | None: ...

    async def list(self, query: ListQuery) -> list[CallRecord]: ...

    async def claim(self, wacid: str, owner: str, at: float) -> bool:
        """:func:`claim_sql`: True if this instance now owns the call."""

    async def owner_of(self, wacid: str) -> str | None:
        """:data:`OWNER_SQL`: the instance running this live call, None if none does."""

    async def tombstone(self, wacid: str, until: float, now: float) -> None:
        """Remember an ended or never-to-start call id until ``until`` (and forget expired
        ones)."""

    async def heartbeat(self, instance_id: str, at: float) -> dict[str, float]:
        """Record that ``instance_id`` is alive at ``at``; every instance's last sign of
        life."""

    async def adopt(self, gone: Sequence[str], owner: str) -> list[CallRecord]:
        """Make ``owner`` the owner of the active records of the ``gone`` instances and return
        them; a record is adopted by one gateway only, however many ask at once."""
