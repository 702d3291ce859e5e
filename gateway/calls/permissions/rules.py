"""Meta's call-permission rules as pure functions of a pair's state, the time and the limits.

A business may call a WhatsApp user only with the user's permission, and both the permission
requests and the calls are rate-limited per (business number, user) pair (docs/meta-calling.md
§3, §5, §6, §10, §11). Nothing here reads a clock or a database: :func:`decide_call` and
:func:`decide_request` take a :class:`PairState` snapshot (what the ledger's storage holds for
the pair) and answer with a :class:`Decision` that carries the code Meta would have returned
and, for limits, when the action becomes possible again. :class:`RefusalReason` is the one list
of reasons: the API answers with them and the metrics label refusals by them.
"""

from __future__ import annotations

import re
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

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


class RefusalReason(StrEnum):
    """Why the rules refuse a call or a permission request: the API's ``reason``, the
    ``reason`` label of the refusal metric, and the dial status the dialplan sees."""

    NO_PERMISSION = "no_permission"  # 138006
    PERMISSION_EXPIRED = "permission_expired"  # 138006: the 7-day temporary grant ran out
    LIMIT_CALLS_24H = "limit_calls_24h"  # 138012
    LIMIT_REQUESTS_24H = "limit_requests_24h"  # 138009
    LIMIT_REQUESTS_7D = "limit_requests_7d"  # 138009
    PERMANENT_EXISTS = "permanent_exists"  # 138017: asking again is pointless
    COUNTRY_UNSUPPORTED = "country_unsupported"  # 138013

    @property
    def is_limit(self) -> bool:
        """A rate limit (HTTP 429 at the API: the action is possible again later)."""
        return self.value.startswith("limit_")


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
    """``ok``, or a :class:`RefusalReason`."""
    message: str
    next_allowed_at: float | None = None
    """Unix time when the refused action becomes possible again, when that is known."""
    meta_code: int | None = None
    """The §11 code Meta would have answered with."""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


OK = Decision(True, "ok", "allowed")


@dataclass(frozen=True)
class PairState:
    """What the ledger holds for one (business number, user) pair at one moment: the row of
    ``permissions`` (defaults when there is none) and the uses that still count, oldest first."""

    key: str
    """The user as the ledger keys them (canonical number, or BSUID)."""
    exists: bool = False
    status: str = "no_permission"
    expires_at: float | None = None
    source: str | None = None
    updated_at: float | None = None
    unanswered_streak: int = 0
    request_blocked_until: float | None = None
    call_blocked_until: float | None = None
    meta_limits: Mapping[str, Mapping[float, int]] = field(default_factory=dict)
    """Meta's live ``max_allowed`` per action and window length (seconds)."""
    meta_checked_at: float | None = None
    requests: tuple[tuple[int, float], ...] = ()
    """(row id, sent_at) of the permission requests that count, within the loaded horizon."""
    calls: tuple[tuple[int, float], ...] = ()
    """(row id, at) of the answered business calls that count, within the loaded horizon."""
    recent_requests: tuple[dict[str, Any], ...] = ()
    """The last requests the gateway sent (for the API; loaded only when asked for)."""
    user_ids: tuple[str, ...] = ()
    """The BSUIDs linked to this key (loaded only when asked for)."""

    def expired(self, now: float) -> bool:
        return self.status == "temporary" and self.expires_at is not None \
            and self.expires_at <= now


@dataclass(frozen=True)
class PermissionChange:
    """A new permission status for a pair, as a reply or Meta's answer sets it."""

    status: str
    expires_at: float | None
    source: str | None
    at: float
    reset_streak: bool = False
    """Start a new unanswered streak (a grant, or Meta's own automatic revocation)."""


@dataclass(frozen=True)
class Window:
    period: float
    maximum: int
    used: int
    next_at: float | None
    """When ``used`` drops below ``maximum``, if it is reached."""


# ---- the limits in force for a pair -------------------------------------------------------------


def request_limits(state: PairState, limits: Limits) -> dict[float, int]:
    return {DAY: limits.requests_per_24h, WEEK: limits.requests_per_7d,
            **state.meta_limits.get(ACTION_REQUEST, {})}


def call_limits(state: PairState, limits: Limits) -> dict[float, int]:
    return {DAY: limits.calls_per_24h, **state.meta_limits.get(ACTION_CALL, {})}


LONGEST_WINDOW = WEEK
"""The longest of Meta's default windows: uses older than this count toward no default limit
(Meta's live limits may name a longer one; the store then looks back that far)."""


def windows(times: tuple[tuple[int, float], ...], limits: dict[float, int],
            now: float) -> list[Window]:
    """Each window's use at ``now``, shortest first, and when a full one frees a use."""
    out = []
    for period in sorted(limits):
        maximum = limits[period]
        inside = [t for _, t in times if t > now - period]
        used = len(inside)
        next_at = None
        if used >= maximum:
            next_at = inside[used - maximum] + period if maximum > 0 else None
        out.append(Window(period, maximum, used, next_at))
    return out


# ---- decisions ----------------------------------------------------------------------------------


def decide_call(state: PairState, limits: Limits, country: str | None, now: float) -> Decision:
    """May the business start a call to this user now (before ``POST /calls connect``)?
    ``country``: why the business number cannot call at all (138013), or None."""
    if country:
        return Decision(False, RefusalReason.COUNTRY_UNSUPPORTED,
                        f"business-initiated calls are not available for business numbers "
                        f"of {country}", None, COUNTRY_UNSUPPORTED)
    if state.status == "no_permission":
        revoked = state.exists and state.source == "automatic"
        text = ("the user's call permission was revoked automatically after unanswered "
                "calls" if revoked else "the user has not granted permission to call")
        return Decision(False, RefusalReason.NO_PERMISSION,
                        text + "; send a call permission request", None, NO_PERMISSION)
    if state.expired(now):
        return Decision(False, RefusalReason.PERMISSION_EXPIRED,
                        f"the user's temporary call permission expired at "
                        f"{when(state.expires_at)}; send a new call permission request",
                        None, NO_PERMISSION)
    refusals: list[tuple[float | None, Window | None]] = [
        (w.next_at, w) for w in windows(state.calls, call_limits(state, limits), now)
        if w.used >= w.maximum]
    blocked = state.call_blocked_until
    if blocked is not None and blocked > now:
        refusals.append((blocked, None))
    if refusals:
        next_at = max((t for t, _ in refusals if t is not None), default=None)
        window = next((w for _, w in refusals if w is not None), None)
        count = f"{window.used} of {window.maximum}" if window else "the limit of"
        return Decision(False, RefusalReason.LIMIT_CALLS_24H,
                        f"{count} connected business-initiated calls to this user in 24 h "
                        f"reached; next call allowed at {when(next_at)}", next_at, CALL_LIMIT)
    return OK


def decide_request(state: PairState, limits: Limits, country: str | None,
                   now: float) -> Decision:
    """May the business send this user a call permission request now?"""
    if country:
        return Decision(False, RefusalReason.COUNTRY_UNSUPPORTED,
                        f"business-initiated calls are not available for business numbers "
                        f"of {country}, so a call permission request would be useless",
                        None, COUNTRY_UNSUPPORTED)
    if state.status == "permanent":
        return Decision(False, RefusalReason.PERMANENT_EXISTS,
                        "the user has already granted permanent call permission",
                        None, PERMANENT_EXISTS)
    refusals: list[tuple[float | None, RefusalReason, str]] = []
    for w in windows(state.requests, request_limits(state, limits), now):
        if w.used >= w.maximum:
            reason = RefusalReason.LIMIT_REQUESTS_24H if w.period <= DAY \
                else RefusalReason.LIMIT_REQUESTS_7D
            span = "24 h" if w.period == DAY else (
                "7 days" if w.period == WEEK else f"{w.period / HOUR:g} h")
            refusals.append((w.next_at, reason,
                             f"{w.used} of {w.maximum} permission requests in {span}"))
    blocked = state.request_blocked_until
    if blocked is not None and blocked > now:
        reason = RefusalReason.LIMIT_REQUESTS_24H if blocked - now <= DAY \
            else RefusalReason.LIMIT_REQUESTS_7D
        refusals.append((blocked, reason, "Meta's permission request limit"))
    if refusals:
        refusals.sort(key=lambda r: -1.0 if r[0] is None else r[0])
        next_at, reason, what = refusals[-1]
        return Decision(False, reason,
                        f"{what} reached; next request allowed at {when(next_at)}",
                        next_at, REQUEST_LIMIT)
    return OK


def reply_change(response: str, *, permanent: bool, automatic: bool, at: float,
                 expires_at: float | None, limits: Limits) -> PermissionChange | None:
    """The permission a ``call_permission_reply`` (§6) sets; None for an unknown response."""
    if response == "accept":
        source = "callback" if automatic else "user_action"
        if permanent:
            return PermissionChange("permanent", None, source, at, reset_streak=True)
        return PermissionChange("temporary", expires_at or at + limits.temporary_permission_s,
                                source, at, reset_streak=True)
    if response == "reject":
        return PermissionChange("no_permission", None,
                                "automatic" if automatic else "user_action", at,
                                reset_streak=automatic)
    return None


# ---- the business number's country ----------------------------------------------------------


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


# ---- times Meta writes ---------------------------------------------------------------------

_DURATION = re.compile(r"P(?:(\d+)W)?(?:(\d+)D)?(?:T(?:(\d+)H)?(?:(\d+)M)?(?:(\d+)S)?)?")


def period_seconds(text: Any) -> float | None:
    """ISO 8601 duration of a Meta limit (``PT24H``, ``P7D``) in seconds."""
    match = _DURATION.fullmatch(str(text or "").strip().upper())
    if not match or not any(match.groups()):
        return None
    w, d, h, m, s = (int(g) if g else 0 for g in match.groups())
    return float(w * WEEK + d * DAY + h * HOUR + m * 60 + s)


def when(at: float | None) -> str:
    if at is None:
        return "unknown"
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(at))


_UNIX_TIME = re.compile(r"(?<!\d)(1\d{9}|[2-9]\d{9}|1\d{12})(?!\d)")
_ISO_TIME = re.compile(r"\d{4}-\d{2}-\d{2}[T ]\d{2}:\d{2}(?::\d{2}(?:\.\d+)?)?"
                       r"(?:Z|[+-]\d{2}:?\d{2})?")


def next_allowed_at(error_data: Mapping[str, Any] | None, now: float) -> float | None:
    """When Meta says the refused action is next allowed (138012, 138009), or None.

    docs/meta-2026-identity.md §2: "Details will include a timestamp when the next call is
    allowed" in ``error_data``, but the field and its format are not documented and no real
    body was captured. So, leniently: any ``error_data`` field whose name speaks of a time
    (``*time*``, ``*allowed*``, ``*next*``, ``*until*``), then the ``details`` text; unix
    seconds or milliseconds, or ISO 8601 (UTC when no offset). A value in the past or more
    than 8 days ahead is not believed (the ledger's own count decides then)."""
    if not error_data:
        return None
    candidates: list[Any] = [v for k, v in error_data.items()
                             if k != "details" and any(w in k.lower() for w in
                                                       ("time", "allowed", "next", "until"))]
    candidates.append(error_data.get("details"))
    for value in candidates:
        at = _as_time(value)
        if at is not None and now - 60 <= at <= now + WEEK + DAY:
            return at
    return None


def _as_time(value: Any) -> float | None:
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, (int, float)):
        return float(value) / (1000 if value > 1e12 else 1)
    text = str(value)
    match = _UNIX_TIME.search(text)
    if match:
        number = float(match.group(1))
        return number / (1000 if number > 1e12 else 1)
    match = _ISO_TIME.search(text)
    if match:
        try:
            at = datetime.fromisoformat(match.group(0).replace("Z", "+00:00"))
        except ValueError:
            return None
        return (at if at.tzinfo else at.replace(tzinfo=UTC)).timestamp()
    return None
