"""WhatsApp users as Meta knows them: call permission, how they behave, and Meta's counters.

Rules from docs/meta-calling.md §3 (the ``call_permissions`` answer) and §10 (limits), per
business number + user pair:

- permission requests: 1 per 24 h and 2 per 7 days (138009); none while a permanent permission
  exists (138017); any connected call resets both counters;
- connected business-initiated calls: 100 per 24 h (138012);
- 4 unanswered/declined business calls in a row revoke the permission (automatic reject reply);
- a temporary permission lasts 7 days from approval; an expired one reads ``no_permission``.

ASSUMPTION: the permission is kept on the :class:`SimulatedUser`, so it applies to every
business number of the simulated account (tests use one number); the counters are per pair.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

HOUR = 3600.0
DAY = 24 * HOUR
WEEK = 7 * DAY

PERMISSIONS = ("no_permission", "temporary", "permanent")
ON_CALL = ("answer", "reject", "ignore", "busy")
"""answer / reject after ``answer_after_s``; ignore: rings until the ring timeout; busy: the
user is already in a call, connect fails with 138003."""
ON_REQUEST = ("accept", "accept_permanent", "reject", "ignore")
"""Reply to a call permission request after ``reply_after_s``; ignore: never replies."""

TEMPORARY_PERMISSION_S = WEEK
REQUEST_LIMITS = (("PT24H", DAY, 1), ("P7D", WEEK, 2))
CALL_LIMITS = (("PT24H", DAY, 100),)
"""§10/§14: 100 connected business-initiated calls per 24 h (the sample's 5 is outdated)."""
UNANSWERED_TO_REVOKE = 4


@dataclass
class SimulatedUser:
    """One WhatsApp user: what Meta knows about them and what they do when contacted."""

    wa_id: str = ""
    name: str | None = "Test User"
    """Profile name, sent in ``contacts`` of user-side webhooks."""
    permission: str = "no_permission"
    """no_permission | temporary | permanent (the state at Meta)."""
    permission_expires_at: float | None = None
    """Unix time a temporary permission ends (None for temporary: 7 days from when it is set)."""
    on_call: str = "answer"
    answer_after_s: float = 2.0
    """Seconds of ringing before the user answers or declines (``answer`` / ``reject``)."""
    on_permission_request: str = "accept"
    reply_after_s: float = 2.0
    app_too_old: bool = False
    """The app cannot show permission requests / call buttons (131026 error webhook) and cannot
    take business calls (138001)."""
    in_service_window: bool = True
    """The user wrote to the business in the last 24 h, so free-form messages may be sent
    (interactive permission request / call button, §5). A call from or to the user opens it."""
    script: str | None = None
    """Control-API script run once the user picked up a business call (e.g. ``wait 5; press 1;
    wait 3; hangup``); without one the user stays on until someone hangs up."""
    idle_audio: bytes | None = field(default=None, repr=False)
    """Looped toward the business when the user says nothing else (None: silence)."""

    def __post_init__(self) -> None:
        self.check()

    def check(self) -> None:
        """Raise ValueError naming the first bad field."""
        if self.wa_id and not self.wa_id.isdigit():
            raise ValueError("wa_id must be the user's number, digits only")
        for name, allowed in (("permission", PERMISSIONS), ("on_call", ON_CALL),
                              ("on_permission_request", ON_REQUEST)):
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name} must be one of {', '.join(allowed)}; "
                                 f"got {getattr(self, name)!r}")
        for name in ("answer_after_s", "reply_after_s"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or not 0 <= value <= 3600:
                raise ValueError(f"{name} must be between 0 and 3600 seconds")

    def permission_status(self, now: float) -> str:
        """The status ``call_permissions`` shows: an expired temporary grant reads
        ``no_permission`` (no event is sent when it lapses, §6)."""
        if self.permission == "temporary" and self.permission_expires_at is not None \
                and self.permission_expires_at <= now:
            return "no_permission"
        return self.permission

    def set_permission(self, status: str, now: float, expires_at: float | None = None) -> None:
        if status not in PERMISSIONS:
            raise ValueError(f"permission must be one of {', '.join(PERMISSIONS)}")
        self.permission = status
        self.permission_expires_at = None
        if status == "temporary":
            self.permission_expires_at = expires_at or now + TEMPORARY_PERMISSION_S

    def copy_for(self, wa_id: str) -> SimulatedUser:
        """A new user behaving like this one (the default user template)."""
        return dataclasses.replace(self, wa_id=wa_id)

    def to_dict(self) -> dict[str, Any]:
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)
               if f.name != "idle_audio"}
        out["idle_audio"] = self.idle_audio is not None
        return out


CONFIGURABLE = tuple(f.name for f in dataclasses.fields(SimulatedUser)
                     if f.name not in ("wa_id", "idle_audio"))


def update_user(user: SimulatedUser, data: dict[str, Any], now: float) -> None:
    """Apply a control-API body (``POST /_sim/users``) to a user; ValueError on bad input.
    Setting ``permission`` to temporary without ``permission_expires_at`` grants 7 days."""
    unknown = set(data) - set(CONFIGURABLE) - {"wa_id"}
    if unknown:
        raise ValueError(f"unknown field(s): {', '.join(sorted(unknown))} "
                         f"(known: {', '.join(CONFIGURABLE)})")
    trial = dataclasses.replace(user)
    for key, value in data.items():
        if key != "wa_id":
            setattr(trial, key, value)
    if "permission" in data:
        trial.set_permission(data["permission"], now, data.get("permission_expires_at"))
    trial.check()
    for f in dataclasses.fields(user):
        setattr(user, f.name, getattr(trial, f.name))


@dataclass
class PairCounters:
    """Meta's counters for one business number + user pair."""

    requests: list[float] = field(default_factory=list)
    """Permission requests sent since the last connected call."""
    calls: list[float] = field(default_factory=list)
    """Connected (picked-up) business-initiated calls."""
    unanswered_streak: int = 0
    """Business-initiated calls in a row the user declined or did not answer."""

    def reset_requests(self) -> None:
        self.requests.clear()

    def to_dict(self, now: float) -> dict[str, Any]:
        return {"requests_7d": len(recent(self.requests, WEEK, now)),
                "requests_24h": len(recent(self.requests, DAY, now)),
                "connected_calls_24h": len(recent(self.calls, DAY, now)),
                "unanswered_streak": self.unanswered_streak}


def recent(times: list[float], period: float, now: float) -> list[float]:
    return sorted(t for t in times if t > now - period)


def limit_entry(name: str, period: float, max_allowed: int, times: list[float],
                now: float) -> dict[str, Any]:
    """One ``limits[]`` item of §3; ``limit_expiration_time`` only while exhausted: when the
    oldest use that keeps it exhausted leaves the window."""
    used = recent(times, period, now)
    entry: dict[str, Any] = {"time_period": name, "max_allowed": max_allowed,
                             "current_usage": len(used)}
    if len(used) >= max_allowed:
        entry["limit_expiration_time"] = int(used[len(used) - max_allowed] + period)
    return entry


def exhausted(limits: list[dict[str, Any]]) -> dict[str, Any] | None:
    return next((lim for lim in limits if lim["current_usage"] >= lim["max_allowed"]), None)


def request_limits(counters: PairCounters, now: float) -> list[dict[str, Any]]:
    return [limit_entry(n, p, m, counters.requests, now) for n, p, m in REQUEST_LIMITS]


def call_limits(counters: PairCounters, now: float) -> list[dict[str, Any]]:
    return [limit_entry(n, p, m, counters.calls, now) for n, p, m in CALL_LIMITS]


def permissions_body(user: SimulatedUser, counters: PairCounters, now: float) -> dict[str, Any]:
    """``GET call_permissions`` answer, shaped like
    tests/fixtures/payloads/response-get-call-permissions.json.

    ASSUMPTION: ``can_perform_action`` of send_call_permission_request is false while a
    permanent permission exists (it would fail with 138017) or a limit is exhausted; of
    start_call, false without a valid permission or with the call limit exhausted."""
    status = user.permission_status(now)
    permission: dict[str, Any] = {"status": status}
    if status == "temporary" and user.permission_expires_at is not None:
        permission["expiration_time"] = int(user.permission_expires_at)
    req = request_limits(counters, now)
    calls = call_limits(counters, now)
    return {
        "messaging_product": "whatsapp",
        "permission": permission,
        "actions": [
            {"action_name": "send_call_permission_request",
             "can_perform_action": status != "permanent" and exhausted(req) is None,
             "limits": req},
            {"action_name": "start_call",
             "can_perform_action": status != "no_permission" and exhausted(calls) is None,
             "limits": calls},
        ],
    }
