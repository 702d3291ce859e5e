"""Webhook bodies turned into typed events, leniently (docs/meta-calling.md §6-7).

Meta's documents and its deliveries disagree on types (``status`` as a list or a string,
``duration`` as a string or a number, errors at two levels), add fields over time and batch
several entries and changes in one POST. So: iterate over everything, coerce types, ignore (and
report) what is unknown, and never reject a whole body because one part is odd. Only a body that
is not a JSON object at all is malformed.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any


class MalformedWebhook(ValueError):
    """The body is not a webhook at all (not JSON, not an object)."""


@dataclass(frozen=True)
class MetaError:
    code: int | None
    message: str = ""
    details: str = ""


@dataclass(frozen=True)
class CallEvent:
    """``calls[i]``: a connect or terminate (or an event value we do not know yet)."""

    call_id: str
    event: str  # "connect" | "terminate" | other, lower-case
    direction: str  # "USER_INITIATED" | "BUSINESS_INITIATED" | ""
    phone_number_id: str
    display_phone_number: str
    from_number: str
    to_number: str
    timestamp: int
    profile_name: str = ""
    sdp: str | None = None
    sdp_type: str | None = None
    status: str | None = None  # terminate: "COMPLETED" | "FAILED", upper-case
    start_time: int | None = None
    end_time: int | None = None
    duration: int | None = None
    biz_opaque_callback_data: str | None = None
    cta_payload: str | None = None
    deeplink_payload: str | None = None
    errors: tuple[MetaError, ...] = ()

    @property
    def dedup_key(self) -> tuple:
        return ("call", self.call_id, self.event, self.timestamp)


@dataclass(frozen=True)
class StatusEvent:
    """``statuses[i]`` of a business-initiated call: RINGING, ACCEPTED, REJECTED."""

    call_id: str
    status: str
    phone_number_id: str
    recipient_id: str
    timestamp: int
    biz_opaque_callback_data: str | None = None
    errors: tuple[MetaError, ...] = ()

    @property
    def dedup_key(self) -> tuple:
        return ("status", self.call_id, self.status, self.timestamp)


@dataclass(frozen=True)
class PermissionReply:
    """``messages[i]`` with ``interactive.type == call_permission_reply``."""

    phone_number_id: str
    user: str
    message_id: str
    timestamp: int
    response: str  # "accept" | "reject"
    is_permanent: bool
    expiration_timestamp: int | None
    response_source: str  # "user_action" | "automatic"
    context_id: str | None = None

    @property
    def dedup_key(self) -> tuple:
        return ("permission", self.message_id)


Event = CallEvent | StatusEvent | PermissionReply


@dataclass
class ParsedWebhook:
    events: list[Event] = field(default_factory=list)
    ignored: list[str] = field(default_factory=list)
    """What was skipped and why, for one log line each."""


def _str(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, list):
        return _str(value[0]) if value else ""
    return str(value)


def as_int(value: Any) -> int | None:
    """Meta's numbers arrive as numbers or strings (and lists where one was documented)."""
    if isinstance(value, list):
        value = value[0] if value else None
    if value is None or isinstance(value, bool):
        return None
    try:
        return int(float(value))
    except (TypeError, ValueError):
        return None


def _dict(value: Any) -> dict:
    return value if isinstance(value, dict) else {}


def _list(value: Any) -> list:
    if isinstance(value, list):
        return value
    return [] if value is None else [value]


def _errors(*lists: Any) -> tuple[MetaError, ...]:
    """Merge error lists from several levels, one per code (§7.6)."""
    seen: dict[int | None, MetaError] = {}
    for raw in lists:
        for err in _list(raw):
            if not isinstance(err, dict):
                continue
            code = as_int(err.get("code"))
            if code in seen:
                continue
            seen[code] = MetaError(
                code=code,
                message=_str(err.get("message") or err.get("title")),
                details=_str(_dict(err.get("error_data")).get("details")),
            )
    return tuple(seen.values())


def parse_body(raw: bytes) -> ParsedWebhook:
    try:
        body = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise MalformedWebhook(f"body is not JSON: {exc}") from None
    if not isinstance(body, dict):
        raise MalformedWebhook("body is not a JSON object")
    return parse_webhook(body)


def parse_webhook(body: dict) -> ParsedWebhook:
    out = ParsedWebhook()
    for entry in _list(body.get("entry")):
        for change in _list(_dict(entry).get("changes")):
            change = _dict(change)
            field_name = _str(change.get("field"))
            value = _dict(change.get("value"))
            if field_name == "calls" or "calls" in value or "statuses" in value:
                _parse_calls_value(value, out)
            elif field_name == "messages":
                _parse_messages_value(value, out)
            else:
                out.ignored.append(f"field {field_name or '?'} (not handled by the gateway)")
    return out


def _parse_calls_value(value: dict, out: ParsedWebhook) -> None:
    meta = _dict(value.get("metadata"))
    pnid = _str(meta.get("phone_number_id"))
    display = _str(meta.get("display_phone_number"))
    names = {}
    for c in _list(value.get("contacts")):
        c = _dict(c)
        names[_str(c.get("wa_id"))] = _str(_dict(c.get("profile")).get("name"))
    for call in _list(value.get("calls")):
        call = _dict(call)
        call_id = _str(call.get("id"))
        if not call_id:
            out.ignored.append("calls[] item without id")
            continue
        session = _dict(call.get("session"))
        from_number = _str(call.get("from"))
        direction = _str(call.get("direction")).upper()
        user = from_number if direction != "BUSINESS_INITIATED" else _str(call.get("to"))
        status = call.get("status")
        out.events.append(CallEvent(
            call_id=call_id,
            event=_str(call.get("event")).lower(),
            direction=direction,
            phone_number_id=pnid,
            display_phone_number=display,
            from_number=from_number,
            to_number=_str(call.get("to")),
            timestamp=as_int(call.get("timestamp")) or 0,
            profile_name=names.get(user, ""),
            sdp=_str(session.get("sdp")) or None,
            sdp_type=_str(session.get("sdp_type")).lower() or None,
            status=_str(status).upper() or None if status is not None else None,
            start_time=as_int(call.get("start_time")),
            end_time=as_int(call.get("end_time")),
            duration=as_int(call.get("duration")),
            biz_opaque_callback_data=_str(call.get("biz_opaque_callback_data")) or None,
            cta_payload=_str(call.get("cta_payload")) or None,
            deeplink_payload=_str(call.get("deeplink_payload")) or None,
            errors=_errors(call.get("errors"), value.get("errors")),
        ))
    for st in _list(value.get("statuses")):
        st = _dict(st)
        call_id = _str(st.get("id"))
        if not call_id:
            out.ignored.append("statuses[] item without id")
            continue
        out.events.append(StatusEvent(
            call_id=call_id,
            status=_str(st.get("status")).upper(),
            phone_number_id=pnid,
            recipient_id=_str(st.get("recipient_id")),
            timestamp=as_int(st.get("timestamp")) or 0,
            biz_opaque_callback_data=_str(st.get("biz_opaque_callback_data")) or None,
            errors=_errors(st.get("errors"), value.get("errors")),
        ))


def _parse_messages_value(value: dict, out: ParsedWebhook) -> None:
    pnid = _str(_dict(value.get("metadata")).get("phone_number_id"))
    for msg in _list(value.get("messages")):
        msg = _dict(msg)
        interactive = _dict(msg.get("interactive"))
        if _str(interactive.get("type")) != "call_permission_reply":
            out.ignored.append(f"message of type {_str(msg.get('type')) or '?'}")
            continue
        reply = _dict(interactive.get("call_permission_reply"))
        permanent = reply.get("is_permanent")
        out.events.append(PermissionReply(
            phone_number_id=pnid,
            user=_str(msg.get("from")),
            message_id=_str(msg.get("id")),
            timestamp=as_int(msg.get("timestamp")) or 0,
            response=_str(reply.get("response")).lower(),
            is_permanent=permanent is True or _str(permanent).lower() == "true",
            expiration_timestamp=as_int(reply.get("expiration_timestamp")),
            response_source=_str(reply.get("response_source")).lower() or "user_action",
            context_id=_str(_dict(msg.get("context")).get("id")) or None,
        ))
