"""The voicemail TIMEOUT watchdog: an inbound call must be accepted before Meta's voicemail
takes it, or the log says why it was not.

With ``calling.voicemail`` ENABLED and the TIMEOUT trigger on, Meta answers a call itself when
the business has not accepted (nor rejected) it within ``timeout_seconds`` of ringing
(docs/meta-2026-settings-events.md §2). The gateway accepts as soon as the WhatsApp leg's ICE/DTLS
is up
and Asterisk has started the dialplan — it does not wait for the dialplan to answer — so a slow
dialplan costs nothing; what can be late is media, Asterisk's Originate, or Meta itself.

The clock is the connect webhook's arrival (Meta's timer started no later). At the deadline an
unaccepted call is logged with the step it is stuck on and counted
(``whatsapp_gateway_voicemail_deadline_missed_total``); every accepted call logs its
pre_accept→accept time and the margin left. Unconfirmed by Meta: whether the clock starts at
the connect webhook or when the phone starts ringing; taking the webhook is the safe reading.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field

from gateway.calling_settings import voicemail_timeout
from gateway.calls.observer import CallObserver
from gateway.calls.record import CallRecord, Direction
from gateway.config import Config
from gateway.metrics import GatewayMetrics

log = logging.getLogger(__name__)

STUCK_AT = (
    ("dialplan", "Meta has not answered the accept request yet"),
    ("media", "Asterisk has not started the dialplan yet (Originate pending)"),
    ("pre_accept", "the WhatsApp leg's ICE/DTLS is not connected yet"),
)


@dataclass
class _Watched:
    record: CallRecord
    timeout_s: int
    stages: dict[str, float] = field(default_factory=dict)
    """set-up stage → seconds since the webhook (CallObserver.call_setup)"""
    pre_accept_at: float | None = None
    timer: asyncio.TimerHandle | None = None


class VoicemailWatchdog(CallObserver):
    def __init__(self, config: Config, metrics: GatewayMetrics):
        self.config = config
        self.metrics = metrics
        self.watched: dict[str, _Watched] = {}
        for number in config.numbers:
            if voicemail_timeout(number.calling) is not None:  # at 0 from the start
                metrics.voicemail_deadline_missed.labels(
                    metrics.number_label(number.phone_number_id))

    def call_admitted(self, record: CallRecord) -> None:
        if record.direction != Direction.INBOUND:
            return
        number = self.config.number(record.phone_number_id)
        timeout = voicemail_timeout(number.calling if number else None)
        if timeout is None:
            return
        watched = _Watched(record, timeout)
        delay = max(0.0, record.webhook_at + timeout - time.time())
        watched.timer = asyncio.get_running_loop().call_later(delay, self._deadline,
                                                              record.wacid)
        self.watched[record.wacid] = watched

    def call_setup(self, record: CallRecord, stage: str, seconds: float) -> None:
        watched = self.watched.get(record.wacid)
        if watched is None:
            return
        watched.stages[stage] = seconds
        if stage == "pre_accept":
            watched.pre_accept_at = time.time()

    def call_event(self, record: CallRecord, event: str, **fields: object) -> None:
        if event != "accepted":
            return
        watched = self.watched.pop(record.wacid, None)
        if watched is None:
            return
        if watched.timer is not None:
            watched.timer.cancel()
        now = time.time()
        since_pre = (now - watched.pre_accept_at) if watched.pre_accept_at else None
        margin = record.webhook_at + watched.timeout_s - now
        level = logging.WARNING if margin < 0.25 * watched.timeout_s else logging.INFO
        log.log(level, "call %s (channel %s): accepted %s after pre_accept, %.1f s before "
                "Meta's voicemail (TIMEOUT %d s) would take it", record.wacid,
                record.channel_id, f"{since_pre:.2f} s" if since_pre is not None else "?",
                margin, watched.timeout_s)

    def call_ended(self, record: CallRecord) -> None:
        watched = self.watched.pop(record.wacid, None)
        if watched is not None and watched.timer is not None:
            watched.timer.cancel()

    def _deadline(self, wacid: str) -> None:
        watched = self.watched.pop(wacid, None)
        if watched is None:
            return
        why = next((text for stage, text in STUCK_AT if stage in watched.stages),
                   "Meta has not answered the pre_accept request yet")
        done = ", ".join(f"{stage} after {s:.2f} s" for stage, s in watched.stages.items())
        self.metrics.voicemail_deadline_missed.labels(
            self.metrics.number_label(watched.record.phone_number_id)).inc()
        log.warning("call %s (channel %s): not accepted within voicemail.timeout_seconds "
                    "(%d s): Meta's voicemail takes the call; why: %s (done: %s)", wacid,
                    watched.record.channel_id, watched.timeout_s, why, done or "nothing")
