"""What the gateway remembers of one call: the row an admin joins with Asterisk's CDR.

One :class:`CallRecord` lives inside each call object and is written to the store when the
call is admitted and again when it ends, so a call that was running when the gateway died is
still found (and closed as failed) on the next start.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from enum import StrEnum

from gateway.whatsapp.identity import user_key


class Direction(StrEnum):
    INBOUND = "inbound"  # USER_INITIATED: a WhatsApp user calls the business
    OUTBOUND = "outbound"  # BUSINESS_INITIATED: the business calls a WhatsApp user


class Outcome(StrEnum):
    ACTIVE = "active"
    ANSWERED = "answered"  # media and both sides up; ended normally afterwards
    REJECTED = "rejected"  # the gateway refused it, or (outbound) the user declined
    ABANDONED = "abandoned"  # the caller hung up before Asterisk answered
    NO_ANSWER = "no_answer"  # outbound: the user never picked up
    FAILED = "failed"  # media, Meta, Asterisk or gateway failure


class EndReason(StrEnum):
    """Why a call ended, in a few bounded words (a metric label and a record column): the
    free-text ``reason`` says the rest."""

    NORMAL = "normal"  # a person hung up
    UNKNOWN_NUMBER = "unknown_number"
    CAPACITY = "capacity"  # max_calls, RTP or WebRTC ports
    ASTERISK_DOWN = "asterisk_down"  # AMI not connected at admission
    ASTERISK_REFUSED = "asterisk_refused"  # Originate failed / no RTP port from Asterisk
    ASTERISK_VANISHED = "asterisk_vanished"  # the channel disappeared while AMI was down
    BAD_SDP = "bad_sdp"
    META_API_ERROR = "meta_api_error"  # a Graph request failed (code in meta_error_code)
    WHATSAPP_ERROR = "whatsapp_error"  # Meta ended it with an error (terminate FAILED + code)
    MEDIA_TIMEOUT = "media_timeout"  # ICE/DTLS never came up
    MEDIA_LOST = "media_lost"  # the WebRTC leg died mid-call
    ANSWER_TIMEOUT = "answer_timeout"  # outbound: Meta's connect webhook (answer) never came
    NO_PERMISSION = "no_permission"  # outbound: the user's call permission
    LIMIT = "limit"  # outbound: a Meta limit (per user or per number)
    DECLINED = "declined"  # outbound: the user rejected the call
    NO_ANSWER = "no_answer"
    BUSY = "busy"
    CANCELLED = "cancelled"  # outbound: the waiting channel gave up first
    SHUTDOWN = "shutdown"  # the gateway stopped
    GATEWAY_ERROR = "gateway_error"


class HangupSide(StrEnum):
    WHATSAPP = "whatsapp"
    ASTERISK = "asterisk"
    GATEWAY = "gateway"


@dataclass
class CallRecord:
    wacid: str
    direction: Direction
    phone_number_id: str
    from_number: str
    to_number: str
    profile_name: str = ""
    channel_id: str = ""
    """Our id for the Asterisk channel (Originate ChannelId = its Uniqueid, and WA_CHANNEL_ID)."""
    channel: str = ""
    """Asterisk's channel name, e.g. UnicastRTP/127.0.0.1:40000-0x7f..."""
    context: str = ""
    codec: str = ""
    webhook_at: float = field(default_factory=time.time)
    answered_at: float | None = None
    ended_at: float | None = None
    outcome: Outcome = Outcome.ACTIVE
    reason: str = ""
    """Why, in words an admin understands (e.g. 'unknown phone_number_id 123')."""
    end_reason: EndReason | None = None
    """Why, as one of a few words (EndReason): what dashboards count."""
    hangup_side: HangupSide | None = None
    q850_cause: int | None = None
    meta_error_code: int | None = None
    meta_error_text: str = ""
    packets_in: int = 0
    packets_out: int = 0
    packets_lost: int = 0
    jitter_seconds: float | None = None
    rtt_seconds: float | None = None
    dtmf_in: int = 0
    dtmf_out: int = 0
    user_id: str = ""
    """The WhatsApp user's BSUID (docs/meta-2026-identity.md §1); the user's number (from/to)
    is empty for a username caller Meta gave no number."""
    username: str = ""
    """The user's WhatsApp username, when they adopted one."""
    owner: str = ""
    """The gateway instance that runs the call (``gateway.instance_id``): with several
    gateways on one shared store, each closes only the calls it left open (docs/scaling.md)."""

    @property
    def user_number(self) -> str:
        """The WhatsApp user's number (``from`` inbound, ``to`` outbound); may be empty."""
        return self.from_number if self.direction == Direction.INBOUND else self.to_number

    @property
    def user_key(self) -> str:
        """The user as logs and the permission ledger key them (:func:`user_key`)."""
        return user_key(self.user_number, self.user_id)

    @property
    def duration_seconds(self) -> float | None:
        if self.answered_at is None or self.ended_at is None:
            return None
        return max(0.0, self.ended_at - self.answered_at)

    def as_dict(self) -> dict:
        data = asdict(self)
        data["duration_seconds"] = self.duration_seconds
        return data
