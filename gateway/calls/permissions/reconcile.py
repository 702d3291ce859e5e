"""Meta's ``GET call_permissions`` answer (docs/meta-calling.md §3), and what it changes in the
ledger: Meta's answer wins whenever it disagrees with the ledger's own bookkeeping.

The answer names the permission (status, expiry) and, per action (``send_call_permission_
request``, ``start_call``), whether it may be performed now and each limit window's
``max_allowed``, ``current_usage`` and ``limit_expiration_time``. :func:`parse` reads it
leniently; :func:`changes` turns it, with the pair's current :class:`PairState`, into the
:class:`MetaChanges` the storage applies in one transaction. Both are pure.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from gateway.calls.permissions.rules import (
    ACTION_CALL,
    ACTION_REQUEST,
    STATUSES,
    PairState,
    PermissionChange,
    period_seconds,
)
from gateway.whatsapp.events import as_int

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class MetaWindow:
    """One of Meta's limits for an action."""

    period: float
    maximum: int
    usage: int | None
    expiry: float | None
    """``limit_expiration_time``: when the window's oldest counted use lapses."""


@dataclass(frozen=True)
class MetaAction:
    name: str
    windows: tuple[MetaWindow, ...]
    can_perform: bool


@dataclass(frozen=True)
class MetaAnswer:
    """The parts of a ``call_permissions`` answer the ledger uses."""

    status: str | None
    """One of :data:`STATUSES`, or None when Meta named none (or one we do not know)."""
    expires_at: float | None
    actions: tuple[MetaAction, ...] = ()

    @property
    def longest(self) -> float:
        """The longest window Meta reported (0 without any)."""
        return max((w.period for a in self.actions for w in a.windows), default=0.0)


@dataclass(frozen=True)
class MetaChanges:
    """What the storage writes for one answer, in one transaction."""

    permission: PermissionChange | None
    stale: Mapping[str, tuple[int, ...]] = field(default_factory=dict)
    """Per action: ledger rows (ids) Meta does not count, which stop counting."""
    unseen: Mapping[str, tuple[float, ...]] = field(default_factory=dict)
    """Per action: times of uses Meta counts that the ledger never saw (rows of origin 'meta',
    e.g. requests sent by another tool)."""
    blocked_until: Mapping[str, float | None] = field(default_factory=dict)
    """Per action Meta listed: until when Meta says it is blocked (None: not blocked)."""
    meta_limits: Mapping[str, Mapping[float, int]] = field(default_factory=dict)
    """Meta's live ``max_allowed`` per action and window, merged with what was known."""
    checked_at: float = 0.0


def parse(answer: Mapping[str, Any]) -> MetaAnswer:
    """The answer's permission and actions; what is malformed is skipped (and logged)."""
    status: str | None = None
    expires_at: float | None = None
    permission = answer.get("permission")
    if isinstance(permission, Mapping):
        named = str(permission.get("status") or "").lower()
        if named in STATUSES:
            status = named
            # Meta's sample says expiration_time, its field table expiration: read either
            # (docs/meta-2026-identity.md, "Unconfirmed").
            expires = as_int(permission.get("expiration_time", permission.get("expiration")))
            expires_at = float(expires) if expires is not None else None
        elif named:
            log.warning("call_permissions: unknown status %r", named)
    actions = []
    for action in answer.get("actions") or ():
        if not isinstance(action, Mapping):
            continue
        name = str(action.get("action_name") or "")
        if name not in (ACTION_REQUEST, ACTION_CALL):
            continue
        windows = []
        for limit in action.get("limits") or ():
            if not isinstance(limit, Mapping):
                continue
            period = period_seconds(limit.get("time_period"))
            maximum = as_int(limit.get("max_allowed"))
            if period is None or maximum is None:
                continue
            expiry = as_int(limit.get("limit_expiration_time"))
            windows.append(MetaWindow(period, maximum, as_int(limit.get("current_usage")),
                                      float(expiry) if expiry else None))
        can = action.get("can_perform_action")
        actions.append(MetaAction(name, tuple(windows),
                                  can is True or str(can).lower() == "true"))
    return MetaAnswer(status, expires_at, tuple(actions))


def changes(answer: MetaAnswer, state: PairState, now: float) -> MetaChanges:
    """What ``answer`` changes in the pair ``state`` at ``now``.

    The status is Meta's (the expiry kept when Meta gives none for a temporary grant; the
    source kept when the status does not change). An action Meta says can be performed is not
    blocked; one it says cannot is blocked until its last exhausted limit frees (an exhausted
    limit without a time is left to the reconciled counts, or the status, to explain)."""
    permission = None
    if answer.status is not None:
        expires_at = answer.expires_at if answer.expires_at is not None else (
            state.expires_at if state.status == "temporary" else None)
        source = state.source if state.status == answer.status and state.source \
            else "meta_api"
        permission = PermissionChange(answer.status, expires_at, source, now)
    stale: dict[str, tuple[int, ...]] = {}
    unseen: dict[str, tuple[float, ...]] = {}
    blocked: dict[str, float | None] = {}
    live: dict[str, dict[float, int]] = {}
    for action in answer.actions:
        for w in action.windows:
            live.setdefault(action.name, {})[w.period] = w.maximum
        rows = state.requests if action.name == ACTION_REQUEST else state.calls
        stale[action.name], unseen[action.name] = usage(rows, action.windows, now)
        if action.can_perform:
            blocked[action.name] = None
        else:
            times = [w.expiry for w in action.windows if w.usage is not None
                     and w.usage >= w.maximum and w.expiry is not None and w.expiry > now]
            blocked[action.name] = max(times) if times else None
    merged = {name: dict(limits) for name, limits in state.meta_limits.items()}
    merged.update(live)
    return MetaChanges(permission, stale, unseen, blocked, merged, now)


def usage(rows: tuple[tuple[int, float], ...], windows: tuple[MetaWindow, ...],
          now: float) -> tuple[tuple[int, ...], tuple[float, ...]]:
    """Make the ledger's counted ``rows`` (id, time) agree with Meta's ``current_usage`` per
    window: returns the ids that stop counting and the times of the uses to add.

    Windows go shortest first, each seeing what the shorter ones changed. Rows Meta does not
    count stop counting, oldest first; uses Meta counts that the ledger never saw are placed
    as late as the shorter windows allow (or so they lapse at ``limit_expiration_time``)."""
    counted: list[tuple[float, int, int]] = [(t, 0, i) for i, t in rows]
    """(time, 0 for a ledger row / 1 for an added use, id or index): the SQL order by (at, id)."""
    added: list[float | None] = []
    stale: list[int] = []
    shorter = 0.0
    for w in sorted(windows, key=lambda w: (w.period, w.maximum, w.usage or 0, w.expiry or 0)):
        if w.usage is None or w.usage < 0:
            continue
        inside = sorted(c for c in counted if now - w.period < c[0] <= now)
        if len(inside) > w.usage:
            for c in inside[:len(inside) - w.usage]:
                counted.remove(c)
                if c[1] == 0:
                    stale.append(c[2])
                else:
                    added[c[2]] = None
        elif len(inside) < w.usage:
            t = now - shorter
            if w.expiry is not None and w.expiry > now and w.usage >= w.maximum:
                t = min(t, w.expiry - w.period)
            t = max(t, now - w.period + 1.0)
            for _ in range(w.usage - len(inside)):
                counted.append((t, 1, len(added)))
                added.append(t)
        shorter = w.period
    return tuple(stale), tuple(t for t in added if t is not None)
