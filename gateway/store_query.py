"""Which call records to list: ``GET /v1/calls`` query parameters and ``calls list`` options
turned into :meth:`gateway.store.CallStore.list` arguments, with errors fit for a 400 body."""

from __future__ import annotations

import re
import time
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

from gateway.calls.record import Direction, Outcome

MAX_LIMIT = 100_000
"""The most records one list may return."""

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
    outcome, phone_number_id, limit) into :meth:`CallStore.list` arguments.

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
