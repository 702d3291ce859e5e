"""A call record as the store keeps it: its columns, the row it becomes, the CSV an admin joins
with Asterisk's CDR, and the filters ``GET /v1/calls`` and ``calls list`` accept.

Nothing here touches a database: both backends (gateway/store/sqlite.py, postgres.py) turn a
:class:`CallRecord` into the same row and back.

Join with Asterisk's CDR: ``wa_call_id`` is the ``WA_CALL_ID`` channel variable and
``asterisk_uniqueid`` the channel's Uniqueid (the CDR ``uniqueid`` column).
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from datetime import UTC, datetime, timedelta, tzinfo
from typing import Any

from gateway.calls.record import CallRecord, Direction, EndReason, HangupSide, Outcome

ORPHAN_REASON = "gateway stopped during the call"
DEFAULT_LIMIT = 100
MAX_LIMIT = 100_000

# Every CallRecord field, in the order of the table's columns. test_store checks it against
# the dataclass, so a new field cannot be silently left out of the store.
COLUMNS = (
    "wacid", "direction", "phone_number_id", "from_number", "to_number", "profile_name",
    "channel_id", "channel", "context", "codec", "webhook_at", "answered_at", "ended_at",
    "outcome", "reason", "end_reason", "hangup_side", "q850_cause", "meta_error_code",
    "meta_error_text",
    "packets_in", "packets_out", "packets_lost", "jitter_seconds", "rtt_seconds",
    "dtmf_in", "dtmf_out", "user_id", "username", "owner",
)

# CSV columns: (header, how to get it from a record). Times as CDR writes them.
CSV_COLUMNS: tuple[tuple[str, Callable[[CallRecord, tzinfo], Any]], ...] = (
    ("wa_call_id", lambda r, tz: r.wacid),
    ("asterisk_uniqueid", lambda r, tz: r.channel_id),
    ("asterisk_channel", lambda r, tz: r.channel),
    ("direction", lambda r, tz: r.direction.value),
    ("phone_number_id", lambda r, tz: r.phone_number_id),
    ("from", lambda r, tz: r.from_number),
    ("to", lambda r, tz: r.to_number),
    ("profile_name", lambda r, tz: r.profile_name),
    ("user_id", lambda r, tz: r.user_id),
    ("username", lambda r, tz: r.username),
    ("context", lambda r, tz: r.context),
    ("webhook_time", lambda r, tz: _cdr_time(r.webhook_at, tz)),
    ("answer_time", lambda r, tz: _cdr_time(r.answered_at, tz)),
    ("end_time", lambda r, tz: _cdr_time(r.ended_at, tz)),
    ("duration_seconds", lambda r, tz: "" if r.duration_seconds is None
     else f"{r.duration_seconds:.3f}"),
    ("outcome", lambda r, tz: r.outcome.value),
    ("reason", lambda r, tz: r.reason),
    ("end_reason", lambda r, tz: r.end_reason.value if r.end_reason else ""),
    ("hangup_side", lambda r, tz: r.hangup_side.value if r.hangup_side else ""),
    ("q850_cause", lambda r, tz: _blank(r.q850_cause)),
    ("meta_error_code", lambda r, tz: _blank(r.meta_error_code)),
    ("meta_error_text", lambda r, tz: r.meta_error_text),
    ("codec", lambda r, tz: r.codec),
    ("packets_in", lambda r, tz: r.packets_in),
    ("packets_out", lambda r, tz: r.packets_out),
    ("packets_lost", lambda r, tz: r.packets_lost),
    ("jitter_ms", lambda r, tz: "" if r.jitter_seconds is None
     else f"{r.jitter_seconds * 1000:.1f}"),
    ("rtt_ms", lambda r, tz: "" if r.rtt_seconds is None else f"{r.rtt_seconds * 1000:.1f}"),
    ("dtmf_in", lambda r, tz: r.dtmf_in),
    ("dtmf_out", lambda r, tz: r.dtmf_out),
    ("gateway_instance", lambda r, tz: r.owner),
)


def _blank(value: object) -> object:
    return "" if value is None else value


def _cdr_time(at: float | None, tz: tzinfo) -> str:
    """Asterisk's CDR format, ``2026-01-01 12:00:00``, so both files sort and compare alike."""
    if at is None:
        return ""
    return datetime.fromtimestamp(at, tz).strftime("%Y-%m-%d %H:%M:%S")


def record_to_row(record: CallRecord) -> tuple:
    data = {f.name: getattr(record, f.name) for f in fields(record)}
    for key in ("direction", "outcome", "hangup_side", "end_reason"):
        if data[key] is not None:
            data[key] = str(data[key].value if hasattr(data[key], "value") else data[key])
    return tuple(data[c] for c in COLUMNS)


def row_to_record(row: Mapping[str, Any]) -> CallRecord:
    data = {c: row[c] for c in COLUMNS}
    data["direction"] = Direction(data["direction"])
    data["outcome"] = Outcome(data["outcome"])
    data["hangup_side"] = HangupSide(data["hangup_side"]) if data["hangup_side"] else None
    data["end_reason"] = EndReason(data["end_reason"]) if data["end_reason"] else None
    return CallRecord(**data)


_RELATIVE = re.compile(r"(\d+)\s*([smhdw])")
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}


def parse_time(text: str, now: float | None = None) -> float:
    """``--since``/``since=`` values: ``90m``, ``24h``, ``7d`` ago; a date ``2026-01-31``
    (UTC midnight); an ISO 8601 time (UTC when no offset is given); or a Unix timestamp."""
    text = text.strip()
    now = time.time() if now is None else now
    match = _RELATIVE.fullmatch(text)
    if match:
        return now - timedelta(**{_UNITS[match.group(2)]: int(match.group(1))}).total_seconds()
    try:
        return float(text)
    except ValueError:
        pass
    try:
        at = datetime.fromisoformat(text)
    except ValueError:
        raise ValueError(f"not a time: {text!r} (use 24h, 7d, 2026-01-31, "
                         f"2026-01-31T08:00:00+01:00 or a Unix timestamp)") from None
    if at.tzinfo is None:
        at = at.replace(tzinfo=UTC)
    return at.timestamp()


def filters_from_query(query: Mapping[str, str], now: float | None = None) -> dict[str, Any]:
    """Turn ``GET /v1/calls`` query parameters or CLI options (since, until, direction,
    outcome, phone_number_id, limit) into :meth:`~gateway.store.CallStore.list` arguments.

    Raises ValueError with a message fit for an HTTP 400 body or a CLI error."""
    known = {"since", "until", "direction", "outcome", "phone_number_id", "limit"}
    unknown = sorted(set(query) - known)
    if unknown:
        raise ValueError(f"unknown filter {', '.join(unknown)}; use {', '.join(sorted(known))}")
    out: dict[str, Any] = {}
    for key in ("since", "until"):
        if query.get(key):
            out[key] = parse_time(query[key], now)
    if query.get("direction"):
        try:
            out["direction"] = Direction(query["direction"])
        except ValueError:
            raise ValueError(f"direction must be inbound or outbound, got "
                             f"{query['direction']!r}") from None
    if query.get("outcome"):
        try:
            out["outcome"] = Outcome(query["outcome"])
        except ValueError:
            raise ValueError(f"outcome must be one of {', '.join(o.value for o in Outcome)}, "
                             f"got {query['outcome']!r}") from None
    if query.get("phone_number_id"):
        out["phone_number_id"] = query["phone_number_id"]
    if query.get("limit"):
        text = query["limit"]
        if not text.isdigit() or not 1 <= int(text) <= MAX_LIMIT:
            raise ValueError(f"limit must be a whole number from 1 to {MAX_LIMIT}, got {text!r}")
        out["limit"] = int(text)
    return out


@dataclass
class CallMedia:
    """A file Meta holds for a call: ``kind`` voicemail, recording or transcription."""

    wacid: str
    kind: str
    media_id: str
    mime_type: str = ""
    sha256: str = ""
    path: str | None = None
    """Where it was downloaded (store.media_dir), or None: only the media id is known."""
    error: str = ""
    """Why the download failed, if it did."""
    received_at: float = field(default_factory=time.time)
