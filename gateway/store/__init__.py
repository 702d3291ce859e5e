"""Call records: one row per call, kept across restarts, exportable next to the CDR.

:class:`CallStore` is what the gateway uses; the database behind it is a
:class:`~gateway.store.backend.StoreBackend`: an SQLite file (``store.path``, the default, one
gateway on one box) or PostgreSQL (``store.url: postgresql://...``, several gateways sharing
one store, docs/scaling.md). The store adds what does not depend on the database: writes a
refusing database must not lose (:class:`WriteBehind`), the record's life (an active record
is updated, a closed one is final), and which records belong to this gateway instance.

Besides the records it keeps two things a second gateway must see: the **claim** of each
inbound call id (so a webhook delivered twice, to two gateways, starts one call) and the
**tombstones** of calls ended or refused before their ``connect`` arrived.
"""

from __future__ import annotations

import asyncio
import csv
import logging
import time
from datetime import UTC, tzinfo
from pathlib import Path
from typing import IO, Any

from gateway.calls.observer import CallObserver
from gateway.calls.record import CallRecord, Direction, Outcome
from gateway.store.backend import ListQuery, StoreBackend, StoreClosed, StoreUnavailable
from gateway.store.records import (
    COLUMNS,
    CSV_COLUMNS,
    DEFAULT_LIMIT,
    MAX_LIMIT,
    ORPHAN_REASON,
    CallMedia,
    filters_from_query,
    parse_time,
    record_to_row,
    row_to_record,
)
from gateway.store.sqlite import MIGRATIONS, SqliteBackend
from gateway.write_behind import WriteBehind

__all__ = [
    "COLUMNS", "CSV_COLUMNS", "DEFAULT_LIMIT", "MAX_LIMIT", "MIGRATIONS", "ORPHAN_REASON",
    "CallMedia", "CallStore", "StoreClosed", "StoreObserver", "StoreUnavailable",
    "backend_for", "filters_from_query", "is_postgres_url", "parse_time", "record_to_row",
    "row_to_record",
]

log = logging.getLogger(__name__)

TOMBSTONE_SECONDS = 600.0
"""As long as the call manager keeps its own (gateway/calls/manager.py)."""
CLAIM_DEADLINE_S = 2.0
"""How long a new call waits for the store's answer to "is it ours?": the caller is ringing,
and a database that is down would otherwise hold every call for the pool's whole timeout."""


def is_postgres_url(target: str | Path) -> bool:
    return isinstance(target, str) and target.startswith(("postgresql://", "postgres://"))


def backend_for(target: str | Path) -> StoreBackend:
    """A ``postgresql://`` URL: PostgreSQL; anything else is an SQLite file path."""
    if not is_postgres_url(target):
        return SqliteBackend(target)
    try:
        from gateway.store.postgres import PostgresBackend
    except ImportError as exc:
        raise StoreUnavailable(
            f"store.url: PostgreSQL needs psycopg ({exc.name} is not installed): install the "
            f"gateway with its postgres extra, whatsapp-asterisk-gateway[postgres]") from None
    return PostgresBackend(str(target))


class CallStore:
    """Call records in SQLite or PostgreSQL; every method is a coroutine."""

    def __init__(self, backend: StoreBackend, *, owner: str = ""):
        self.backend = backend
        self.owner = owner
        """This gateway's instance id (``gateway.instance_id``): its orphans, its claims."""
        self.path = backend.where
        """The file, or the URL without its password (for messages)."""
        self.writes = WriteBehind(f"call store {self.path}",
                                  storage_errors=backend.storage_errors)
        """Record writes the database refused, kept and retried (a full disk or a restarting
        server never loses one)."""

    # ---- life ----------------------------------------------------------------------------

    @classmethod
    async def open(cls, target: str | Path, *, owner: str = "") -> CallStore:
        """Open an SQLite file (creating it and its folder) or a ``postgresql://`` URL, and
        bring the schema up to date. :class:`StoreUnavailable` when it cannot be used."""
        backend = backend_for(target)
        await backend.open()
        return cls(backend, owner=owner)

    async def close(self) -> None:
        """Write what is waiting (logging what the database still refuses), then close.
        Safe to call twice."""
        await self.writes.close()
        await self.backend.close()

    @property
    def schema_version(self) -> int:
        return self.backend.schema_version

    @property
    def _orphan_owners(self) -> tuple[str, ...] | None:
        """Whose left-open records this gateway closes: on a shared store its own and those
        written before instances had ids (''), never another live gateway's; alone on its
        SQLite file, all of them (its id may have changed with the hostname)."""
        return (self.owner, "") if self.backend.shared else None

    # ---- writing -------------------------------------------------------------------------

    async def save(self, record: CallRecord) -> None:
        """Insert or update the record (by wacid). A database that refuses the write does not
        raise: the row is kept and written when it can be (:class:`WriteBehind`)."""
        await self.writes.write(("call", record.wacid), _SaveRow(self, record_to_row(record)))

    def save_soon(self, record: CallRecord) -> None:
        """Queue a save without awaiting it (for synchronous callers such as observers).

        Saves still happen in call order; a failing database delays them, never loses them."""
        self.writes.write_soon(("call", record.wacid), _SaveRow(self, record_to_row(record)))

    async def left_open(self) -> list[CallRecord]:
        """This gateway's records a previous run left ``active`` (it was killed)."""
        return await self.backend.list(ListQuery(outcome=Outcome.ACTIVE.value, limit=None,
                                                 owners=self._orphan_owners))

    async def check_writable(self, deadline_s: float = 2.0) -> tuple[bool, str]:
        """Write a probe row: (True, "") or (False, why) for /readyz."""
        try:
            await asyncio.wait_for(self.backend.probe(time.time()), deadline_s)
        except TimeoutError:
            return False, f"database {self.path} did not answer within {deadline_s:g} s"
        except (*self.backend.storage_errors, StoreClosed) as exc:
            return False, f"database {self.path} is not writable: {exc}"
        return True, ""

    async def save_media(self, media: CallMedia) -> None:
        """Link a voicemail, recording or transcript to its call (by wacid)."""
        await self.backend.save_media(media)

    async def claim(self, wacid: str, deadline_s: float = CLAIM_DEADLINE_S) -> bool:
        """Take a new inbound call for this gateway: False when the store already holds its
        record or tombstone, or another gateway (or an earlier run) claimed it first.

        Raises (TimeoutError past ``deadline_s``, or the database's error) when the store
        cannot tell; the call manager then admits the call: a ringing caller matters more
        than a duplicate that is unlikely while the store is down."""
        return await asyncio.wait_for(self.backend.claim(wacid, self.owner, time.time()),
                                      deadline_s)

    async def owner_of(self, wacid: str) -> str | None:
        """The gateway instance running this live call (gateway/handoff.py sends its later
        events there); None when no gateway does (never claimed, or its record is closed)."""
        return await self.backend.owner_of(wacid)

    async def claim_dial(self, key: str, deadline_s: float = CLAIM_DEADLINE_S) -> bool:
        """Take an agent's ``UserEvent(WhatsAppDial)`` for this gateway: every gateway on the
        Asterisk sees the event, exactly one may place the call. Kept with the call claims
        (``dial:`` keys never meet a Meta call id)."""
        return await asyncio.wait_for(
            self.backend.claim(f"dial:{key}", self.owner, time.time()), deadline_s)

    def tombstone_soon(self, wacid: str, seconds: float = TOMBSTONE_SECONDS) -> None:
        """Remember, for every gateway on this store, that this call id ended or must never
        start (a ``terminate`` that overtook its ``connect``)."""
        now = time.time()

        async def write() -> None:
            await self.backend.tombstone(wacid, now + seconds, now)

        self.writes.write_soon(("tombstone", wacid), write)

    async def heartbeat(self) -> dict[str, float]:
        """This gateway is alive now; returns when each gateway on the store last said so
        (gateway/instance.py tells the gone ones from the live)."""
        return await self.backend.heartbeat(self.owner, time.time())

    async def adopt(self, gone: set[str]) -> list[CallRecord]:
        """Take over the calls gone gateways left active (their callers connected to nothing):
        each record is this gateway's from now on, for one gateway only, to end at Meta and
        close."""
        return await self.backend.adopt(sorted(gone), self.owner)

    # ---- reading -------------------------------------------------------------------------

    async def media_for(self, wacid: str) -> list[CallMedia]:
        """The call's media, oldest first."""
        return await self.backend.media_for(wacid)

    async def knows(self, wacid: str) -> bool:
        """Is there a record for this call id (from this run or an earlier one)?"""
        return await self.backend.knows(wacid)

    async def get(self, wacid: str) -> CallRecord | None:
        return await self.backend.get(wacid)

    async def list(self, since: float | None = None, until: float | None = None,
                   direction: Direction | str | None = None,
                   outcome: Outcome | str | None = None,
                   phone_number_id: str | None = None,
                   limit: int | None = DEFAULT_LIMIT) -> list[CallRecord]:
        """Calls whose webhook arrived in [since, until), newest first; ``limit=None`` for all."""
        return await self.backend.list(ListQuery(since, until, direction, outcome,
                                                 phone_number_id, limit=limit))

    async def export_csv(self, stream: IO[str], *, tz: tzinfo = UTC,
                         **filters: Any) -> int:
        """Write matching calls as CSV, oldest first, times in ``tz`` (CDR style); returns
        the number of rows. Filters as in :meth:`list` (no limit by default)."""
        filters.setdefault("limit", None)
        records = await self.backend.list(ListQuery(**filters, newest_first=False))
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
        await self.store.backend.save_row(self.row)

    def describe(self) -> str:
        return "call record " + ", ".join(f"{c}={v!r}" for c, v in zip(COLUMNS, self.row,
                                                                          strict=True)
                                          if v not in (None, "", 0))


class StoreObserver(CallObserver):
    """Saves the record when a call is admitted, rejected, answered and ended (one row per
    call)."""

    def __init__(self, store: CallStore):
        self.store = store

    def call_admitted(self, record: CallRecord) -> None:
        self.store.save_soon(record)

    def call_rejected(self, record: CallRecord) -> None:
        self.store.save_soon(record)

    def call_event(self, record: CallRecord, event: str, **fields: object) -> None:
        if event == "bridged":
            # answered_at stored while the call is up: should this gateway die, whoever ends
            # the call (its restart, or a neighbour taking over) sends Meta a terminate, not a
            # reject Meta refuses for an answered call
            self.store.save_soon(record)

    def call_ended(self, record: CallRecord) -> None:
        self.store.save_soon(record)

