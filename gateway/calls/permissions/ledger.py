"""The outbound permission ledger: what the gateway knows of each (business number, user) pair,
and the rules applied to it.

:class:`PermissionLedger` remembers -- through a :class:`~.storage.LedgerStore` -- the
permission and its expiry, the requests sent, the business-initiated calls and their results,
and answers "may we call?" / "may we ask?" with the :mod:`~.rules`. Sources of truth, weakest
first: the ledger's own bookkeeping (requests sent, call results, the unanswered streak),
permission-reply webhooks, and Meta's own answers (the ``call_permissions`` GET and error
codes). Meta's answer wins whenever it disagrees.

:func:`open_ledger` is how the gateway and the CLI open it: from the config, with each number's
display number, so both apply the country rule (138013).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gateway.calls.permissions import reconcile, rules
from gateway.calls.permissions.rules import (
    CALL_LIMIT,
    COUNTRY_UNSUPPORTED,
    DAY,
    NO_PERMISSION,
    PERMANENT_EXISTS,
    REQUEST_LIMIT,
    WEEK,
    Decision,
    Limits,
    PairState,
    PermissionChange,
)
from gateway.calls.permissions.sqlite_store import SqliteLedgerStore
from gateway.calls.permissions.storage import CALLS, REQUESTS, LedgerStore, User
from gateway.whatsapp.events import PermissionReply, UserIdChanged
from gateway.whatsapp.identity import WhatsAppUser, user_key
from gateway.write_behind import WriteBehind

if TYPE_CHECKING:
    from gateway.config import Config

log = logging.getLogger(__name__)


def display_numbers_from_config(numbers: Any) -> dict[str, str]:
    """``{phone_number_id: display_number}`` from ``Config.numbers`` (those that have one)."""
    return {n.phone_number_id: n.display_number for n in numbers if n.display_number}


def ledger_store_for(target: str | Path) -> LedgerStore:
    """A ``postgresql://`` URL: PostgreSQL (shared by several gateways); anything else is an
    SQLite file path."""
    from gateway.store import backend_for, is_postgres_url

    if not is_postgres_url(target):
        return SqliteLedgerStore(target)
    try:
        from gateway.calls.permissions.postgres_store import PostgresLedgerStore
    except ImportError:
        backend_for(target)  # the call store's StoreUnavailable: which package, which extra
        raise
    return PostgresLedgerStore(str(target))


async def open_ledger(config: Config, *, limits: Limits | None = None) -> PermissionLedger:
    """The ledger of ``config``'s database -- with the call records in PostgreSQL when
    ``store.url`` is set, so every gateway of the number counts against one set of Meta's
    limits -- knowing its numbers' display numbers (without them the country rule cannot
    refuse a +1 number's calls before Meta does)."""
    return await PermissionLedger.open(
        config.store.calls_at, limits=limits,
        display_numbers=display_numbers_from_config(config.numbers))


class PermissionLedger:
    """Per (business phone_number_id, user) permissions and limits.

    Every method that reads or writes the store is a coroutine; ``now`` (unix seconds)
    defaults to :attr:`clock`; tests pass it."""

    def __init__(self, store: LedgerStore, *, limits: Limits | None = None,
                 display_numbers: Mapping[str, str] | None = None,
                 clock: Callable[[], float] = time.time):
        self.store = store
        self.limits = limits or Limits()
        self.clock = clock
        """Unix time "now" when a method is given none: tests move it (a 7-day-old grant)."""
        self._display_numbers: dict[str, str] = dict(display_numbers or {})
        self._meta_country_blocked: set[str] = set()
        self.writes = WriteBehind(f"permission ledger {store.where}",
                                  storage_errors=store.storage_errors)
        """What happened to a pair (calls, requests, replies) that the disk (or a restarting
        server) refused to take: kept in order and written later, so an outage neither ends a
        call nor forgets it."""
        self._locks: dict[tuple[str, str], list[Any]] = {}

    # ---- life ----------------------------------------------------------------------------

    @classmethod
    async def open(cls, target: str | Path, *, limits: Limits | None = None,
                   display_numbers: Mapping[str, str] | None = None,
                   clock: Callable[[], float] = time.time) -> PermissionLedger:
        """Open the SQLite ledger at a path (creating the file, its folder and the tables) or
        the PostgreSQL one at a ``postgresql://`` URL (migrating its tables)."""
        store = ledger_store_for(target)
        await store.open()
        return cls(store, limits=limits, display_numbers=display_numbers, clock=clock)

    async def close(self) -> None:
        """Write what is waiting, then close the store. Safe to call twice."""
        await self.writes.close()
        await self.store.close()

    def _now(self, now: float | None) -> float:
        return self.clock() if now is None else float(now)

    # ---- configuration -------------------------------------------------------------------

    def set_display_number(self, phone_number_id: str, display_number: str | None) -> None:
        """Tell the ledger a business number's display number (for the country rule)."""
        if display_number:
            self._display_numbers[phone_number_id] = display_number
        else:
            self._display_numbers.pop(phone_number_id, None)

    def _country(self, pnid: str) -> str | None:
        if pnid in self._meta_country_blocked:
            return "the number's country (Meta answered 138013)"
        if not self.limits.enforce_country:
            return None
        return rules.business_country_block(self._display_numbers.get(pnid))

    @contextlib.asynccontextmanager
    async def pair_lock(self, phone_number_id: str, user: User) -> AsyncIterator[None]:
        """Serialise check-then-act for one pair (check, send, record) within this process."""
        key = (phone_number_id, user.key if isinstance(user, WhatsAppUser) else user_key(user))
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

    async def _state(self, pnid: str, user: User, now: float, *,
                     detail: bool = False) -> PairState:
        return await self.store.state(pnid, user, now, rules.LONGEST_WINDOW, detail=detail)

    def _decide_call(self, pnid: str, now: float) -> Callable[[PairState], Decision]:
        return lambda state: rules.decide_call(state, self.limits, self._country(pnid), now)

    def _decide_request(self, pnid: str, now: float) -> Callable[[PairState], Decision]:
        return lambda state: rules.decide_request(state, self.limits, self._country(pnid), now)

    async def can_call(self, phone_number_id: str, user: User,
                       now: float | None = None) -> Decision:
        """May the business start a call to ``user`` now (before ``POST /calls connect``)?"""
        now = self._now(now)
        return self._decide_call(phone_number_id, now)(
            await self._state(phone_number_id, user, now))

    async def can_request(self, phone_number_id: str, user: User,
                          now: float | None = None) -> Decision:
        """May the business send ``user`` a call permission request now?"""
        now = self._now(now)
        return self._decide_request(phone_number_id, now)(
            await self._state(phone_number_id, user, now))

    async def get(self, phone_number_id: str, user: User, now: float | None = None) -> dict:
        """Everything the ledger knows of the pair, JSON-ready, for the API."""
        now = self._now(now)
        state = await self._state(phone_number_id, user, now, detail=True)
        return self._describe(phone_number_id, state, now)

    def _describe(self, pnid: str, state: PairState, now: float) -> dict:
        def windows(times: tuple[tuple[int, float], ...], limits: dict[float, int]) -> list:
            return [{"period_s": w.period, "used": w.used, "max": w.maximum,
                     "next_allowed_at": w.next_at} for w in rules.windows(times, limits, now)]

        return {
            "phone_number_id": pnid,
            "wa_id": state.key,
            "user_ids": list(state.user_ids),
            "permission": {
                "status": "no_permission" if state.expired(now) else state.status,
                "recorded_status": state.status,
                "expires_at": state.expires_at,
                "expired": state.expired(now),
                "source": state.source,
                "updated_at": state.updated_at,
            },
            "unanswered_streak": state.unanswered_streak,
            "requests": {
                "windows": windows(state.requests, rules.request_limits(state, self.limits)),
                "blocked_until": state.request_blocked_until,
                "recent": [dict(r) for r in state.recent_requests],
            },
            "calls": {
                "windows": windows(state.calls, rules.call_limits(state, self.limits)),
                "blocked_until": state.call_blocked_until,
            },
            "meta_checked_at": state.meta_checked_at,
            "can_call": self._decide_call(pnid, now)(state).to_dict(),
            "can_request": self._decide_request(pnid, now)(state).to_dict(),
        }

    async def key_for(self, user: User) -> str:
        """The key the ledger files ``user`` under (for logs and the API)."""
        return await self.store.key_for(user)

    # ---- a permission request: decided and counted at once -----------------------------------

    async def reserve_request(self, phone_number_id: str, user: User,
                              now: float | None = None) -> tuple[Decision, int | None]:
        """Decide whether a request may be sent and, if so, count it in the same store
        transaction (so two gateways cannot both pass the 1-per-24 h rule). The reservation is
        then :meth:`confirm_request`-ed or :meth:`release_request`-d.

        A store that cannot write (full disk) still answers from a read: the reservation is
        then None and the sent request is recorded through the write-behind queue, as
        before there were reservations."""
        now = self._now(now)
        decide = self._decide_request(phone_number_id, now)
        try:
            return await self.store.reserve_request(phone_number_id, user, now,
                                                    rules.LONGEST_WINDOW, decide)
        except self.store.storage_errors as exc:
            log.warning("permission ledger: cannot reserve the request (%s); deciding from a "
                        "read", exc)
            return decide(await self._state(phone_number_id, user, now)), None

    async def confirm_request(self, phone_number_id: str, user: User, reservation: int | None,
                              message_id: str | None, now: float | None = None) -> None:
        """Meta accepted the request :meth:`reserve_request` counted (``messages[0].id``)."""
        if reservation is None:
            await self.record_request_sent(phone_number_id, user, message_id, now)
            return
        await self.writes.write(self.writes.key(),
                                lambda: self.store.confirm_request(reservation, message_id))

    async def release_request(self, reservation: int | None) -> None:
        """The reserved request was not sent (Meta refused it, or could not be reached)."""
        if reservation is not None:
            await self.writes.write(self.writes.key(),
                                    lambda: self.store.release_request(reservation))

    # ---- recording -----------------------------------------------------------------------

    async def _record(self, write: Callable[[], Any]) -> None:
        """A fact to remember (its time already fixed): written now, or kept and written when
        the disk takes it again. Never raises a storage error, so a call in progress is never
        ended by the ledger."""
        await self.writes.write(self.writes.key(), write)

    async def record_request_sent(self, phone_number_id: str, user: User, message_id: str | None,
                                  now: float | None = None) -> None:
        """A permission request message was accepted by Meta (``messages[0].id``)."""
        now = self._now(now)
        await self._record(lambda: self.store.record_request(phone_number_id, user, message_id,
                                                             now))

    async def record_call_result(self, phone_number_id: str, user: User, answered: bool,
                                 now: float | None = None, *, call_id: str | None = None) -> None:
        """A business-initiated call that reached the user ended: answered or not.

        ``answered`` (ACCEPTED / connected) counts toward the 24 h call limit, resets the
        unanswered streak and resets the permission-request counters. Not answered (declined,
        no answer) extends the streak; at the revoke threshold the permission is marked revoked,
        as Meta does. ``call_id`` (the wacid) makes a repeated report for the same call a no-op.
        """
        now, limits = self._now(now), self.limits
        await self._record(lambda: self.store.record_call(
            phone_number_id, user, bool(answered), now, call_id, limits.unanswered_to_revoke,
            limits.unanswered_to_nudge))

    async def record_user_call(self, phone_number_id: str, user: User,
                               now: float | None = None) -> None:
        """A user-initiated call was connected: §10 "any connected call" resets the
        permission-request counters. Does not count toward the business-call limits."""
        now = self._now(now)
        await self._record(lambda: self.store.reset_request_counters(phone_number_id, user, now))

    async def apply_reply(self, reply: PermissionReply, now: float | None = None) -> None:
        """A ``call_permission_reply`` webhook (§6): grant, refusal or automatic revocation."""
        at = float(reply.timestamp) if reply.timestamp else self._now(now)
        expires = float(reply.expiration_timestamp) if reply.expiration_timestamp else None
        change = rules.reply_change(reply.response, permanent=bool(reply.is_permanent),
                                    automatic=reply.response_source == "automatic", at=at,
                                    expires_at=expires, limits=self.limits)
        if change is None:
            log.warning("call permission reply %s with unknown response %r ignored",
                        reply.message_id, reply.response)
        await self._record(lambda: self.store.apply_reply(
            reply.phone_number_id, reply.who, at, change, reply.context_id, reply.response,
            reply.timestamp))

    async def apply_meta_permissions(self, phone_number_id: str, user: User,
                                     response_json: Mapping[str, Any],
                                     now: float | None = None) -> None:
        """Meta's ``GET call_permissions`` answer (§3): it overrides the ledger."""
        now = self._now(now)
        answer = reconcile.parse(response_json)
        await self.store.apply_meta(phone_number_id, user, now,
                                    max(rules.LONGEST_WINDOW, answer.longest),
                                    lambda state: reconcile.changes(answer, state, now))

    async def apply_meta_error(self, phone_number_id: str, user: User, code: int | None,
                               now: float | None = None, *,
                               retry_at: float | None = None) -> Decision | None:
        """Meta refused an action with ``code``; bring the ledger in line and return the new
        decision for that action (None for codes that say nothing about permissions).

        138006: there is no permission. 138009 / 138012: the request / call limit is reached
        (``retry_at``: when Meta says the next one is allowed, e.g. 138012's ``error_data``).
        138017: a permanent permission exists. 138013: the number's country cannot call."""
        now = self._now(now)
        if code == COUNTRY_UNSUPPORTED:
            self._meta_country_blocked.add(phone_number_id)
            return await self.can_call(phone_number_id, user, now)
        if code == NO_PERMISSION:
            state = await self._state(phone_number_id, user, now)
            if state.status != "no_permission" or not state.exists:  # Meta was heard: now
                await self.store.set_permission(phone_number_id, user, PermissionChange(
                    "no_permission", None, "meta_api", now))
            return await self.can_call(phone_number_id, user, now)
        if code == PERMANENT_EXISTS:
            await self.store.set_permission(phone_number_id, user, PermissionChange(
                "permanent", None, "meta_api", now))
            return await self.can_request(phone_number_id, user, now)
        if code not in (REQUEST_LIMIT, CALL_LIMIT):
            return None
        kind, decide = (REQUESTS, self.can_request) if code == REQUEST_LIMIT \
            else (CALLS, self.can_call)
        if retry_at is None:
            local = await decide(phone_number_id, user, now)
            retry_at = local.next_allowed_at if local.next_allowed_at is not None \
                and local.next_allowed_at > now else now + DAY
        await self.store.block(phone_number_id, user, kind, retry_at, now)
        return await decide(phone_number_id, user, now)

    async def change_user_id(self, change: UserIdChanged) -> None:
        """``user_changed_user_id`` (docs/meta-2026-identity.md §1): the user got a new BSUID.
        Links and rows of the old BSUID move to the new one.

        ASSUMPTION (unconfirmed by Meta): the grant and the counters follow the person to the
        new BSUID. If Meta disagrees, its 138006 / ``call_permissions`` answer corrects the
        ledger on the next call (Meta's answer always wins)."""
        await self.store.change_user_id(change, self.clock())
        log.info("user %s is now %s (user_changed_user_id)", change.old_user_id,
                 change.new_user_id)

    async def prune(self, now: float | None = None, keep_s: float = 30 * DAY) -> int:
        """Delete request and call rows older than ``keep_s`` (they no longer count toward any
        limit once older than the longest window); returns how many rows went."""
        return await self.store.prune(self._now(now) - max(keep_s, WEEK + DAY))
