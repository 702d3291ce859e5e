"""How Meta sees each business number: its warnings and restrictions, and our own pickup rate.

Meta warns a number (``account_update`` ``ACCOUNT_VIOLATION``: low pickup rate, low quality), then
pauses its calling for 7 days or hides its call button (``ACCOUNT_RESTRICTION``), and reports
changes of its calling settings (``account_settings_update``) — docs/meta-2026-settings-events.md
§3. Each notice is logged once, counted in metrics and kept here for ``/readyz`` ``info``, so an
operator sees why calls stopped coming before opening WhatsApp Manager.

Meta does not publish the pickup rate it acts on. :class:`PickupRate` computes ours — inbound
calls the gateway accepted / calls that reached it, over a sliding 24 h — as the
``whatsapp_gateway_inbound_pickup_ratio`` gauge, so an alert can fire before Meta's warning
does. A call Meta's voicemail took counts as offered and not answered, as it does for Meta.
"""

from __future__ import annotations

import datetime as dt
import logging
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from gateway.bounded import BoundedDict
from gateway.calls.observer import CallObserver
from gateway.calls.record import CallRecord, Direction
from gateway.config import Config
from gateway.metrics import GatewayMetrics
from gateway.whatsapp.events import AccountSettingsUpdate, AccountUpdate, CallEvent, Event

log = logging.getLogger(__name__)

PICKUP_WINDOW_S = 24 * 3600.0
BUTTON_HIDDEN = "RESTRICTED_USER_INITIATED_CALLING_CALL_BUTTON_HIDDEN"


def _utc(at: float | None) -> str | None:
    if at is None:
        return None
    return dt.datetime.fromtimestamp(at, dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass
class NumberHealth:
    """What Meta last told us about one number."""

    warnings: dict[str, dict[str, Any]] = field(default_factory=dict)
    """violation_type → {remediation, at}"""
    restrictions: dict[str, dict[str, Any]] = field(default_factory=dict)
    """restriction_type → {expiration, remediation, at}"""
    settings: dict[str, Any] | None = None
    settings_at: float | None = None


class AccountHealth:
    """Takes account webhooks (an event hook of the call manager) and answers ``info()``."""

    def __init__(self, config: Config, metrics: GatewayMetrics,
                 clock: Callable[[], float] = time.time):
        self.config = config
        self.metrics = metrics
        self.clock = clock
        self.numbers: dict[str, NumberHealth] = {}
        self._by_display = {(n.display_number or "").lstrip("+"): n.phone_number_id
                            for n in config.numbers if n.display_number}

    def phone_number_id(self, display_number: str) -> str:
        """account_update names the display number; '' when it is not configured."""
        return self._by_display.get(display_number.lstrip("+"), "")

    def handle(self, event: Event) -> bool:
        """Event hook: True when the event was an account notice (and is now handled).

        Calls webhooks name both the number's id and its display number (``metadata``): the
        pair is learnt from them, so numbers configured without ``display_number`` are still
        recognised in later account notices."""
        if isinstance(event, CallEvent):
            display = event.display_phone_number.lstrip("+")
            if display and event.phone_number_id and self.config.number(event.phone_number_id):
                self._by_display.setdefault(display, event.phone_number_id)
            return False
        if isinstance(event, AccountUpdate):
            self._account_update(event)
            return True
        if isinstance(event, AccountSettingsUpdate):
            self._settings_update(event)
            return True
        return False

    def _health(self, pnid: str) -> NumberHealth:
        return self.numbers.setdefault(pnid, NumberHealth())

    def _account_update(self, ev: AccountUpdate) -> None:
        pnid = self.phone_number_id(ev.phone_number)
        key = pnid or f"+{ev.phone_number}"
        health = self._health(key)
        now = self.clock()
        if ev.event == "ACCOUNT_VIOLATION":
            self.metrics.account_update(pnid, ev.event, ev.violation_type)
            health.warnings[ev.violation_type] = {"remediation": ev.remediation, "at": now}
            log.warning("Meta account warning for %s (%s): %s: %s", key, ev.phone_number,
                        ev.violation_type or "?", ev.remediation or "no remediation given")
            return
        if ev.event == "ACCOUNT_RESTRICTION":
            for r in ev.restrictions or ():
                self.metrics.account_update(pnid, ev.event, r.restriction_type)
                health.restrictions[r.restriction_type] = {
                    "expiration": r.expiration, "remediation": r.remediation, "at": now}
                self._restricted_gauge(key, pnid, r.restriction_type)
                until = f"until {_utc(r.expiration)}" if r.expiration else \
                    "until lifted in WhatsApp Manager"
                log.warning("Meta restricts calling on %s (%s): %s %s%s", key, ev.phone_number,
                            r.restriction_type, until,
                            f": {r.remediation}" if r.remediation else "")
            if not ev.restrictions:
                self.metrics.account_update(pnid, ev.event, "")
                log.warning("Meta restriction notice for %s without restriction_info", key)
            return
        self.metrics.account_update(pnid, ev.event, "")
        log.info("account_update %s for %s not acted on", ev.event or "?", key)

    def _restricted_gauge(self, key: str, pnid: str, restriction_type: str) -> None:
        """1 while the restriction lasts: computed at scrape time from its expiration."""
        label = self.metrics.number_label(pnid)

        def active() -> float:
            entry = self.numbers.get(key, NumberHealth()).restrictions.get(restriction_type)
            if entry is None:
                return 0.0
            until = entry.get("expiration")
            return 1.0 if until is None or until > self.clock() else 0.0

        self.metrics.account_restricted.labels(label, _known(restriction_type)).set_function(
            active)

    def _settings_update(self, ev: AccountSettingsUpdate) -> None:
        health = self._health(ev.phone_number_id)
        before = health.settings
        health.settings, health.settings_at = ev.calling, self.clock()
        self.metrics.account_settings_updates.labels(
            self.metrics.number_label(ev.phone_number_id)).inc()
        log.info("Meta reports the calling settings of %s%s: %s", ev.phone_number_id,
                 "" if before is None else " changed", _settings_line(ev.calling))

    def info(self) -> dict[str, Any]:
        """For ``/readyz`` ``info.account``: per number, what is in force now."""
        now = self.clock()
        out: dict[str, Any] = {}
        for pnid, health in sorted(self.numbers.items()):
            restrictions = [
                {"type": kind, "until": _utc(r["expiration"]), "remediation": r["remediation"]}
                for kind, r in health.restrictions.items()
                if r["expiration"] is None or r["expiration"] > now]
            entry: dict[str, Any] = {}
            if health.warnings:
                entry["warnings"] = [{"type": kind, "at": _utc(w["at"]),
                                      "remediation": w["remediation"]}
                                     for kind, w in health.warnings.items()]
            if restrictions:
                entry["restrictions"] = restrictions
            if any(r["type"] == BUTTON_HIDDEN for r in restrictions):
                entry["call_button_hidden"] = True
            if health.settings is not None:
                entry["calling_settings"] = health.settings
            if entry:
                out[pnid] = entry
        return out


def _known(restriction_type: str) -> str:
    from gateway.metrics import ACCOUNT_TYPES

    return restriction_type if restriction_type in ACCOUNT_TYPES else "other"


def _settings_line(calling: dict | None) -> str:
    if calling is None:
        return "calling null"
    parts = [f"{k}={v}" for k, v in calling.items() if not isinstance(v, dict)]
    parts += [f"{k}.status={v.get('status')}" for k, v in calling.items()
              if isinstance(v, dict)]
    return ", ".join(parts)


class PickupRate(CallObserver):
    """Per number: inbound calls answered / offered over a sliding window (default 24 h)."""

    def __init__(self, metrics: GatewayMetrics, window_s: float = PICKUP_WINDOW_S,
                 clock: Callable[[], float] = time.time):
        self.metrics = metrics
        self.window_s = window_s
        self.clock = clock
        self._calls: dict[str, deque[tuple[float, bool]]] = {}
        self._seen: BoundedDict[str, None] = BoundedDict(4096)
        for pnid in sorted(metrics.numbers):
            self._gauge(pnid)
            # At 0 from the start, so increase() over the first calls is right.
            metrics.inbound_offered.labels(pnid)
            metrics.inbound_answered.labels(pnid)

    def _gauge(self, label: str) -> None:
        self.metrics.inbound_pickup_ratio.labels(label).set_function(lambda: self.ratio(label))

    def ratio(self, label: str) -> float:
        calls = self._calls.get(label)
        if not calls:
            return 1.0
        cutoff = self.clock() - self.window_s
        while calls and calls[0][0] < cutoff:
            calls.popleft()
        if not calls:
            return 1.0
        return sum(1 for _, answered in calls if answered) / len(calls)

    def _count(self, record: CallRecord) -> None:
        if record.direction != Direction.INBOUND or not self._seen.first_time(record.wacid):
            return
        label = self.metrics.number_label(record.phone_number_id)
        answered = record.answered_at is not None
        if label not in self._calls:
            self._calls[label] = deque()
            self._gauge(label)
        self._calls[label].append((self.clock(), answered))
        self.metrics.inbound_offered.labels(label).inc()
        if answered:
            self.metrics.inbound_answered.labels(label).inc()

    def call_rejected(self, record: CallRecord) -> None:
        self._count(record)

    def call_ended(self, record: CallRecord) -> None:
        self._count(record)
