"""Where the ledger keeps what it knows of each pair: the seam between the rules and a database.

:class:`LedgerStore` is what :class:`~gateway.calls.permissions.ledger.PermissionLedger` needs
of a database: :class:`~gateway.calls.permissions.sqlite_store.SqliteLedgerStore` (the SQLite
file at ``store.path``, one gateway on one box) or
:class:`~gateway.calls.permissions.postgres_store.PostgresLedgerStore` (``store.url``, shared by
several gateways). Both hold the same four tables; the pure pieces they share are at the end.

Every method is one transaction. Where a rule check and the write it allows must not be
separated -- two gateways asking the same user for permission at once must not both pass the
1-per-24 h rule (issue 10) -- the store takes the rule as a pure function of the pair's
:class:`PairState` and runs it inside that transaction (:meth:`LedgerStore.reserve_request`,
:meth:`LedgerStore.apply_meta`); a backend serialises per pair as it can (SQLite: one writer at a
time; PostgreSQL: a transaction-scoped advisory lock keyed by the pair).

Users are named as callers name them (:data:`User`); the store keys them as
:mod:`gateway.whatsapp.identity` decides -- the canonical number, or the BSUID of a user Meta gave
no number (docs/meta-2026-identity.md §1) -- and links a BSUID to its number once a webhook gave
both, so a reply or a call that names only one of them lands on the same pair. Write methods
link; reads only look up.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Mapping
from typing import Any, Protocol

from gateway.calls.permissions.reconcile import MetaChanges
from gateway.calls.permissions.rules import (
    ACTION_CALL,
    ACTION_REQUEST,
    Decision,
    PairState,
    PermissionChange,
)
from gateway.sqlite_thread import DatabaseClosed
from gateway.whatsapp.events import UserIdChanged
from gateway.whatsapp.identity import WhatsAppUser

User = str | WhatsAppUser
"""A user as callers name one: a number (any form), a BSUID, or what a webhook said."""

REQUESTS, CALLS = "requests", "calls"
"""The two kinds of use the limits count (:meth:`LedgerStore.block`)."""

USES = {ACTION_REQUEST: ("permission_requests", "sent_at", ""),
        ACTION_CALL: ("business_calls", "at", " AND answered = 1")}
"""Per Meta action: the table of its uses, their time column, and which of them count (the
same SQL text in both backends)."""

log = logging.getLogger(__name__)


class LedgerClosed(DatabaseClosed):
    """The ledger was used after it was closed (or before it was opened)."""


class LedgerStore(Protocol):
    """The ledger's storage. ``now`` is always given (unix seconds): the store reads no clock."""

    where: str
    """For messages: the file, or the URL without its password."""
    storage_errors: tuple[type[BaseException], ...]
    """Errors that mean "cannot take this now, try again" (a full disk, a server restarting):
    the ledger's :class:`~gateway.write_behind.WriteBehind` keeps those writes."""

    async def open(self) -> None:
        """Create what is missing (tables, folders); safe on an existing store."""

    async def close(self) -> None:
        """Safe to call twice."""

    async def key_for(self, user: User) -> str:
        """The key the store files ``user`` under."""

    async def state(self, pnid: str, user: User, now: float, horizon: float, *,
                    detail: bool = False) -> PairState:
        """The pair as it is, with the counted uses of the last ``horizon`` seconds (or longer,
        when Meta's stored limits have a longer window). ``detail``: also the recent requests
        and the linked BSUIDs (for the API)."""

    async def reserve_request(self, pnid: str, user: User, now: float, horizon: float,
                              decide: Callable[[PairState], Decision]
                              ) -> tuple[Decision, int | None]:
        """Atomically: ``decide`` on the pair's state and, when it allows, record a request
        sent at ``now`` (not yet confirmed by Meta). Returns the decision and the request's
        id (None when refused)."""

    async def confirm_request(self, request_id: int, message_id: str | None) -> None:
        """Meta accepted the reserved request: its ``messages[0].id``."""

    async def release_request(self, request_id: int) -> None:
        """Meta did not take the reserved request: it never happened."""

    async def record_request(self, pnid: str, user: User, message_id: str | None,
                             now: float) -> None:
        """A request sent without a reservation (the same message id twice is one request)."""

    async def record_call(self, pnid: str, user: User, answered: bool, now: float,
                          call_id: str | None, revoke_after: int, nudge_at: int) -> None:
        """A business-initiated call ended. Atomically: the call is counted once per
        ``call_id``; answered, it resets the unanswered streak and the request counters;
        unanswered, it extends the streak, and at ``revoke_after`` in a row the permission is
        revoked (source ``automatic``) and the streak starts again."""

    async def reset_request_counters(self, pnid: str, user: User, now: float) -> None:
        """A connected call (§10): the requests so far stop counting, Meta's block is lifted."""

    async def apply_reply(self, pnid: str, user: User, at: float,
                          change: PermissionChange | None, answers: str | None,
                          response: str, newer_than: float | None) -> None:
        """A ``call_permission_reply`` at ``at``: the request ``answers`` (its message id) is
        marked answered with ``response``; the permission becomes ``change`` unless the pair
        already holds a state set after ``newer_than`` (the reply's own time, when it has
        one)."""

    async def set_permission(self, pnid: str, user: User, change: PermissionChange) -> None:
        """Meta said so (an error code): the permission becomes ``change``."""

    async def block(self, pnid: str, user: User, kind: str, until: float, now: float) -> None:
        """Meta refused ``kind`` (:data:`REQUESTS` or :data:`CALLS`): not before ``until``
        (a later block already known is kept)."""

    async def apply_meta(self, pnid: str, user: User, now: float, horizon: float,
                         plan: Callable[[PairState], MetaChanges]) -> None:
        """Atomically: ``plan`` Meta's ``call_permissions`` answer against the pair's state,
        and write what it changes."""

    async def change_user_id(self, change: UserIdChanged, now: float) -> None:
        """``user_changed_user_id``: the old BSUID's links and pairs move to the new one."""

    async def prune(self, before: float) -> int:
        """Delete request and call rows older than ``before``; returns how many went."""


# ---- pure pieces both backends share -----------------------------------------------------------


def meta_limits_from_json(text: str | None) -> dict[str, dict[float, int]]:
    """``permissions.meta_limits``: Meta's live ``max_allowed`` per action and window (s)."""
    if not text:
        return {}
    try:
        return {str(action): {float(p): int(m) for p, m in (limits or {}).items()}
                for action, limits in json.loads(text).items()}
    except (ValueError, TypeError, AttributeError):
        return {}


def meta_limits_to_json(limits: Mapping[str, Mapping[float, int]]) -> str | None:
    text = {action: {str(p): m for p, m in windows.items()} for action, windows in limits.items()}
    return json.dumps(text, sort_keys=True) if text else None


def pair_state(key: str, row: Mapping[str, Any] | None, uses: Mapping[str, tuple],
               recent: tuple[dict[str, Any], ...] = (), user_ids: tuple[str, ...] = ()
               ) -> PairState:
    """The :class:`PairState` of a ``permissions`` row (None: the pair has none yet) and the
    uses that count (:data:`USES`)."""
    common = {"key": key, "requests": uses[ACTION_REQUEST], "calls": uses[ACTION_CALL],
              "recent_requests": recent, "user_ids": user_ids}
    if row is None:
        return PairState(**common)
    return PairState(exists=True, status=row["status"], expires_at=row["expires_at"],
                     source=row["source"], updated_at=row["updated_at"],
                     unanswered_streak=row["unanswered_streak"],
                     request_blocked_until=row["request_blocked_until"],
                     call_blocked_until=row["call_blocked_until"],
                     meta_limits=meta_limits_from_json(row["meta_limits"]),
                     meta_checked_at=row["meta_checked_at"], **common)


def resets_streak(before_status: str, change: PermissionChange) -> bool:
    """A grant after no permission starts a new unanswered streak (as ``reset_streak`` does)."""
    return change.reset_streak or (change.status != "no_permission"
                                   and before_status == "no_permission")


def after_unanswered(pnid: str, key: str, streak: int, status: str, now: float,
                     revoke_after: int, nudge_at: int) -> PermissionChange | None:
    """§10: the permission revoked by ``streak`` unanswered calls in a row, or None."""
    if streak >= revoke_after and status != "no_permission":
        log.warning("call permission %s/%s revoked: %d business calls in a row unanswered",
                    pnid, key, streak)
        # Meta's count restarts with the revocation (a new grant starts from zero).
        return PermissionChange("no_permission", None, "automatic", now, reset_streak=True)
    if streak == nudge_at:
        log.info("call permission %s/%s: %d unanswered calls in a row; WhatsApp now nudges "
                 "the user to revoke", pnid, key, streak)
    return None
