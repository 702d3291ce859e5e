"""The call store in PostgreSQL (``store.url: postgresql://...``): one store shared by several
gateways answering the same business number (docs/scaling.md).

Driver: psycopg 3 with psycopg_pool, rather than asyncpg, because

- it is libpq: the password can stay out of the YAML in libpq's own ``PGPASSWORD`` (or
  ``~/.pgpass``, ``PGSSLMODE``, service files), the way PostgreSQL admins already provide it,
  and the URL takes every libpq option (``sslmode=verify-full``, ``target_session_attrs``);
- its ``%s`` parameters keep the SQL text the same as SQLite's ``?`` (gateway/store/backend.py
  builds both from one string), where asyncpg's ``$1`` would need a second copy;
- psycopg_pool, from the same maintainers, checks a connection before lending it and replaces
  broken ones, so a restarted server costs one retried write, not a dead store.

Writes go through one :class:`asyncio.Lock`, so they reach the server in the order they were
asked for (as SQLite's single thread keeps them); reads use the pool freely. A write the server
cannot take (it is down, restarting, or the pool timed out) raises ``psycopg.OperationalError``,
which :class:`~gateway.write_behind.WriteBehind` keeps and retries like a full disk.

Schema: ``wa_schema_versions`` holds one version per component (``calls`` here; the permission
ledger adds its own). Migrations run under a transaction-scoped advisory lock, so gateways
starting together migrate once; each step and its version bump commit together.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from urllib.parse import urlsplit, urlunsplit

import psycopg
from psycopg.rows import dict_row
from psycopg_pool import AsyncConnectionPool

from gateway.calls.record import CallRecord
from gateway.store.backend import (
    OWNER_SQL,
    ListQuery,
    StoreClosed,
    StoreUnavailable,
    claim_sql,
    upsert_sql,
)
from gateway.store.records import COLUMNS, CallMedia, row_to_record
from gateway.store.sqlite import (
    HEARTBEAT,
    MEDIA_FOR,
    SAVE_MEDIA,
    media_args,
)

COMPONENT = "calls"
MIGRATION_LOCK = 0x7761_6763  # "wagc": pg_advisory_xact_lock key for schema changes
CONNECT_TIMEOUT_S = 10.0
POOL_MAX = 4
"""Connections per gateway: writes are serialised anyway; reads (API, readiness) are rare."""

MIGRATIONS: tuple[str, ...] = (
    # 1: the SQLite schema as of its step 5, in PostgreSQL types (times are Unix seconds as
    # double precision, as in SQLite; REAL would be 4 bytes and lose the milliseconds)
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
        webhook_at DOUBLE PRECISION NOT NULL,
        answered_at DOUBLE PRECISION,
        ended_at DOUBLE PRECISION,
        outcome TEXT NOT NULL,
        reason TEXT NOT NULL DEFAULT '',
        end_reason TEXT,
        hangup_side TEXT,
        q850_cause INTEGER,
        meta_error_code BIGINT,
        meta_error_text TEXT NOT NULL DEFAULT '',
        packets_in BIGINT NOT NULL DEFAULT 0,
        packets_out BIGINT NOT NULL DEFAULT 0,
        packets_lost BIGINT NOT NULL DEFAULT 0,
        jitter_seconds DOUBLE PRECISION,
        rtt_seconds DOUBLE PRECISION,
        dtmf_in INTEGER NOT NULL DEFAULT 0,
        dtmf_out INTEGER NOT NULL DEFAULT 0,
        user_id TEXT NOT NULL DEFAULT '',
        username TEXT NOT NULL DEFAULT '',
        owner TEXT NOT NULL DEFAULT ''
    );
    CREATE INDEX calls_webhook_at ON calls (webhook_at);
    CREATE INDEX calls_outcome ON calls (outcome);
    CREATE INDEX calls_channel_id ON calls (channel_id);
    CREATE INDEX calls_user_id ON calls (user_id);
    CREATE INDEX calls_owner_outcome ON calls (owner, outcome);
    CREATE TABLE write_probe (id INTEGER PRIMARY KEY CHECK (id = 1),
                              at DOUBLE PRECISION NOT NULL);
    CREATE TABLE call_media (
        wacid TEXT NOT NULL,
        kind TEXT NOT NULL,
        media_id TEXT NOT NULL,
        mime_type TEXT NOT NULL DEFAULT '',
        sha256 TEXT NOT NULL DEFAULT '',
        path TEXT,
        error TEXT NOT NULL DEFAULT '',
        received_at DOUBLE PRECISION NOT NULL,
        PRIMARY KEY (wacid, kind, media_id)
    );
    CREATE TABLE call_claims (
        wacid TEXT PRIMARY KEY,
        owner TEXT NOT NULL,
        claimed_at DOUBLE PRECISION NOT NULL
    );
    CREATE TABLE call_tombstones (wacid TEXT PRIMARY KEY, until DOUBLE PRECISION NOT NULL);
    CREATE INDEX call_tombstones_until ON call_tombstones (until);
    CREATE TABLE gateway_instances (instance_id TEXT PRIMARY KEY,
                                    last_seen DOUBLE PRECISION NOT NULL)
    """,
)


STORAGE_ERRORS: tuple[type[BaseException], ...] = (psycopg.OperationalError, OSError)
"""Server down or restarting, connection lost, pool timeout (a PoolTimeout is one), a deadlock
or serialisation failure (psycopg's TransactionRollback is one): "try again later"."""


def redacted(url: str) -> str:
    """The URL as logs and errors may show it: any password replaced by ``***``."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    netloc = f"{parts.username or ''}:***@{host}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit(parts._replace(netloc=netloc))


async def open_pool(url: str, *, name: str, where: str, component: str,
                    migrations: Sequence[str], connect_timeout_s: float = CONNECT_TIMEOUT_S,
                    max_size: int = POOL_MAX) -> AsyncConnectionPool:
    """A checked pool on ``url`` with ``component``'s schema brought up to date (the call
    store's and the permission ledger's each). :class:`StoreUnavailable` when the server
    cannot be used, naming ``where`` (the URL without its password)."""
    pool = AsyncConnectionPool(
        url, min_size=1, max_size=max_size, open=False, name=name,
        kwargs={"autocommit": True, "row_factory": dict_row,
                "connect_timeout": max(1, int(connect_timeout_s))},
        check=AsyncConnectionPool.check_connection, timeout=connect_timeout_s)
    try:
        # One plain connection first: a wrong password or an unreachable server is
        # reported at once, where the pool would keep retrying until its timeout.
        first = await psycopg.AsyncConnection.connect(
            url, connect_timeout=max(1, int(connect_timeout_s)))
        await first.close()
        await pool.open(wait=True, timeout=connect_timeout_s)
        async with pool.connection() as conn:
            await migrate(conn, component, migrations, where)
    except BaseException as exc:
        await pool.close()
        if isinstance(exc, psycopg.Error):
            raise StoreUnavailable(f"store.url: cannot use {where}: "
                                   f"{str(exc).strip() or type(exc).__name__}") from None
        raise
    return pool


async def migrate(conn: psycopg.AsyncConnection, component: str, migrations: Sequence[str],
                  where: str) -> None:
    """Apply ``component``'s missing steps, each committed with its version, under the one
    advisory lock every gateway (and every component) takes for schema changes."""
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock(%s)", (MIGRATION_LOCK,))
        await conn.execute("CREATE TABLE IF NOT EXISTS wa_schema_versions ("
                           "component TEXT PRIMARY KEY, version INTEGER NOT NULL)")
        row = await (await conn.execute(
            "SELECT version FROM wa_schema_versions WHERE component = %s",
            (component,))).fetchone()
        version = row["version"] if row else 0
        if version > len(migrations):
            raise RuntimeError(f"{where}: {component} schema version {version} is newer than "
                               f"this gateway knows ({len(migrations)}); upgrade the gateway")
        for number, script in enumerate(migrations[version:], start=version + 1):
            await conn.execute(script)
            await conn.execute(
                "INSERT INTO wa_schema_versions (component, version) VALUES (%s, %s) "
                "ON CONFLICT (component) DO UPDATE SET version = excluded.version",
                (component, number))


class PostgresBackend:
    """Call records in a PostgreSQL database several gateways share."""

    shared = True
    storage_errors = STORAGE_ERRORS
    schema_version = len(MIGRATIONS)

    def __init__(self, url: str, *, connect_timeout_s: float = CONNECT_TIMEOUT_S):
        self.where = redacted(url)
        self._url = url
        self._connect_timeout_s = connect_timeout_s
        self._pool: AsyncConnectionPool | None = None
        self._write_lock = asyncio.Lock()

    async def open(self) -> None:
        self._pool = await open_pool(self._url, name="call-store", where=self.where,
                                     component=COMPONENT, migrations=MIGRATIONS,
                                     connect_timeout_s=self._connect_timeout_s)

    async def close(self) -> None:
        pool, self._pool = self._pool, None
        if pool is not None:
            await pool.close()

    @property
    def pool(self) -> AsyncConnectionPool:
        if self._pool is None:
            raise StoreClosed(f"call store {self.where} is closed")
        return self._pool

    async def _write(self, sql: str, args: Sequence) -> int:
        async with self._write_lock, self.pool.connection() as conn:
            return (await conn.execute(sql, args)).rowcount

    async def _rows(self, sql: str, args: Sequence) -> list[dict]:
        async with self.pool.connection() as conn:
            return await (await conn.execute(sql, args)).fetchall()

    async def save_row(self, row: tuple) -> None:
        await self._write(upsert_sql("%s"), row)

    async def probe(self, at: float) -> None:
        await self._write("INSERT INTO write_probe (id, at) VALUES (1, %s) "
                          "ON CONFLICT (id) DO UPDATE SET at = excluded.at", (at,))

    async def save_media(self, media: CallMedia) -> None:
        await self._write(SAVE_MEDIA.format(m="%s"), media_args(media))

    async def media_for(self, wacid: str) -> list[CallMedia]:
        return [CallMedia(**row) for row in await self._rows(MEDIA_FOR.format(m="%s"), (wacid,))]

    async def knows(self, wacid: str) -> bool:
        return bool(await self._rows("SELECT 1 FROM calls WHERE wacid = %s", (wacid,)))

    async def get(self, wacid: str) -> CallRecord | None:
        rows = await self._rows(f"SELECT {', '.join(COLUMNS)} FROM calls WHERE wacid = %s",
                                (wacid,))
        return row_to_record(rows[0]) if rows else None

    async def list(self, query: ListQuery) -> list[CallRecord]:
        sql, args = query.sql("%s")
        return [row_to_record(row) for row in await self._rows(sql, args)]

    async def claim(self, wacid: str, owner: str, at: float) -> bool:
        # Not behind the write lock: a claim must not wait for a record write, and its
        # ordering with them does not matter (the primary key decides between claimants).
        async with self.pool.connection() as conn:
            cursor = await conn.execute(claim_sql("%s"), (wacid, owner, at, wacid, wacid, at))
            return cursor.rowcount == 1

    async def owner_of(self, wacid: str) -> str | None:
        rows = await self._rows(OWNER_SQL.format(m="%s"), (wacid,) * 3)
        return rows[0]["owner"] if rows else None

    async def tombstone(self, wacid: str, until: float, now: float) -> None:
        async with self._write_lock, self.pool.connection() as conn, conn.transaction():
            await conn.execute("DELETE FROM call_tombstones WHERE until < %s", (now,))
            await conn.execute("INSERT INTO call_tombstones (wacid, until) VALUES (%s, %s) "
                               "ON CONFLICT (wacid) DO UPDATE SET until = excluded.until",
                               (wacid, until))

    async def heartbeat(self, instance_id: str, at: float) -> dict[str, float]:
        await self._write(HEARTBEAT.format(m="%s"), (instance_id, at))
        rows = await self._rows("SELECT instance_id, last_seen FROM gateway_instances", ())
        return {row["instance_id"]: row["last_seen"] for row in rows}

    async def adopt(self, gone: Sequence[str], owner: str) -> list[CallRecord]:
        # Row locks decide between two adopters: the second re-reads the row after the
        # first commits, finds the new owner, and leaves it.
        if not gone:
            return []
        async with self._write_lock, self.pool.connection() as conn:
            cursor = await conn.execute(
                f"UPDATE calls SET owner = %s WHERE outcome = 'active' AND owner = ANY(%s) "
                f"RETURNING {', '.join(COLUMNS)}", (owner, list(gone)))
            return [row_to_record(row) for row in await cursor.fetchall()]
