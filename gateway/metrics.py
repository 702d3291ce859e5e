"""Prometheus metrics on /metrics: what an operator watches in Grafana.

Names follow Prometheus conventions (``whatsapp_gateway_`` prefix, base units, ``_total`` on
counters, ``_seconds`` on times). Every label value is bounded so a flood of odd input cannot
blow up the time-series count: ``phone_number_id`` only takes configured numbers (else
``unknown``), Meta error codes only the codes of docs/meta-calling.md §11 (else ``other``),
Q.850 causes only 0-127, actions and results only the documented sets.

:class:`GatewayMetrics` owns its own :class:`CollectorRegistry`, so several gateways (tests)
can live in one process. The call code calls its small methods; :class:`MetricsObserver`
adapts them to :class:`gateway.calls.observer.CallObserver`.

Longer than the usual 450 lines on purpose: about 220 lines are the declarations of every
metric family with its help text, a flat table an operator reads top to bottom next to the
Grafana dashboard and alert rules (monitoring/), which their tests check against this one list.
Split, the table would be scattered for no gain in logic.

Under ``serve --workers N`` each worker process writes its values into
``PROMETHEUS_MULTIPROC_DIR`` and the supervisor serves them combined (gateway/workers/metrics.py).
Each gauge's ``multiprocess_mode`` says how: counts and free ports add up (``livesum``), what
every worker has the same (build, configured capacity) or any worker suffers (dialplan problems,
restrictions) is the ``livemax``, AMI is up only when it is up in every worker (``livemin``).
Outside that mode the argument is ignored.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import TYPE_CHECKING

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    ProcessCollector,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from gateway.bounded import BoundedDict
from gateway.calls.observer import CallObserver
from gateway.calls.permissions.rules import RefusalReason
from gateway.calls.record import CallRecord, Direction, EndReason, Outcome

if TYPE_CHECKING:
    from aiohttp import web

    from gateway.config import Config

PREFIX = "whatsapp_gateway"

# A ``_created`` series per counter and histogram child doubles the series count and no query
# uses it (Prometheus handles counter resets itself).
disable_created_metrics()
CONTENT_TYPE = CONTENT_TYPE_LATEST

# docs/meta-calling.md §11: the calling error codes Meta documents. Anything else is "other".
META_ERROR_CODES = frozenset({
    100, 613, 131009, 131026, 131030, 131044, 131055,
    138000, 138001, 138002, 138003, 138004, 138005, 138006, 138007, 138009,
    138012, 138013, 138014, 138015, 138017, 138018, 138019, 138020, 138021, 138022, 138023,
})

WEBHOOK_RESULTS = ("ok", "bad_signature", "malformed", "duplicate", "unknown_number",
                   "verify_ok", "verify_failed")
GRAPH_ACTIONS = ("pre_accept", "accept", "reject", "terminate", "connect", "call_permissions",
                 "settings", "messages", "media")
SETUP_STAGES = ("pre_accept", "dialplan", "media")
PERMISSION_REQUEST_RESULTS = ("sent", "accepted", "rejected", "expired", "failed", "rate_limited")
# The permission rules' refusal reasons: one list, the rules' own (anything else is "other").
PERMISSION_REFUSAL_REASONS = tuple(r.value for r in RefusalReason)
PERMISSION_REFUSED_WHAT = ("call", "request")
HANGUP_SIDES = ("whatsapp", "asterisk", "gateway")
# docs/meta-2026-settings-events.md §3: what account_update reports.
ACCOUNT_EVENTS = ("ACCOUNT_VIOLATION", "ACCOUNT_RESTRICTION")
ACCOUNT_TYPES = ("USER_INITIATED_CALLS_LOW_PICKUP_RATE", "LOW_USER_INITIATED_CALLING_QUALITY",
                 "LOW_BUSINESS_INITIATED_CALLING_QUALITY", "RESTRICTED_BUSINESS_INITIATED_CALLING",
                 "RESTRICTED_USER_INITIATED_CALLING_CALL_BUTTON_HIDDEN")
MEDIA_KINDS = ("voicemail", "recording", "transcription")
MEDIA_RESULTS = ("fetched", "id_only", "fetch_failed")
CRM_RESULTS = ("delivered", "retried", "rejected", "dropped")
STORES = ("calls", "permissions")
ENDED_REMEMBERED = 4096
"""Ended calls remembered so a second notice of the same end is not counted twice."""

_HTTP_RESULT = re.compile(r"http_([1-5])\d\d")


def _build_labels() -> tuple[str, str, str]:
    import platform
    from importlib import metadata

    from gateway.version import version

    try:
        aiortc = metadata.version("aiortc")
    except metadata.PackageNotFoundError:  # pragma: no cover - a dependency
        aiortc = "unknown"
    return version(), platform.python_version(), aiortc


def _bounded(value: object, allowed: Iterable[str], fallback: str = "other") -> str:
    text = str(value) if value is not None else ""
    return text if text in allowed else fallback


def meta_code_label(code: int | str | None) -> str:
    """A Meta error code as a label: the §11 code, ``none`` or ``other``."""
    if code is None or code == "":
        return "none"
    try:
        number = int(code)
    except (TypeError, ValueError):
        return "other"
    return str(number) if number in META_ERROR_CODES else "other"


def q850_label(cause: int | str | None) -> str:
    """A Q.850 cause as a label: ``16``, ``none`` or ``other`` (Q.850 causes are 0-127)."""
    if cause is None or cause == "":
        return "none"
    try:
        number = int(cause)
    except (TypeError, ValueError):
        return "other"
    return str(number) if 0 <= number <= 127 else "other"


def graph_result_label(result: str) -> str:
    """GraphClient's result (``ok``, a Meta code, ``http_503``, ``timeout``, ``unreachable``)
    as a bounded label: HTTP statuses fold to ``http_5xx``, Meta codes as in
    :func:`meta_code_label`."""
    if result in ("ok", "timeout", "unreachable"):
        return result
    match = _HTTP_RESULT.fullmatch(result)
    if match:
        return f"http_{match.group(1)}xx"
    if result.isdigit():
        return meta_code_label(result)
    return "other"


class GatewayMetrics:
    """Every metric of one gateway, in its own registry; see module doc for label rules."""

    def __init__(self, phone_number_ids: Iterable[str] = (), *, process: bool = True):
        self.registry = CollectorRegistry(auto_describe=True)
        self.numbers = frozenset(phone_number_ids)
        r = self.registry
        n = PREFIX
        call = ["phone_number_id", "direction"]

        # ---- the build --------------------------------------------------------------------
        self.build_info = Gauge(
            f"{n}_build_info",
            "Always 1; the labels say which gateway build runs (join on instance to annotate "
            "dashboards after an upgrade).", ["version", "python", "aiortc"], registry=r,
            multiprocess_mode="livemax")
        self.build_info.labels(*_build_labels()).set(1)

        # ---- calls --------------------------------------------------------------------------
        self.calls_admitted = Counter(
            f"{n}_calls_admitted_total",
            "Calls that passed admission (number known, capacity free, Asterisk connected) "
            "and were started.", call, registry=r)
        self.calls = Counter(
            f"{n}_calls_total",
            "Finished calls by outcome (answered, rejected, abandoned, no_answer, failed) and "
            "by which side hung up (whatsapp, asterisk, gateway, none).",
            call + ["outcome", "hangup_side"], registry=r)
        self.call_end_reasons = Counter(
            f"{n}_call_end_reasons_total",
            "Finished calls by why they ended, in a few words: normal, declined, no_answer, busy, "
            "cancelled, no_permission, limit, capacity, unknown_number, asterisk_down, "
            "asterisk_refused, asterisk_vanished, bad_sdp, meta_api_error, whatsapp_error, "
            "media_timeout, media_lost, shutdown, gateway_error (the call record has the "
            "details).", call + ["reason"], registry=r)
        self.call_meta_errors = Counter(
            f"{n}_call_meta_errors_total",
            "Calls that ended with a Meta calling error code, e.g. 138020 (WhatsApp client "
            "could not reach the media relay); undocumented codes count as 'other'.",
            call + ["code"], registry=r)
        self.call_hangup_causes = Counter(
            f"{n}_call_hangup_causes_total",
            "Finished calls by Q.850 hangup cause (16 = normal clearing, 17 = busy, "
            "19 = no answer, 34/38/41 = network or gateway trouble).",
            call + ["cause"], registry=r)
        self.active_calls = Gauge(
            f"{n}_active_calls",
            "Calls in progress right now (admitted and not yet ended).", call, registry=r,
            multiprocess_mode="livesum")
        self.call_capacity = Gauge(
            f"{n}_call_capacity",
            "Configured max_calls of the business number: active calls beyond it are "
            "rejected.", ["phone_number_id"], registry=r,
            multiprocess_mode="livemax")
        self.call_duration = Histogram(
            f"{n}_call_duration_seconds",
            "Talk time of answered calls, from answer to hangup.", call,
            buckets=(5, 15, 30, 60, 120, 300, 600, 1200, 1800, 3600, 7200), registry=r)
        self.call_setup_seconds = Histogram(
            f"{n}_call_setup_seconds",
            "Time from the connect webhook to a set-up milestone: stage=pre_accept (Graph "
            "pre_accept answered), dialplan (Asterisk runs the dialplan), media (first audio "
            "packet from WhatsApp).", call + ["stage"],
            buckets=(0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1, 1.5, 2, 3, 5, 10), registry=r)

        # ---- media, aggregated over finished calls ------------------------------------------
        self.rtp_packets_received = Counter(
            f"{n}_rtp_packets_received_total",
            "RTP audio packets received from WhatsApp, summed over finished calls.",
            call, registry=r)
        self.rtp_packets_sent = Counter(
            f"{n}_rtp_packets_sent_total",
            "RTP audio packets sent to WhatsApp, summed over finished calls.", call, registry=r)
        self.rtp_packets_lost = Counter(
            f"{n}_rtp_packets_lost_total",
            "RTP packets from WhatsApp that never arrived (sequence gaps), summed over "
            "finished calls.", call, registry=r)
        self.call_packet_loss_ratio = Histogram(
            f"{n}_call_packet_loss_ratio",
            "Per call: share of WhatsApp's packets lost (0.01 = 1 %). Above 0.05 callers "
            "hear gaps.", call,
            buckets=(0.001, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1), registry=r)
        self.call_jitter = Histogram(
            f"{n}_call_jitter_seconds",
            "Per call: interarrival jitter of WhatsApp's audio (RFC 3550), last value "
            "of the call.", call,
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.02, 0.03, 0.05, 0.1, 0.2), registry=r)
        self.call_rtt = Histogram(
            f"{n}_call_rtt_seconds",
            "Per call: round-trip time to WhatsApp's media relay measured with RTCP, last "
            "value of the call.", call,
            buckets=(0.02, 0.05, 0.1, 0.15, 0.2, 0.3, 0.5, 1, 2), registry=r)
        self.dtmf_digits = Counter(
            f"{n}_dtmf_digits_total",
            "DTMF digits relayed, by sender: whatsapp (caller pressed a key, sent to "
            "Asterisk) or asterisk (sent to the caller).", call + ["sender"], registry=r)

        # ---- Meta: webhooks and Graph API ---------------------------------------------------
        self.webhook_requests = Counter(
            f"{n}_webhook_requests_total",
            "Webhook POSTs from Meta by result: ok, bad_signature (X-Hub-Signature-256 "
            "wrong: check app_secret), malformed, duplicate (re-delivery ignored), "
            "unknown_number (phone_number_id not configured), verify_ok/verify_failed "
            "(subscription check GET).", ["result"], registry=r)
        self.graph_requests = Counter(
            f"{n}_graph_requests_total",
            "Graph API requests by action and result: ok, a Meta error code, http_4xx/5xx, "
            "timeout or unreachable.", ["action", "result"], registry=r)
        self.graph_request_duration = Histogram(
            f"{n}_graph_request_duration_seconds",
            "Graph API request latency by action, whatever the result.", ["action"],
            buckets=(0.025, 0.05, 0.1, 0.2, 0.3, 0.5, 1, 2, 5, 10), registry=r)

        # ---- Asterisk -----------------------------------------------------------------------
        self.ami_connected = Gauge(
            f"{n}_ami_connected",
            "1 while the AMI connection to this Asterisk server (asterisk.servers) is up and "
            "logged in; new calls are rejected only while every server is at 0.", ["server"],
            registry=r,
            multiprocess_mode="livemin")
        self.ami_reconnects = Counter(
            f"{n}_ami_reconnects_total",
            "AMI connections re-established after a loss (the first connect is not counted).",
            registry=r)
        self.dialplan_problems = Gauge(
            f"{n}_dialplan_problems",
            "Configured routes (numbers[].context/extension, closed_context) missing from "
            "Asterisk's dialplan at the last check (on every AMI connect); calls to them are "
            "hung up at once.", registry=r,
            multiprocess_mode="livemax")
        self.rtp_ports_free = Gauge(
            f"{n}_rtp_ports_free",
            "Free UDP ports for the Asterisk RTP leg; at 0 new calls are rejected.", registry=r,
            multiprocess_mode="livesum")
        self.rtp_ports_capacity = Gauge(
            f"{n}_rtp_ports_capacity",
            "Size of the configured Asterisk RTP port range (media.rtp_ports).", registry=r,
            multiprocess_mode="livesum")

        # ---- outbound permissions -----------------------------------------------------------
        self.permission_requests = Counter(
            f"{n}_permission_requests_total",
            "Call permission requests to WhatsApp users by result: sent, accepted, "
            "rejected, expired, failed, rate_limited (Meta 138009).",
            ["phone_number_id", "result"], registry=r)
        self.permission_refusals = Counter(
            f"{n}_permission_refusals_total",
            "Outbound calls (what=call, from the dialplan or the API) or permission requests "
            "(what=request) refused by the permission rules, by reason: no_permission, "
            "permission_expired, limit_calls_24h (Meta 138012), limit_requests_24h/7d "
            "(138009), permanent_exists, country_unsupported (138013).",
            ["phone_number_id", "what", "reason"], registry=r)

        # ---- Meta's view of the account (docs/meta-2026-settings-events.md §3) -------------
        self.account_updates = Counter(
            f"{n}_account_updates_total",
            "account_update webhooks from Meta by event (ACCOUNT_VIOLATION: an early warning; "
            "ACCOUNT_RESTRICTION: calling paused or the call button hidden) and type (e.g. "
            "USER_INITIATED_CALLS_LOW_PICKUP_RATE).", ["phone_number_id", "event", "type"],
            registry=r)
        self.account_settings_updates = Counter(
            f"{n}_account_settings_updates_total",
            "account_settings_update webhooks: Meta reports a change of the number's calling "
            "settings (status, call icon, callback permission, SIP, SRTP).",
            ["phone_number_id"], registry=r)
        self.account_restricted = Gauge(
            f"{n}_account_restricted",
            "1 while Meta restricts calling on the number (by restriction type), 0 after the "
            "restriction expired.", ["phone_number_id", "restriction_type"], registry=r,
            multiprocess_mode="livemax")
        self.inbound_offered = Counter(
            f"{n}_inbound_calls_offered_total",
            "Calls from WhatsApp users that reached the gateway (admitted or refused).",
            ["phone_number_id"], registry=r)
        self.inbound_answered = Counter(
            f"{n}_inbound_calls_answered_total",
            "Calls from WhatsApp users the gateway accepted (answered at Meta).",
            ["phone_number_id"], registry=r)
        self.inbound_pickup_ratio = Gauge(
            f"{n}_inbound_pickup_ratio",
            "Answered / offered calls from WhatsApp users over the last 24 h (1 with no "
            "calls). Meta warns, then restricts, numbers with a low pickup rate: alert well "
            "before it does.", ["phone_number_id"], registry=r,
            multiprocess_mode="livemostrecent")

        # ---- voicemail, recordings, transcripts (docs/meta-2026-settings-events.md §2, §4) -
        self.voicemail_deadline_missed = Counter(
            f"{n}_voicemail_deadline_missed_total",
            "Calls not accepted within voicemail.timeout_seconds: Meta's voicemail took them "
            "(the log says which set-up step was late).", ["phone_number_id"], registry=r)
        self.call_media = Counter(
            f"{n}_call_media_total",
            "Voicemails, recordings and transcripts Meta announced, by result: fetched (file "
            "in store.media_dir), id_only (no media_dir: the media id is kept), fetch_failed.",
            ["kind", "result"], registry=r)

        # ---- call events to CRMs (gateway/crm_events.py) ----------------------------------
        self.crm_events = Counter(
            f"{n}_crm_events_total",
            "Call events pushed to CRM URLs by result: delivered, retried (an attempt failed "
            "and will be repeated), rejected (the CRM answered 4xx: not retried), dropped "
            "(the queue was full while the CRM was down).", ["url", "result"], registry=r)
        self.crm_events_queued = Gauge(
            f"{n}_crm_events_queued",
            "Call events waiting for a CRM URL (grows while the CRM is down).", ["url"],
            registry=r,
            multiprocess_mode="livesum")

        # ---- storage ------------------------------------------------------------------------
        self.store_errors = Counter(
            f"{n}_store_errors_total",
            "Writes the disk refused (full, I/O error) by store: calls (call records) or "
            "permissions (the outbound ledger). Calls go on; the writes are kept and retried.",
            ["store"], registry=r)
        self.store_pending = Gauge(
            f"{n}_store_pending_records",
            "Writes kept in memory because the disk refused them, by store; they are written "
            "when it takes them again (or at shutdown). Above 0 for long: free disk space.",
            ["store"], registry=r,
            multiprocess_mode="livesum")
        for store in STORES:
            self.store_errors.labels(store)
            self.store_pending.labels(store).set(0)

        if process:
            ProcessCollector(registry=r)

        self._numbers_started = False
        self._ami_up: set[str] = set()
        self._ami_was_connected: set[str] = set()
        self._active: dict[str, tuple[str, str]] = {}
        self._ended: BoundedDict[str, None] = BoundedDict(ENDED_REMEMBERED)

    @classmethod
    def from_config(cls, config: Config, *, process: bool = True) -> GatewayMetrics:
        """Metrics for the configured numbers, with their capacity and the RTP port range."""
        metrics = cls([n.phone_number_id for n in config.numbers], process=process)
        metrics.configure_numbers(config)
        total = len(config.media.rtp_ports)
        metrics.rtp_ports(free=total, total=total)
        return metrics

    def configure_numbers(self, config: Config) -> None:
        """The configured numbers (at start, and again after a reload): their label, their
        capacity, and their series at 0. A number removed keeps its series (history)."""
        added = [n.phone_number_id for n in config.numbers if n.phone_number_id not in
                 self.numbers or not self._numbers_started]
        self.numbers = self.numbers | {n.phone_number_id for n in config.numbers}
        for number in config.numbers:
            self.call_capacity.labels(number.phone_number_id).set(number.max_calls)
        self._start_at_zero(added)
        self._numbers_started = True

    def _start_at_zero(self, numbers: list[str]) -> None:
        """Create the call counters' series at 0 for every configured number: Prometheus's
        increase()/rate() need a sample before the first call, or the dashboards' "calls in
        the time range" panels would miss each number's first call of every kind."""
        for number in numbers:
            for direction in (d.value for d in Direction):
                labels = (number, direction)
                self.calls_admitted.labels(*labels)
                for outcome in (o.value for o in Outcome if o != Outcome.ACTIVE):
                    for side in (*HANGUP_SIDES, "none"):
                        self.calls.labels(*labels, outcome, side)
                for reason in EndReason:
                    self.call_end_reasons.labels(*labels, reason.value)
                for stage in SETUP_STAGES:
                    self.call_setup_seconds.labels(*labels, stage)
                for histogram in (self.call_duration, self.call_packet_loss_ratio,
                                  self.call_jitter, self.call_rtt):
                    histogram.labels(*labels)
        for action in GRAPH_ACTIONS:
            self.graph_request_duration.labels(action)
        for result in WEBHOOK_RESULTS:
            self.webhook_requests.labels(result)

    # ---- label helpers --------------------------------------------------------------------

    def number_label(self, phone_number_id: str) -> str:
        return phone_number_id if phone_number_id in self.numbers else "unknown"

    @staticmethod
    def direction_label(direction: Direction | str) -> str:
        return _bounded(direction, (Direction.INBOUND.value, Direction.OUTBOUND.value),
                        "unknown")

    def _call_labels(self, phone_number_id: str, direction: Direction | str) -> tuple[str, str]:
        return self.number_label(phone_number_id), self.direction_label(direction)

    # ---- what the call code calls ---------------------------------------------------------

    def webhook(self, result: str) -> None:
        """One webhook POST handled; result is one of WEBHOOK_RESULTS."""
        self.webhook_requests.labels(_bounded(result, WEBHOOK_RESULTS)).inc()

    def graph_request(self, action: str, result: str, seconds: float) -> None:
        """One Graph request; fits ``GraphClient(observer=...)`` as is."""
        action = _bounded(action, GRAPH_ACTIONS)
        self.graph_requests.labels(action, graph_result_label(result)).inc()
        self.graph_request_duration.labels(action).observe(max(0.0, seconds))

    def call_admitted(self, phone_number_id: str, direction: Direction | str,
                      wacid: str) -> None:
        """The call passed admission: counts it and raises the active-calls gauge until
        :meth:`call_ended` is called for the same wacid."""
        labels = self._call_labels(phone_number_id, direction)
        if wacid in self._active:
            return
        self._active[wacid] = labels
        self.calls_admitted.labels(*labels).inc()
        self.active_calls.labels(*labels).inc()

    def call_setup(self, stage: str, phone_number_id: str, seconds: float,
                   direction: Direction | str = Direction.INBOUND) -> None:
        """Seconds from the connect webhook to ``stage`` (pre_accept, dialplan, media)."""
        if stage not in SETUP_STAGES:
            raise ValueError(f"unknown call set-up stage {stage!r}; one of {SETUP_STAGES}")
        labels = self._call_labels(phone_number_id, direction)
        self.call_setup_seconds.labels(*labels, stage).observe(max(0.0, seconds))

    def call_ended(self, record: CallRecord) -> None:
        """The final record of any call, admitted or rejected: outcome, causes, duration,
        media. Counted once per wacid even if notified twice."""
        if not self._ended.first_time(record.wacid):
            return

        labels = self._active.pop(record.wacid, None)
        if labels is not None:
            self.active_calls.labels(*labels).dec()
        else:
            labels = self._call_labels(record.phone_number_id, record.direction)

        outcome = _bounded(record.outcome, [o.value for o in Outcome])
        side = _bounded(record.hangup_side, HANGUP_SIDES, "none")
        self.calls.labels(*labels, outcome, side).inc()
        self.call_end_reasons.labels(*labels, _bounded(record.end_reason,
                                                       [e.value for e in EndReason])).inc()
        if record.meta_error_code is not None:
            self.call_meta_errors.labels(*labels, meta_code_label(record.meta_error_code)).inc()
        if record.q850_cause is not None:
            self.call_hangup_causes.labels(*labels, q850_label(record.q850_cause)).inc()
        duration = record.duration_seconds
        if duration is not None:
            self.call_duration.labels(*labels).observe(duration)

        received, lost = max(0, record.packets_in), max(0, record.packets_lost)
        self.rtp_packets_received.labels(*labels).inc(received)
        self.rtp_packets_sent.labels(*labels).inc(max(0, record.packets_out))
        self.rtp_packets_lost.labels(*labels).inc(lost)
        if received + lost > 0:
            self.call_packet_loss_ratio.labels(*labels).observe(lost / (received + lost))
        if record.jitter_seconds is not None:
            self.call_jitter.labels(*labels).observe(record.jitter_seconds)
        if record.rtt_seconds is not None:
            self.call_rtt.labels(*labels).observe(record.rtt_seconds)
        if record.dtmf_in:
            self.dtmf_digits.labels(*labels, "whatsapp").inc(record.dtmf_in)
        if record.dtmf_out:
            self.dtmf_digits.labels(*labels, "asterisk").inc(record.dtmf_out)

    def ami_connection(self, connected: bool, server: str = "") -> None:
        """The AMI connection to Asterisk ``server`` went up or down."""
        if connected and server not in self._ami_up and server in self._ami_was_connected:
            self.ami_reconnects.inc()
        if connected:
            self._ami_was_connected.add(server)
            self._ami_up.add(server)
        else:
            self._ami_up.discard(server)
        self.ami_connected.labels(server).set(1 if connected else 0)

    def rtp_ports(self, free: int, total: int | None = None) -> None:
        """Free ports of the Asterisk RTP range (set after every allocation/release)."""
        self.rtp_ports_free.set(free)
        if total is not None:
            self.rtp_ports_capacity.set(total)

    def store_error(self, store: str) -> None:
        """A write to ``store`` (STORES) failed for a storage reason and was kept."""
        self.store_errors.labels(_bounded(store, STORES)).inc()

    def store_backlog(self, store: str, pending: int) -> None:
        """How many writes to ``store`` are waiting for the disk."""
        self.store_pending.labels(_bounded(store, STORES)).set(pending)

    def permission_request(self, result: str, phone_number_id: str) -> None:
        """A call permission request changed state; result in PERMISSION_REQUEST_RESULTS."""
        self.permission_requests.labels(self.number_label(phone_number_id),
                                        _bounded(result, PERMISSION_REQUEST_RESULTS)).inc()

    def permission_refused(self, reason: str, phone_number_id: str,
                           what: str = "call") -> None:
        """An outbound call (``what="call"``) or a permission request (``"request"``) was
        refused; reason is a :class:`RefusalReason` (anything else is counted as "other")."""
        self.permission_refusals.labels(self.number_label(phone_number_id),
                                        _bounded(what, PERMISSION_REFUSED_WHAT),
                                        _bounded(reason, PERMISSION_REFUSAL_REASONS)).inc()

    def account_update(self, phone_number_id: str, event: str, kind: str) -> None:
        """One account_update webhook (docs/meta-2026-settings-events.md §3); event and kind
        bounded to the documented sets."""
        self.account_updates.labels(self.number_label(phone_number_id),
                                    _bounded(event, ACCOUNT_EVENTS),
                                    _bounded(kind, ACCOUNT_TYPES)).inc()

    def call_media_result(self, kind: str, result: str) -> None:
        self.call_media.labels(_bounded(kind, MEDIA_KINDS), _bounded(result, MEDIA_RESULTS)).inc()

    def crm_event(self, url: str, result: str) -> None:
        """One CRM delivery result; ``url`` is a configured URL without its query or user
        (bounded by the config)."""
        self.crm_events.labels(url, _bounded(result, CRM_RESULTS)).inc()

    # ---- exposition -----------------------------------------------------------------------

    def exposition(self) -> bytes:
        """The text format Prometheus scrapes (Content-Type: :data:`CONTENT_TYPE`)."""
        return generate_latest(self.registry)

    def add_route(self, app: web.Application, path: str = "/metrics") -> None:
        """Serve :meth:`exposition` on ``GET path``."""
        from aiohttp import web

        async def handle(request: web.Request) -> web.Response:
            response = web.Response(body=self.exposition())
            response.headers["Content-Type"] = CONTENT_TYPE
            return response

        app.router.add_get(path, handle)


class MetricsObserver(CallObserver):
    """Feeds a call's notifications into :class:`GatewayMetrics`."""

    def __init__(self, metrics: GatewayMetrics):
        self.metrics = metrics

    def call_admitted(self, record: CallRecord) -> None:
        self.metrics.call_admitted(record.phone_number_id, record.direction, record.wacid)

    def call_rejected(self, record: CallRecord) -> None:
        self.metrics.call_ended(record)

    def call_setup(self, record: CallRecord, stage: str, seconds: float) -> None:
        self.metrics.call_setup(stage, record.phone_number_id, seconds, record.direction)

    def call_ended(self, record: CallRecord) -> None:
        self.metrics.call_ended(record)
