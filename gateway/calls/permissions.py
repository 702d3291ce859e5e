"""Outbound calls: Meta's call-permission rules, enforced by the gateway before Meta refuses.

A business may call a WhatsApp user only with the user's permission, and both the permission
requests and the calls are rate-limited per (business number, user) pair (docs/meta-calling.md
§3, §5, §6, §10, §11). :class:`PermissionLedger` remembers, in SQLite, what the gateway knows of
each pair -- the permission and its expiry, the requests sent, the business-initiated calls and
their results -- and answers "may we call?" / "may we ask?" with a :class:`Decision` that
carries the Meta error code Meta would have returned and, for limits, when the action becomes
possible again.

Sources of truth, weakest first: the ledger's own bookkeeping (requests sent, call results,
the unanswered streak), permission-reply webhooks, and Meta's own answers (the
``call_permissions`` GET and error codes). Meta's answer wins whenever it disagrees.

Storage: three tables (``permissions``, ``permission_requests``, ``business_calls``) in the
gateway's database file, created with ``CREATE TABLE IF NOT EXISTS`` on a connection of our own
(WAL mode, so :mod:`gateway.store` reads and writes the same file alongside); ``PRAGMA
user_version`` belongs to the call store and is left alone. SQLite is blocking, so every
statement runs in one dedicated worker thread and the event loop only awaits it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
import sqlite3
import time
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, TypeVar

from gateway.sqlite_thread import DatabaseClosed, SqliteThread
from gateway.whatsapp.events import PermissionReply, as_int
from gateway.whatsapp.graph import GraphClient, GraphError
from gateway.whatsapp.messages import permission_request_body, voice_call_body

T = TypeVar("T")
log = logging.getLogger(__name__)

HOUR = 3600.0
DAY = 24 * HOUR
WEEK = 7 * DAY

# ---- Meta's limits (docs/meta-calling.md §10; sandbox values in the same table) -----------------
REQUESTS_PER_24H = 1
"""§10: at most 1 permission request per 24 h per pair (over it: 138009)."""
REQUESTS_PER_7D = 2
"""§10: at most 2 permission requests per 7 days per pair (138009); a connected call resets both."""
CALLS_PER_24H = 100
"""§10/§14: 100 connected business-initiated calls per 24 h per pair (138012). ⚠ One sample says
5; §14 prefers 100 and Meta's live ``max_allowed`` from ``call_permissions`` wins when known."""
UNANSWERED_TO_REVOKE = 4
"""§10: 4 unanswered/declined business calls in a row revoke the permission (automatic reject)."""
UNANSWERED_TO_NUDGE = 2
"""§10: after 2 in a row the user is nudged to revoke (informational only)."""
TEMPORARY_PERMISSION_S = WEEK
"""§10: a temporary permission lasts 7 days (168 h) from approval."""

SANDBOX_REQUESTS_PER_24H = 25  # §10: sandbox / public test numbers
SANDBOX_REQUESTS_PER_7D = 100
SANDBOX_UNANSWERED_TO_NUDGE = 5
SANDBOX_UNANSWERED_TO_REVOKE = 10

# ---- Meta error codes (§11) -------------------------------------------------------------------
NO_PERMISSION = 138006
REQUEST_LIMIT = 138009
CALL_LIMIT = 138012
COUNTRY_UNSUPPORTED = 138013
PERMANENT_EXISTS = 138017

# §10: business numbers of these countries cannot make business-initiated calls (138013).
# E.164 calling codes are prefix-free, so a prefix match on the digits is exact.
UNSUPPORTED_CALLING_CODES = {"1": "USA/Canada", "20": "Egypt", "84": "Vietnam", "234": "Nigeria"}
# +1 is the whole North American Numbering Plan: these area codes are other countries (the
# Caribbean, Bermuda), not the USA or Canada, so 138013 does not apply to them. US territories
# (Puerto Rico, USVI, Guam, ...) stay refused as "USA".
NANP_OTHER_COUNTRIES = frozenset({
    "242", "246", "264", "268", "284", "345", "441", "473", "649", "658", "664", "721", "758",
    "767", "784", "809", "829", "849", "868", "869", "876",
})
# 555 is not a geographic area code; Meta's public test numbers use it (+1 555 ...).
NANP_TEST_AREA_CODES = frozenset({"555"})

# Meta's action names in call_permissions (§3).
ACTION_REQUEST = "send_call_permission_request"
ACTION_CALL = "start_call"

STATUSES = ("no_permission", "temporary", "permanent")
SOURCES = ("user_action", "automatic", "callback", "meta_api")



@dataclass(frozen=True)
class Limits:
    """The per-pair limits the ledger enforces; defaults are production values (§10).

    Meta's live ``max_allowed`` values (from ``call_permissions``) override the count limits for
    the pair they were read for."""

    requests_per_24h: int = REQUESTS_PER_24H
    requests_per_7d: int = REQUESTS_PER_7D
    calls_per_24h: int = CALLS_PER_24H
    unanswered_to_revoke: int = UNANSWERED_TO_REVOKE
    unanswered_to_nudge: int = UNANSWERED_TO_NUDGE
    temporary_permission_s: float = TEMPORARY_PERMISSION_S
    enforce_country: bool = True
    """Refuse business-initiated calls from USA/Canada/Egypt/Vietnam/Nigeria numbers (138013)."""


SANDBOX_LIMITS = Limits(
    requests_per_24h=SANDBOX_REQUESTS_PER_24H,
    requests_per_7d=SANDBOX_REQUESTS_PER_7D,
    unanswered_to_nudge=SANDBOX_UNANSWERED_TO_NUDGE,
    unanswered_to_revoke=SANDBOX_UNANSWERED_TO_REVOKE,
    enforce_country=False,  # public test numbers are +1 numbers
)
"""§10: sandbox and public test numbers."""


@dataclass(frozen=True)
class Decision:
    allowed: bool
    reason: str
    """ok | no_permission | permission_expired | limit_calls_24h | limit_requests_24h |
    limit_requests_7d | permanent_exists | country_unsupported"""
    message: str
    next_allowed_at: float | None = None
    """Unix time when the refused action becomes possible again, when that is known."""
    meta_code: int | None = None
    """The §11 code Meta would have answered with."""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


OK = Decision(True, "ok", "allowed")


class LedgerClosed(DatabaseClosed):
    """The ledger was used after :meth:`PermissionLedger.close` (or before open)."""


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
"""
"""``counted = 0`` marks rows that no longer count toward a limit: requests reset by a connected
call, or rows Meta's ``current_usage`` says it does not count. ``origin = 'meta'`` marks rows
added because Meta counted uses the gateway did not see (sent by another tool)."""


_DURATION = re.compile(r"P(?:(\d+)W)?(?:(\d+)D)?(?:T(?:(\d+)H)?(?:(\d+)M)?(?:(\d+)S)?)?")


def period_seconds(text: Any) -> float | None:
    """ISO 8601 duration of a Meta limit (``PT24H``, ``P7D``) in seconds."""
    match = _DURATION.fullmatch(str(text or "").strip().upper())
    if not match or not any(match.groups()):
        return None
    w, d, h, m, s = (int(g) if g else 0 for g in match.groups())
    return float(w * WEEK + d * DAY + h * HOUR + m * 60 + s)


def business_country_block(display_number: str | None) -> str | None:
    """The country name when a business number cannot make business-initiated calls (138013).

    ``display_number`` is the number with its country calling code (``+1 555-000-1111``,
    ``15550001111``); None when unknown or allowed."""
    digits = re.sub(r"\D", "", display_number or "")
    if digits.startswith("00"):
        digits = digits[2:]
    if not digits:
        return None
    for code, country in UNSUPPORTED_CALLING_CODES.items():
        if digits.startswith(code):
            if code == "1":
                area = digits[1:4]
                if area in NANP_OTHER_COUNTRIES or area in NANP_TEST_AREA_CODES:
                    return None
            return country
    return None


def _when(at: float | None) -> str:
    if at is None:
        return "unknown"
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(at))


@dataclass
class _Window:
    period: float
    maximum: int
    used: int
    next_at: float | None  # when used drops below maximum, if it is reached


class PermissionLedger:
    """Per (business phone_number_id, user wa_id) permissions and limits, in SQLite.

    Every public method is a coroutine whose SQLite work runs on the ledger's own thread, each
    in one transaction. ``now`` (unix seconds) defaults to the current time; tests pass it."""

    def __init__(self, path: str | Path, *, limits: Limits | None = None,
                 display_numbers: Mapping[str, str] | None = None):
        self.path = str(path)
        self.limits = limits or Limits()
        self._display_numbers: dict[str, str] = dict(display_numbers or {})
        self._meta_country_blocked: set[str] = set()
        self._sql = SqliteThread(path, "permissions", LedgerClosed)
        self._locks: dict[tuple[str, str], list[Any]] = {}

    # ---- life ----------------------------------------------------------------------------

    @classmethod
    async def open(cls, path: str | Path, *, limits: Limits | None = None,
                   display_numbers: Mapping[str, str] | None = None) -> PermissionLedger:
        """Open (creating the file, its folder and the ledger's tables if needed)."""
        ledger = cls(path, limits=limits, display_numbers=display_numbers)
        await ledger._sql.open(lambda db: db.executescript(f"BEGIN; {SCHEMA} COMMIT;"))
        return ledger

    async def close(self) -> None:
        """Wait for queued work, then close the file. Safe to call twice."""
        await self._sql.close()

    async def _run(self, fn: Callable[..., T], *args: Any) -> T:
        return await self._sql.run(fn, *args)

    async def _tx(self, fn: Callable[..., T], *args: Any, write: bool = True) -> T:
        """Run ``fn(db, *args)`` on the ledger thread inside one transaction (a read-only one
        takes no write lock, so it never waits for the call store's writes)."""
        def work() -> T:
            db = self._sql.conn
            db.execute("BEGIN IMMEDIATE" if write else "BEGIN")
            try:
                out = fn(db, *args)
            except BaseException:
                db.execute("ROLLBACK")
                raise
            db.execute("COMMIT")
            return out
        return await self._run(work)

    # ---- configuration -------------------------------------------------------------------

    def set_display_number(self, phone_number_id: str, display_number: str | None) -> None:
        """Tell the ledger a business number's display number (for the country rule)."""
        if display_number:
            self._display_numbers[phone_number_id] = display_number
        else:
            self._display_numbers.pop(phone_number_id, None)

    @contextlib.asynccontextmanager
    async def pair_lock(self, phone_number_id: str, user: str) -> AsyncIterator[None]:
        """Serialise check-then-act for one pair (check, send, record) within this process."""
        key = (phone_number_id, user)
        entry = self._locks.setdefault(key, [asyncio.Lock(), 0])
        entry[1] += 1
        try:
            async with entry[0]:
                yield
        finally:
            entry[1] -= 1
            if entry[1] == 0:
                self._locks.pop(key, None)

    # ---- decisions -----------------------------------------------------------------------

    async def can_call(self, phone_number_id: str, user: str,
                       now: float | None = None) -> Decision:
        """May the business start a call to ``user`` now (before ``POST /calls connect``)?"""
        return await self._tx(self._decide_call, phone_number_id, user, _now(now),
                              write=False)

    async def can_request(self, phone_number_id: str, user: str,
                          now: float | None = None) -> Decision:
        """May the business send ``user`` a call permission request now?"""
        return await self._tx(self._decide_request, phone_number_id, user, _now(now),
                              write=False)

    async def get(self, phone_number_id: str, user: str, now: float | None = None) -> dict:
        """Everything the ledger knows of the pair, JSON-ready, for the API."""
        return await self._tx(self._describe, phone_number_id, user, _now(now),
                              write=False)

    # ---- recording -----------------------------------------------------------------------

    async def record_request_sent(self, phone_number_id: str, user: str, message_id: str | None,
                                  now: float | None = None) -> None:
        """A permission request message was accepted by Meta (``messages[0].id``)."""
        await self._tx(self._record_request, phone_number_id, user, message_id, _now(now))

    async def record_call_result(self, phone_number_id: str, user: str, answered: bool,
                                 now: float | None = None, *, call_id: str | None = None) -> None:
        """A business-initiated call that reached the user ended: answered or not.

        ``answered`` (ACCEPTED / connected) counts toward the 24 h call limit, resets the
        unanswered streak and resets the permission-request counters. Not answered (declined,
        no answer) extends the streak; at the revoke threshold the permission is marked revoked,
        as Meta does. ``call_id`` (the wacid) makes a repeated report for the same call a no-op.
        """
        await self._tx(self._record_call, phone_number_id, user, bool(answered), _now(now),
                       call_id)

    async def record_user_call(self, phone_number_id: str, user: str,
                               now: float | None = None) -> None:
        """A user-initiated call was connected: §10 "any connected call" resets the
        permission-request counters. Does not count toward the business-call limits."""
        await self._tx(self._reset_request_counters, phone_number_id, user, _now(now))

    async def apply_reply(self, reply: PermissionReply, now: float | None = None) -> None:
        """A ``call_permission_reply`` webhook (§6): grant, refusal or automatic revocation."""
        await self._tx(self._apply_reply, reply, _now(now))

    async def apply_meta_permissions(self, phone_number_id: str, user: str,
                                     response_json: Mapping[str, Any],
                                     now: float | None = None) -> None:
        """Meta's ``GET call_permissions`` answer (§3): it overrides the ledger."""
        await self._tx(self._apply_meta, phone_number_id, user, response_json, _now(now))

    async def apply_meta_error(self, phone_number_id: str, user: str, code: int | None,
                               now: float | None = None, *,
                               retry_at: float | None = None) -> Decision | None:
        """Meta refused an action with ``code``; bring the ledger in line and return the new
        decision for that action (None for codes that say nothing about permissions).

        138006: there is no permission. 138009 / 138012: the request / call limit is reached
        (``retry_at``: when Meta says the next one is allowed, e.g. 138012's ``error_data``).
        138017: a permanent permission exists. 138013: the number's country cannot call."""
        now = _now(now)
        if code == COUNTRY_UNSUPPORTED:
            self._meta_country_blocked.add(phone_number_id)
            return await self.can_call(phone_number_id, user, now)
        if code not in (NO_PERMISSION, REQUEST_LIMIT, CALL_LIMIT, PERMANENT_EXISTS):
            return None
        return await self._tx(self._apply_error, phone_number_id, user, code, now, retry_at)

    async def prune(self, now: float | None = None, keep_s: float = 30 * DAY) -> int:
        """Delete request and call rows older than ``keep_s`` (they no longer count toward any
        limit once older than the longest window); returns how many rows went."""
        return await self._tx(self._prune, _now(now) - max(keep_s, WEEK + DAY))

    # ---- worker-thread side --------------------------------------------------------------

    def _row(self, db: sqlite3.Connection, pnid: str, user: str) -> sqlite3.Row | None:
        return db.execute("SELECT * FROM permissions WHERE phone_number_id = ? AND wa_id = ?",
                          (pnid, user)).fetchone()

    def _ensure_row(self, db: sqlite3.Connection, pnid: str, user: str,
                    now: float) -> sqlite3.Row:
        db.execute("INSERT OR IGNORE INTO permissions (phone_number_id, wa_id, updated_at) "
                   "VALUES (?, ?, ?)", (pnid, user, now))
        row = self._row(db, pnid, user)
        assert row is not None
        return row

    def _set_permission(self, db: sqlite3.Connection, pnid: str, user: str, status: str,
                        expires_at: float | None, source: str | None, now: float) -> None:
        before = self._ensure_row(db, pnid, user, now)
        granted = status != "no_permission"
        reset_streak = granted and before["status"] == "no_permission"
        db.execute(
            "UPDATE permissions SET status = ?, expires_at = ?, source = ?, updated_at = ?, "
            "unanswered_streak = CASE WHEN ? THEN 0 ELSE unanswered_streak END "
            "WHERE phone_number_id = ? AND wa_id = ?",
            (status, expires_at if status == "temporary" else None, source, now, reset_streak,
             pnid, user))
        if before["status"] != status:
            log.info("call permission %s/%s: %s -> %s (%s)", pnid, user, before["status"],
                     status, source)

    def _meta_max(self, row: sqlite3.Row | None, action: str) -> dict[float, int]:
        if row is None or not row["meta_limits"]:
            return {}
        try:
            raw = json.loads(row["meta_limits"]).get(action) or {}
            return {float(p): int(m) for p, m in raw.items()}
        except (ValueError, TypeError, AttributeError):
            return {}

    def _request_limits(self, row: sqlite3.Row | None) -> dict[float, int]:
        limits = {DAY: self.limits.requests_per_24h, WEEK: self.limits.requests_per_7d}
        limits.update(self._meta_max(row, ACTION_REQUEST))
        return limits

    def _call_limits(self, row: sqlite3.Row | None) -> dict[float, int]:
        limits = {DAY: self.limits.calls_per_24h}
        limits.update(self._meta_max(row, ACTION_CALL))
        return limits

    @staticmethod
    def _times(db: sqlite3.Connection, table: str, pnid: str, user: str,
               since: float) -> list[float]:
        if table == "permission_requests":
            sql = ("SELECT sent_at FROM permission_requests WHERE phone_number_id = ? AND "
                   "wa_id = ? AND counted = 1 AND sent_at > ? ORDER BY sent_at")
        else:
            sql = ("SELECT at FROM business_calls WHERE phone_number_id = ? AND wa_id = ? AND "
                   "answered = 1 AND counted = 1 AND at > ? ORDER BY at")
        return [r[0] for r in db.execute(sql, (pnid, user, since))]

    def _windows(self, db: sqlite3.Connection, table: str, pnid: str, user: str,
                 limits: dict[float, int], now: float) -> list[_Window]:
        longest = max(limits)
        times = self._times(db, table, pnid, user, now - longest)
        out = []
        for period in sorted(limits):
            maximum = limits[period]
            inside = [t for t in times if t > now - period]
            used = len(inside)
            next_at = None
            if used >= maximum:
                next_at = inside[used - maximum] + period if maximum > 0 else None
            out.append(_Window(period, maximum, used, next_at))
        return out

    def _country(self, pnid: str) -> str | None:
        if pnid in self._meta_country_blocked:
            return "the number's country (Meta answered 138013)"
        if not self.limits.enforce_country:
            return None
        return business_country_block(self._display_numbers.get(pnid))

    def _decide_call(self, db: sqlite3.Connection, pnid: str, user: str, now: float) -> Decision:
        country = self._country(pnid)
        if country:
            return Decision(False, "country_unsupported",
                            f"business-initiated calls are not available for business numbers "
                            f"of {country}", None, COUNTRY_UNSUPPORTED)
        row = self._row(db, pnid, user)
        if row is None or row["status"] == "no_permission":
            revoked = row is not None and row["source"] == "automatic"
            text = ("the user's call permission was revoked automatically after unanswered "
                    "calls" if revoked else "the user has not granted permission to call")
            return Decision(False, "no_permission", text + "; send a call permission request",
                            None, NO_PERMISSION)
        if row["status"] == "temporary" and row["expires_at"] is not None \
                and row["expires_at"] <= now:
            return Decision(False, "permission_expired",
                            f"the user's temporary call permission expired at "
                            f"{_when(row['expires_at'])}; send a new call permission request",
                            None, NO_PERMISSION)
        refusals = []
        for w in self._windows(db, "business_calls", pnid, user, self._call_limits(row), now):
            if w.used >= w.maximum:
                refusals.append((w.next_at, w))
        blocked = row["call_blocked_until"]
        if blocked is not None and blocked > now:
            refusals.append((blocked, None))
        if refusals:
            next_at = max((t for t, _ in refusals if t is not None), default=None)
            window = next((w for _, w in refusals if w is not None), None)
            count = f"{window.used} of {window.maximum}" if window else "the limit of"
            return Decision(False, "limit_calls_24h",
                            f"{count} connected business-initiated calls to this user in 24 h "
                            f"reached; next call allowed at {_when(next_at)}", next_at,
                            CALL_LIMIT)
        return OK

    def _decide_request(self, db: sqlite3.Connection, pnid: str, user: str,
                        now: float) -> Decision:
        country = self._country(pnid)
        if country:
            return Decision(False, "country_unsupported",
                            f"business-initiated calls are not available for business numbers "
                            f"of {country}, so a call permission request would be useless",
                            None, COUNTRY_UNSUPPORTED)
        row = self._row(db, pnid, user)
        if row is not None and row["status"] == "permanent":
            return Decision(False, "permanent_exists",
                            "the user has already granted permanent call permission",
                            None, PERMANENT_EXISTS)
        refusals: list[tuple[float | None, str, str]] = []
        for w in self._windows(db, "permission_requests", pnid, user,
                               self._request_limits(row), now):
            if w.used >= w.maximum:
                reason = "limit_requests_24h" if w.period <= DAY else "limit_requests_7d"
                span = "24 h" if w.period == DAY else (
                    "7 days" if w.period == WEEK else f"{w.period / HOUR:g} h")
                refusals.append((w.next_at, reason,
                                 f"{w.used} of {w.maximum} permission requests in {span}"))
        blocked = row["request_blocked_until"] if row is not None else None
        if blocked is not None and blocked > now:
            reason = "limit_requests_24h" if blocked - now <= DAY else "limit_requests_7d"
            refusals.append((blocked, reason, "Meta's permission request limit"))
        if refusals:
            refusals.sort(key=lambda r: -1.0 if r[0] is None else r[0])
            next_at, reason, what = refusals[-1]
            return Decision(False, reason,
                            f"{what} reached; next request allowed at {_when(next_at)}",
                            next_at, REQUEST_LIMIT)
        return OK

    def _record_request(self, db: sqlite3.Connection, pnid: str, user: str,
                        message_id: str | None, now: float) -> None:
        self._ensure_row(db, pnid, user, now)
        db.execute("INSERT OR IGNORE INTO permission_requests (phone_number_id, wa_id, "
                   "message_id, sent_at) VALUES (?, ?, ?, ?)", (pnid, user, message_id, now))

    def _reset_request_counters(self, db: sqlite3.Connection, pnid: str, user: str,
                                now: float) -> None:
        self._ensure_row(db, pnid, user, now)
        db.execute("UPDATE permission_requests SET counted = 0 WHERE phone_number_id = ? AND "
                   "wa_id = ? AND counted = 1 AND sent_at <= ?", (pnid, user, now))
        db.execute("UPDATE permissions SET request_blocked_until = NULL "
                   "WHERE phone_number_id = ? AND wa_id = ?", (pnid, user))

    def _record_call(self, db: sqlite3.Connection, pnid: str, user: str, answered: bool,
                     now: float, call_id: str | None) -> None:
        self._ensure_row(db, pnid, user, now)
        cur = db.execute("INSERT OR IGNORE INTO business_calls (phone_number_id, wa_id, call_id, "
                         "at, answered) VALUES (?, ?, ?, ?, ?)",
                         (pnid, user, call_id, now, int(answered)))
        if cur.rowcount == 0:
            return  # this call was already recorded
        if answered:
            db.execute("UPDATE permissions SET unanswered_streak = 0 "
                       "WHERE phone_number_id = ? AND wa_id = ?", (pnid, user))
            self._reset_request_counters(db, pnid, user, now)
            return
        db.execute("UPDATE permissions SET unanswered_streak = unanswered_streak + 1 "
                   "WHERE phone_number_id = ? AND wa_id = ?", (pnid, user))
        row = self._row(db, pnid, user)
        assert row is not None
        streak = row["unanswered_streak"]
        if streak >= self.limits.unanswered_to_revoke and row["status"] != "no_permission":
            log.warning("call permission %s/%s revoked: %d business calls in a row unanswered",
                        pnid, user, streak)
            self._set_permission(db, pnid, user, "no_permission", None, "automatic", now)
            # Meta's count restarts with the revocation (a new grant starts from zero).
            db.execute("UPDATE permissions SET unanswered_streak = 0 "
                       "WHERE phone_number_id = ? AND wa_id = ?", (pnid, user))
        elif streak == self.limits.unanswered_to_nudge:
            log.info("call permission %s/%s: %d unanswered calls in a row; WhatsApp now nudges "
                     "the user to revoke", pnid, user, streak)

    def _apply_reply(self, db: sqlite3.Connection, reply: PermissionReply, now: float) -> None:
        pnid, user = reply.phone_number_id, reply.user
        at = float(reply.timestamp) if reply.timestamp else now
        row = self._ensure_row(db, pnid, user, at)
        if reply.context_id:
            db.execute("UPDATE permission_requests SET response = ?, answered_at = ? "
                       "WHERE message_id = ?", (reply.response, at, reply.context_id))
        if reply.timestamp and row["updated_at"] > reply.timestamp and row["source"]:
            log.info("call permission %s/%s: reply %s at %s is older than the ledger's state; "
                     "ignored", pnid, user, reply.message_id, reply.timestamp)
            return
        automatic = reply.response_source == "automatic"
        if reply.response == "accept":
            if reply.is_permanent:
                self._set_permission(db, pnid, user, "permanent", None,
                                     "callback" if automatic else "user_action", at)
            else:
                expires = (float(reply.expiration_timestamp) if reply.expiration_timestamp
                           else at + self.limits.temporary_permission_s)
                self._set_permission(db, pnid, user, "temporary", expires,
                                     "callback" if automatic else "user_action", at)
            db.execute("UPDATE permissions SET unanswered_streak = 0 "
                       "WHERE phone_number_id = ? AND wa_id = ?", (pnid, user))
        elif reply.response == "reject":
            self._set_permission(db, pnid, user, "no_permission", None,
                                 "automatic" if automatic else "user_action", at)
            if automatic:
                db.execute("UPDATE permissions SET unanswered_streak = 0 "
                           "WHERE phone_number_id = ? AND wa_id = ?", (pnid, user))
        else:
            log.warning("call permission reply %s with unknown response %r ignored",
                        reply.message_id, reply.response)

    def _apply_meta(self, db: sqlite3.Connection, pnid: str, user: str,
                    answer: Mapping[str, Any], now: float) -> None:
        row = self._ensure_row(db, pnid, user, now)
        permission = answer.get("permission")
        if isinstance(permission, Mapping):
            status = str(permission.get("status") or "").lower()
            if status in STATUSES:
                expires = as_int(permission.get("expiration_time"))
                expires_at = float(expires) if expires is not None else (
                    row["expires_at"] if row["status"] == "temporary" else None)
                source = row["source"] if row["status"] == status and row["source"] \
                    else "meta_api"
                self._set_permission(db, pnid, user, status, expires_at, source, now)
            elif status:
                log.warning("call_permissions %s/%s: unknown status %r", pnid, user, status)
        live: dict[str, dict[str, int]] = {}
        for action in answer.get("actions") or ():
            if not isinstance(action, Mapping):
                continue
            name = str(action.get("action_name") or "")
            if name not in (ACTION_REQUEST, ACTION_CALL):
                continue
            windows: list[tuple[float, int, int | None, float | None]] = []
            for limit in action.get("limits") or ():
                if not isinstance(limit, Mapping):
                    continue
                period = period_seconds(limit.get("time_period"))
                maximum = as_int(limit.get("max_allowed"))
                if period is None or maximum is None:
                    continue
                expiry = as_int(limit.get("limit_expiration_time"))
                windows.append((period, maximum, as_int(limit.get("current_usage")),
                                float(expiry) if expiry else None))
                live.setdefault(name, {})[str(period)] = maximum
            self._reconcile(db, name, pnid, user, windows, now)
            column = "request_blocked_until" if name == ACTION_REQUEST else "call_blocked_until"
            can = action.get("can_perform_action")
            if can is True or str(can).lower() == "true":
                blocked = None
            else:
                # Blocked until the last exhausted limit frees; an exhausted limit without a
                # time is left to the reconciled counts (or the permission status) to explain.
                times = [e for p, m, u, e in windows
                         if u is not None and u >= m and e is not None and e > now]
                blocked = max(times) if times else None
            db.execute(f"UPDATE permissions SET {column} = ? "
                       "WHERE phone_number_id = ? AND wa_id = ?", (blocked, pnid, user))
        merged: dict[str, dict[str, int]] = {}
        if row["meta_limits"]:
            with contextlib.suppress(ValueError, TypeError):
                merged = dict(json.loads(row["meta_limits"]))
        merged.update(live)
        db.execute("UPDATE permissions SET meta_limits = ?, meta_checked_at = ? "
                   "WHERE phone_number_id = ? AND wa_id = ?",
                   (json.dumps(merged, sort_keys=True) if merged else None, now, pnid, user))

    def _reconcile(self, db: sqlite3.Connection, action: str, pnid: str, user: str,
                   windows: list[tuple[float, int, int | None, float | None]],
                   now: float) -> None:
        """Make the ledger's counted rows agree with Meta's ``current_usage`` per window.

        Windows go shortest first. Rows Meta does not count stop counting (oldest first); uses
        Meta counts that the ledger never saw become rows of origin 'meta', placed as late as
        the shorter windows allow (or so they lapse at ``limit_expiration_time``)."""
        if action == ACTION_REQUEST:
            table, at = "permission_requests", "sent_at"
            extra, columns, values = "", "(phone_number_id, wa_id, sent_at, origin)", "?, ?, ?"
        else:
            table, at = "business_calls", "at"
            extra = " AND answered = 1"
            columns, values = "(phone_number_id, wa_id, at, answered, origin)", "?, ?, ?, 1"
        shorter = 0.0
        for period, maximum, usage, expiry in sorted(windows):
            if usage is None or usage < 0:
                continue
            ids = [r[0] for r in db.execute(
                f"SELECT id FROM {table} WHERE phone_number_id = ? AND wa_id = ? AND counted = 1"
                f"{extra} AND {at} > ? AND {at} <= ? ORDER BY {at}, id",
                (pnid, user, now - period, now))]
            if len(ids) > usage:
                stale = ids[:len(ids) - usage]
                db.execute(f"UPDATE {table} SET counted = 0 WHERE id IN "
                           f"({','.join('?' * len(stale))})", stale)
            elif len(ids) < usage:
                t = now - shorter
                if expiry is not None and expiry > now and usage >= maximum:
                    t = min(t, expiry - period)
                t = max(t, now - period + 1.0)
                for _ in range(usage - len(ids)):
                    db.execute(f"INSERT INTO {table} {columns} VALUES ({values}, 'meta')",
                               (pnid, user, t))
            shorter = period

    def _apply_error(self, db: sqlite3.Connection, pnid: str, user: str, code: int,
                     now: float, retry_at: float | None) -> Decision:
        row = self._ensure_row(db, pnid, user, now)
        if code == NO_PERMISSION:
            if row["status"] != "no_permission":
                self._set_permission(db, pnid, user, "no_permission", None, "meta_api", now)
            return self._decide_call(db, pnid, user, now)
        if code == PERMANENT_EXISTS:
            self._set_permission(db, pnid, user, "permanent", None, "meta_api", now)
            return self._decide_request(db, pnid, user, now)
        if code == REQUEST_LIMIT:
            column, decide = "request_blocked_until", self._decide_request
        else:
            column, decide = "call_blocked_until", self._decide_call
        if retry_at is None:
            local = decide(db, pnid, user, now)
            retry_at = local.next_allowed_at if local.next_allowed_at is not None \
                and local.next_allowed_at > now else now + DAY
        db.execute(f"UPDATE permissions SET {column} = max(coalesce({column}, 0), ?) "
                   "WHERE phone_number_id = ? AND wa_id = ?", (retry_at, pnid, user))
        return decide(db, pnid, user, now)

    def _describe(self, db: sqlite3.Connection, pnid: str, user: str, now: float) -> dict:
        row = self._row(db, pnid, user)
        status = row["status"] if row is not None else "no_permission"
        expires_at = row["expires_at"] if row is not None else None
        expired = status == "temporary" and expires_at is not None and expires_at <= now

        def windows(table: str, limits: dict[float, int]) -> list[dict]:
            return [{"period_s": w.period, "used": w.used, "max": w.maximum,
                     "next_allowed_at": w.next_at}
                    for w in self._windows(db, table, pnid, user, limits, now)]

        recent = [dict(r) for r in db.execute(
            "SELECT message_id, sent_at, response, answered_at, counted = 1 AS counted "
            "FROM permission_requests WHERE phone_number_id = ? AND wa_id = ? AND origin = "
            "'gateway' ORDER BY sent_at DESC LIMIT 10", (pnid, user))]
        for r in recent:
            r["counted"] = bool(r["counted"])
        return {
            "phone_number_id": pnid,
            "wa_id": user,
            "permission": {
                "status": "no_permission" if expired else status,
                "recorded_status": status,
                "expires_at": expires_at,
                "expired": expired,
                "source": row["source"] if row is not None else None,
                "updated_at": row["updated_at"] if row is not None else None,
            },
            "unanswered_streak": row["unanswered_streak"] if row is not None else 0,
            "requests": {
                "windows": windows("permission_requests", self._request_limits(row)),
                "blocked_until": row["request_blocked_until"] if row is not None else None,
                "recent": recent,
            },
            "calls": {
                "windows": windows("business_calls", self._call_limits(row)),
                "blocked_until": row["call_blocked_until"] if row is not None else None,
            },
            "meta_checked_at": row["meta_checked_at"] if row is not None else None,
            "can_call": self._decide_call(db, pnid, user, now).to_dict(),
            "can_request": self._decide_request(db, pnid, user, now).to_dict(),
        }

    def _prune(self, db: sqlite3.Connection, before: float) -> int:
        a = db.execute("DELETE FROM permission_requests WHERE sent_at < ?", (before,)).rowcount
        b = db.execute("DELETE FROM business_calls WHERE at < ?", (before,)).rowcount
        return a + b


def _now(now: float | None) -> float:
    return time.time() if now is None else float(now)


def display_numbers_from_config(numbers: Any) -> dict[str, str]:
    """``{phone_number_id: display_number}`` from ``Config.numbers`` (those that have one)."""
    return {n.phone_number_id: n.display_number for n in numbers if n.display_number}


# ---- asking and calling -----------------------------------------------------------------------


META_REFRESH_S = 600.0
"""How long a "no permission" the ledger learned from Meta is trusted without asking again."""


async def decide_call(graph: GraphClient, ledger: PermissionLedger, pnid: str, user: str,
                      now: float | None = None) -> Decision:
    """May the business call this user now? The ledger answers; when it would refuse for lack
    of permission but has heard nothing from Meta about the pair lately (a new user, or a
    grant made outside our view, e.g. from the business profile), Meta's call_permissions
    decides first (§3), so a fresh ledger never blocks a user who did grant permission."""
    decision = await ledger.can_call(pnid, user, now)
    if decision.allowed or decision.reason not in ("no_permission", "permission_expired"):
        return decision
    state = await ledger.get(pnid, user, now)
    heard = max(state.get("meta_checked_at") or 0, state["permission"].get("updated_at") or 0)
    if heard and _now(now) - heard < META_REFRESH_S:
        return decision
    try:
        answer = await graph.get_call_permissions(pnid, user)
    except GraphError as exc:
        log.warning("call_permissions for +%s not available (%s); the ledger decides", user, exc)
        return decision
    await ledger.apply_meta_permissions(pnid, user, answer, now)
    return await ledger.can_call(pnid, user, now)


async def request_permission(graph: GraphClient, ledger: PermissionLedger, pnid: str, user: str,
                             body_text: str | None, *,
                             now: float | None = None) -> tuple[Decision, str | None]:
    """Send ``user`` a call permission request unless a §10 rule forbids it.

    Returns the decision and Meta's message id (None when refused). Refused locally: over the
    request limits (with the next allowed time), permanent permission already held, unsupported
    country. Meta's 138009 / 138017 are recorded and returned as refusals; any other Graph error
    is raised as :class:`GraphError`."""
    body = permission_request_body(user, body_text)
    async with ledger.pair_lock(pnid, user):
        decision = await ledger.can_request(pnid, user, now)
        if not decision.allowed:
            return decision, None
        try:
            message_id = await graph.send_message(pnid, body)
        except GraphError as exc:
            if exc.code in (REQUEST_LIMIT, PERMANENT_EXISTS):
                refused = await ledger.apply_meta_error(pnid, user, exc.code, now)
                if refused is not None and not refused.allowed:
                    return refused, None
                return Decision(False, "limit_requests_24h" if exc.code == REQUEST_LIMIT
                                else "permanent_exists", f"Meta refused: {exc.meta_message}",
                                None, exc.code), None
            raise
        await ledger.record_request_sent(pnid, user, message_id, now)
        return OK, message_id


async def send_call_button(graph: GraphClient, pnid: str, user: str, body_text: str,
                           display_text: str = "Call Now", ttl_minutes: int = 10080,
                           payload: str | None = None) -> str:
    """Send the "call us" button (§5); returns Meta's message id. The payload comes back as
    ``cta_payload`` on the user's call. Raises ValueError (naming the field) before any request
    when a parameter is out of Meta's bounds."""
    body = voice_call_body(user, body_text, display_text, ttl_minutes, payload)
    return await graph.send_message(pnid, body)
