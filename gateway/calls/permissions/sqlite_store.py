"""The ledger's storage in SQLite: four tables in the gateway's database file.

``permissions``, ``permission_requests``, ``business_calls`` and ``user_links`` are created with
``CREATE TABLE IF NOT EXISTS`` on a connection of our own (WAL mode, so :mod:`gateway.store`
reads and writes the same file alongside); ``PRAGMA user_version`` belongs to the call store and
is left alone. SQLite is blocking, so every statement runs in one dedicated worker thread and
the event loop only awaits it. Each method is one transaction; the writing ones take the write
lock first (``BEGIN IMMEDIATE``), so a rule checked inside one holds until its write is made.
"""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from gateway.calls.permissions.reconcile import MetaChanges
from gateway.calls.permissions.rules import (
    ACTION_REQUEST,
    Decision,
    PairState,
    PermissionChange,
)
from gateway.calls.permissions.storage import (
    CALLS,
    REQUESTS,
    USES,
    LedgerClosed,
    User,
    after_unanswered,
    meta_limits_from_json,
    meta_limits_to_json,
    pair_state,
    resets_streak,
)
from gateway.sqlite_thread import SqliteThread
from gateway.whatsapp.events import UserIdChanged
from gateway.whatsapp.identity import WhatsAppUser, canonical_number, is_bsuid, user_key
from gateway.write_behind import STORAGE_ERRORS

T = TypeVar("T")
log = logging.getLogger(__name__)


SCHEMA = """
CREATE TABLE IF NOT EXISTS permissions (
    phone_number_id TEXT NOT NULL,
    wa_id TEXT NOT NULL,
    status TEXT NOT NULL DEFAULT 'no_permission',
    expires_at REAL,
    source TEXT,
    updated_at REAL NOT NULL,
    unanswered_streak INTEGER NOT NULL DEFAULT 0,
    request_blocked_until REAL,
    call_blocked_until REAL,
    meta_limits TEXT,
    meta_checked_at REAL,
    PRIMARY KEY (phone_number_id, wa_id)
);
CREATE TABLE IF NOT EXISTS permission_requests (
    id INTEGER PRIMARY KEY,
    phone_number_id TEXT NOT NULL,
    wa_id TEXT NOT NULL,
    message_id TEXT,
    sent_at REAL NOT NULL,
    counted INTEGER NOT NULL DEFAULT 1,
    origin TEXT NOT NULL DEFAULT 'gateway',
    response TEXT,
    answered_at REAL
);
CREATE INDEX IF NOT EXISTS permission_requests_pair
    ON permission_requests (phone_number_id, wa_id, sent_at);
CREATE UNIQUE INDEX IF NOT EXISTS permission_requests_message
    ON permission_requests (message_id) WHERE message_id IS NOT NULL;
CREATE TABLE IF NOT EXISTS business_calls (
    id INTEGER PRIMARY KEY,
    phone_number_id TEXT NOT NULL,
    wa_id TEXT NOT NULL,
    call_id TEXT,
    at REAL NOT NULL,
    answered INTEGER NOT NULL,
    counted INTEGER NOT NULL DEFAULT 1,
    origin TEXT NOT NULL DEFAULT 'gateway'
);
CREATE INDEX IF NOT EXISTS business_calls_pair ON business_calls (phone_number_id, wa_id, at);
CREATE UNIQUE INDEX IF NOT EXISTS business_calls_call ON business_calls (call_id)
    WHERE call_id IS NOT NULL;
CREATE TABLE IF NOT EXISTS user_links (
    user_id TEXT PRIMARY KEY,
    wa_id TEXT NOT NULL,
    updated_at REAL NOT NULL
);
"""
"""``counted = 0`` marks rows that no longer count toward a limit: requests reset by a connected
call, or rows Meta's ``current_usage`` says it does not count. ``origin = 'meta'`` marks rows
added because Meta counted uses the gateway did not see (sent by another tool). A request row
without a ``message_id`` is one being sent (reserved, not yet confirmed by Meta); if the gateway
dies while sending it stays counted, since Meta may have taken it."""

class SqliteLedgerStore:
    """:class:`~gateway.calls.permissions.storage.LedgerStore` in one SQLite file."""

    storage_errors = STORAGE_ERRORS

    def __init__(self, path: str | Path):
        self.path = self.where = str(path)
        self._sql = SqliteThread(path, "permissions", LedgerClosed)

    async def open(self) -> None:
        """Open (creating the file, its folder and the ledger's tables if needed)."""
        await self._sql.open(self._create)

    def _create(self, db: sqlite3.Connection) -> None:
        """Tables, then rows filed under a number form that is not canonical (ledgers written
        before the Brazil/Mexico folding) moved to the canonical key."""
        db.executescript(f"BEGIN; {SCHEMA} COMMIT;")
        db.execute("BEGIN IMMEDIATE")
        keys = {r[0] for table in ("permissions", "permission_requests", "business_calls")
                for r in db.execute(f"SELECT DISTINCT wa_id FROM {table}")}
        for key in keys:
            if not is_bsuid(key) and canonical_number(key) != key:
                _merge(db, key, canonical_number(key))
        db.execute("COMMIT")

    async def close(self) -> None:
        await self._sql.close()

    async def _tx(self, fn: Callable[..., T], *args: Any, write: bool = True) -> T:
        """Run ``fn(db, *args)`` on the ledger thread inside one transaction (a read-only one
        takes no write lock, so it never waits for the call store's writes)."""
        def work() -> T:
            db = self._sql.conn
            db.execute("BEGIN IMMEDIATE" if write else "BEGIN")
            try:
                out = fn(db, *args)
            except BaseException:
                if db.in_transaction:  # SQLITE_FULL may already have rolled it back
                    db.execute("ROLLBACK")
                raise
            db.execute("COMMIT")
            return out
        return await self._sql.run(work)

    async def _pair_tx(self, fn: Callable[..., T], pnid: str, user: User, now: float,
                       *args: Any, write: bool = True) -> T:
        """:meth:`_tx` for one pair: ``fn(db, pnid, key, now, *args)``, ``user`` keyed first
        (and linked, in a write transaction, when a webhook named both number and BSUID)."""
        def keyed(db: sqlite3.Connection) -> T:
            return fn(db, pnid, _key(db, user, now if write else None), now, *args)
        return await self._tx(keyed, write=write)

    # ---- reads -------------------------------------------------------------------------------

    async def key_for(self, user: User) -> str:
        return await self._tx(lambda db: _key(db, user, None), write=False)

    async def state(self, pnid: str, user: User, now: float, horizon: float, *,
                    detail: bool = False) -> PairState:
        return await self._pair_tx(_state, pnid, user, now, horizon, detail, write=False)

    # ---- writes ------------------------------------------------------------------------------

    async def reserve_request(self, pnid: str, user: User, now: float, horizon: float,
                              decide: Callable[[PairState], Decision]
                              ) -> tuple[Decision, int | None]:
        def work(db: sqlite3.Connection, pnid: str, key: str,
                 now: float) -> tuple[Decision, int | None]:
            decision = decide(_state(db, pnid, key, now, horizon, False))
            if not decision.allowed:
                return decision, None
            _ensure_row(db, pnid, key, now)
            cur = db.execute("INSERT INTO permission_requests (phone_number_id, wa_id, sent_at) "
                             "VALUES (?, ?, ?)", (pnid, key, now))
            return decision, cur.lastrowid
        return await self._pair_tx(work, pnid, user, now)

    async def confirm_request(self, request_id: int, message_id: str | None) -> None:
        await self._tx(lambda db: db.execute(
            "UPDATE permission_requests SET message_id = ? WHERE id = ?",
            (message_id, request_id)))

    async def release_request(self, request_id: int) -> None:
        await self._tx(lambda db: db.execute(
            "DELETE FROM permission_requests WHERE id = ?", (request_id,)))

    async def record_request(self, pnid: str, user: User, message_id: str | None,
                             now: float) -> None:
        def work(db: sqlite3.Connection, pnid: str, key: str, now: float) -> None:
            _ensure_row(db, pnid, key, now)
            db.execute("INSERT OR IGNORE INTO permission_requests (phone_number_id, wa_id, "
                       "message_id, sent_at) VALUES (?, ?, ?, ?)", (pnid, key, message_id, now))
        await self._pair_tx(work, pnid, user, now)

    async def record_call(self, pnid: str, user: User, answered: bool, now: float,
                          call_id: str | None, revoke_after: int, nudge_at: int) -> None:
        await self._pair_tx(_record_call, pnid, user, now, answered, call_id, revoke_after,
                            nudge_at)

    async def reset_request_counters(self, pnid: str, user: User, now: float) -> None:
        await self._pair_tx(_reset_request_counters, pnid, user, now)

    async def apply_reply(self, pnid: str, user: User, at: float,
                          change: PermissionChange | None, answers: str | None,
                          response: str, newer_than: float | None) -> None:
        def work(db: sqlite3.Connection, pnid: str, key: str, at: float) -> None:
            if not key:
                log.warning("call permission reply names no user (no from, no from_user_id)")
                return
            row = _ensure_row(db, pnid, key, at)
            if answers:
                db.execute("UPDATE permission_requests SET response = ?, answered_at = ? "
                           "WHERE message_id = ?", (response, at, answers))
            if newer_than and row["updated_at"] > newer_than and row["source"]:
                log.info("call permission %s/%s: reply at %s is older than the ledger's state; "
                         "ignored", pnid, key, newer_than)
                return
            if change is not None:
                _set_permission(db, pnid, key, change)
        await self._pair_tx(work, pnid, user, at)

    async def set_permission(self, pnid: str, user: User, change: PermissionChange) -> None:
        await self._pair_tx(lambda db, pnid, key, now: _set_permission(db, pnid, key, change),
                            pnid, user, change.at)

    async def block(self, pnid: str, user: User, kind: str, until: float, now: float) -> None:
        column = {REQUESTS: "request_blocked_until", CALLS: "call_blocked_until"}[kind]

        def work(db: sqlite3.Connection, pnid: str, key: str, now: float) -> None:
            _ensure_row(db, pnid, key, now)
            db.execute(f"UPDATE permissions SET {column} = max(coalesce({column}, 0), ?) "
                       "WHERE phone_number_id = ? AND wa_id = ?", (until, pnid, key))
        await self._pair_tx(work, pnid, user, now)

    async def apply_meta(self, pnid: str, user: User, now: float, horizon: float,
                         plan: Callable[[PairState], MetaChanges]) -> None:
        def work(db: sqlite3.Connection, pnid: str, key: str, now: float) -> None:
            _ensure_row(db, pnid, key, now)
            _apply_meta(db, pnid, key, plan(_state(db, pnid, key, now, horizon, False)))
        await self._pair_tx(work, pnid, user, now)

    async def change_user_id(self, change: UserIdChanged, now: float) -> None:
        def work(db: sqlite3.Connection) -> None:
            row = db.execute("SELECT wa_id FROM user_links WHERE user_id = ?",
                             (change.old_user_id,)).fetchone()
            number = canonical_number(change.wa_id) or (row[0] if row else "")
            db.execute("DELETE FROM user_links WHERE user_id = ?", (change.old_user_id,))
            if number:
                db.execute("INSERT OR REPLACE INTO user_links (user_id, wa_id, updated_at) "
                           "VALUES (?, ?, ?)", (change.new_user_id, number, now))
                _merge(db, change.old_user_id, number)
                if row and row[0] != number:
                    _merge(db, row[0], number)
            else:
                _merge(db, change.old_user_id, change.new_user_id)
        await self._tx(work)

    async def prune(self, before: float) -> int:
        def work(db: sqlite3.Connection) -> int:
            a = db.execute("DELETE FROM permission_requests WHERE sent_at < ?",
                           (before,)).rowcount
            b = db.execute("DELETE FROM business_calls WHERE at < ?", (before,)).rowcount
            return a + b
        return await self._tx(work)


# ---- on the ledger's thread, inside a transaction ----------------------------------------------


def _key(db: sqlite3.Connection, user: User, link_at: float | None) -> str:
    """The key of ``user`` (:func:`user_key`), through ``user_links`` for a BSUID whose number
    is known; ``link_at``: link a webhook's BSUID to its number (at that time) first."""
    if isinstance(user, WhatsAppUser):
        if user.linkable and link_at is not None:
            number = canonical_number(user.wa_id)
            db.execute("INSERT INTO user_links (user_id, wa_id, updated_at) VALUES (?, ?, ?) "
                       "ON CONFLICT (user_id) DO UPDATE SET wa_id = excluded.wa_id, "
                       "updated_at = excluded.updated_at", (user.user_id, number, link_at))
            _merge(db, user.user_id, number)
        if user.wa_id:
            return canonical_number(user.wa_id)
        user = user.user_id
    user = user.strip()
    if is_bsuid(user):
        row = db.execute("SELECT wa_id FROM user_links WHERE user_id = ?", (user,)).fetchone()
        return row[0] if row else user
    return user_key(user)


def _merge(db: sqlite3.Connection, old: str, new: str) -> None:
    """Move every row keyed ``old`` to ``new`` (a BSUID-keyed user whose number became known,
    or a new BSUID): requests and calls are kept; a permission row already under ``new`` wins
    over the old one (it is the newer knowledge)."""
    if old == new:
        return
    for table in ("permission_requests", "business_calls"):
        db.execute(f"UPDATE {table} SET wa_id = ? WHERE wa_id = ?", (new, old))
    db.execute("UPDATE OR IGNORE permissions SET wa_id = ? WHERE wa_id = ?", (new, old))
    db.execute("DELETE FROM permissions WHERE wa_id = ?", (old,))


def _row(db: sqlite3.Connection, pnid: str, key: str) -> sqlite3.Row | None:
    return db.execute("SELECT * FROM permissions WHERE phone_number_id = ? AND wa_id = ?",
                      (pnid, key)).fetchone()


def _ensure_row(db: sqlite3.Connection, pnid: str, key: str, now: float) -> sqlite3.Row:
    db.execute("INSERT OR IGNORE INTO permissions (phone_number_id, wa_id, updated_at) "
               "VALUES (?, ?, ?)", (pnid, key, now))
    row = _row(db, pnid, key)
    assert row is not None
    return row


def _state(db: sqlite3.Connection, pnid: str, key: str, now: float, horizon: float,
           detail: bool) -> PairState:
    row = _row(db, pnid, key)
    meta = meta_limits_from_json(row["meta_limits"]) if row is not None else {}
    since = now - max([horizon] + [p for limits in meta.values() for p in limits])
    uses = {}
    for action, (table, at, which) in USES.items():
        uses[action] = tuple((r[0], r[1]) for r in db.execute(
            f"SELECT id, {at} FROM {table} WHERE phone_number_id = ? AND wa_id = ? AND "
            f"counted = 1{which} AND {at} > ? ORDER BY {at}, id", (pnid, key, since)))
    recent: tuple[dict[str, Any], ...] = ()
    user_ids: tuple[str, ...] = ()
    if detail:
        recent = tuple({**dict(r), "counted": bool(r["counted"])} for r in db.execute(
            "SELECT message_id, sent_at, response, answered_at, counted = 1 AS counted "
            "FROM permission_requests WHERE phone_number_id = ? AND wa_id = ? AND origin = "
            "'gateway' ORDER BY sent_at DESC LIMIT 10", (pnid, key)))
        user_ids = tuple(r[0] for r in db.execute(
            "SELECT user_id FROM user_links WHERE wa_id = ? ORDER BY user_id", (key,)))
    return pair_state(key, row, uses, recent, user_ids)


def _set_permission(db: sqlite3.Connection, pnid: str, key: str,
                    change: PermissionChange) -> None:
    before = _ensure_row(db, pnid, key, change.at)
    reset_streak = resets_streak(before["status"], change)
    db.execute(
        "UPDATE permissions SET status = ?, expires_at = ?, source = ?, updated_at = ?, "
        "unanswered_streak = CASE WHEN ? THEN 0 ELSE unanswered_streak END "
        "WHERE phone_number_id = ? AND wa_id = ?",
        (change.status, change.expires_at if change.status == "temporary" else None,
         change.source, change.at, reset_streak, pnid, key))
    if before["status"] != change.status:
        log.info("call permission %s/%s: %s -> %s (%s)", pnid, key, before["status"],
                 change.status, change.source)


def _reset_request_counters(db: sqlite3.Connection, pnid: str, key: str, now: float) -> None:
    _ensure_row(db, pnid, key, now)
    db.execute("UPDATE permission_requests SET counted = 0 WHERE phone_number_id = ? AND "
               "wa_id = ? AND counted = 1 AND sent_at <= ?", (pnid, key, now))
    db.execute("UPDATE permissions SET request_blocked_until = NULL "
               "WHERE phone_number_id = ? AND wa_id = ?", (pnid, key))


def _record_call(db: sqlite3.Connection, pnid: str, key: str, now: float, answered: bool,
                 call_id: str | None, revoke_after: int, nudge_at: int) -> None:
    _ensure_row(db, pnid, key, now)
    cur = db.execute("INSERT OR IGNORE INTO business_calls (phone_number_id, wa_id, call_id, "
                     "at, answered) VALUES (?, ?, ?, ?, ?)",
                     (pnid, key, call_id, now, int(answered)))
    if cur.rowcount == 0:
        return  # this call was already recorded
    if answered:
        db.execute("UPDATE permissions SET unanswered_streak = 0 "
                   "WHERE phone_number_id = ? AND wa_id = ?", (pnid, key))
        _reset_request_counters(db, pnid, key, now)
        return
    db.execute("UPDATE permissions SET unanswered_streak = unanswered_streak + 1 "
               "WHERE phone_number_id = ? AND wa_id = ?", (pnid, key))
    row = _row(db, pnid, key)
    assert row is not None
    revoked = after_unanswered(pnid, key, row["unanswered_streak"], row["status"], now,
                               revoke_after, nudge_at)
    if revoked is not None:
        _set_permission(db, pnid, key, revoked)


def _apply_meta(db: sqlite3.Connection, pnid: str, key: str, changes: MetaChanges) -> None:
    if changes.permission is not None:
        _set_permission(db, pnid, key, changes.permission)
    for action, ids in changes.stale.items():
        if ids:
            table = USES[action][0]
            db.execute(f"UPDATE {table} SET counted = 0 WHERE id IN "
                       f"({','.join('?' * len(ids))})", ids)
    for action, times in changes.unseen.items():
        for t in times:
            if action == ACTION_REQUEST:
                db.execute("INSERT INTO permission_requests (phone_number_id, wa_id, sent_at, "
                           "origin) VALUES (?, ?, ?, 'meta')", (pnid, key, t))
            else:
                db.execute("INSERT INTO business_calls (phone_number_id, wa_id, at, answered, "
                           "origin) VALUES (?, ?, ?, 1, 'meta')", (pnid, key, t))
    for action, until in changes.blocked_until.items():
        column = "request_blocked_until" if action == ACTION_REQUEST else "call_blocked_until"
        db.execute(f"UPDATE permissions SET {column} = ? "
                   "WHERE phone_number_id = ? AND wa_id = ?", (until, pnid, key))
    db.execute("UPDATE permissions SET meta_limits = ?, meta_checked_at = ? "
               "WHERE phone_number_id = ? AND wa_id = ?",
               (meta_limits_to_json(changes.meta_limits), changes.checked_at, pnid, key))
