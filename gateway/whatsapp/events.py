"""Webhook bodies turned into typed events, leniently (docs/meta-calling.md §6-7).

Meta's documents and its deliveries disagree on types (``status`` as a list or a string,
``duration`` as a string or a number, errors at two levels), add fields over time and batch
several entries and changes in one POST. So: iterate over everything, coerce types, ignore (and
report) what is unknown, and never reject a whole body because one part is odd. Only a body that
is not a JSON object at all is malformed.

The event types are in gateway/whatsapp/event_types.py; they are re-exported here.
"""

from __future__ import annotations

from typing import Any

from gateway import strict_json
from gateway.errors import BadInput
from gateway.whatsapp.event_types import (
    AccountSettingsUpdate,
    AccountUpdate,
    CallEvent,
    CallMediaAvailable,
    Event,
    MetaError,
    ParsedWebhook,
    PermissionReply,
    Restriction,
    StatusEvent,
    UserIdChanged,
    Voicemail,
)
from gateway.whatsapp.identity import canonical_number

__all__ = [
    "AccountSettingsUpdate", "AccountUpdate", "CallEvent", "CallMediaAvailable", "Event",
    "MalformedWebhook", "MetaError", "ParsedWebhook", "PermissionReply", "Restriction",
    "StatusEvent", "UserIdChanged", "Voicemail", "as_int", "parse_body", "parse_webhook",
]


class MalformedWebhook(BadInput, ValueError):
    """The body is not a webhook at all (not JSON, not an object)."""


MEDIA_EVENTS = {"call_recording_available": "recording",
                "call_transcription_available": "transcription"}


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
    except (TypeError, ValueError, OverflowError):  # "1e400" as a string is inf
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
        body = strict_json.loads(raw)
    except strict_json.StrictJsonError as exc:
        raise MalformedWebhook(f"body is not acceptable JSON: {exc}") from None
    if isinstance(body, list) and body and all(isinstance(b, dict) for b in body):
        # Meta's pickup-rate samples (docs/meta-2026-settings-events.md §3, §7) show the body
        # wrapped in [ ... ]; read such a body as the webhooks it holds rather than refuse it.
        merged = ParsedWebhook()
        for part in body:
            parsed = parse_webhook(part)
            merged.events += parsed.events
            merged.ignored += parsed.ignored
        return merged
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
            elif field_name in ("account_update", "account_settings_update"):
                _parse_account_value(field_name, _dict(entry), value, out)
            else:
                out.ignored.append(f"field {field_name or '?'} (not handled by the gateway)")
    return out


def _parse_calls_value(value: dict, out: ParsedWebhook) -> None:
    meta = _dict(value.get("metadata"))
    pnid = _str(meta.get("phone_number_id"))
    display = _str(meta.get("display_phone_number"))
    contacts = _contacts(value)
    for call in _list(value.get("calls")):
        call = _dict(call)
        call_id = _str(call.get("id"))
        if not call_id:
            out.ignored.append("calls[] item without id")
            continue
        if _str(call.get("event")).lower() in MEDIA_EVENTS:
            _parse_media_available(call, pnid, out)
            continue
        session = _dict(call.get("session"))
        from_number = _str(call.get("from"))
        direction = _str(call.get("direction")).upper()
        side = "to" if direction == "BUSINESS_INITIATED" else "from"
        user_id = _str(call.get(f"{side}_user_id"))
        contact = _contact_for(contacts, _str(call.get(side)), user_id)
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
            profile_name=contact.get("name", ""),
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
            user_id=user_id or contact.get("user_id", ""),
            parent_user_id=_str(call.get(f"{side}_parent_user_id"))
            or contact.get("parent_user_id", ""),
            username=contact.get("username", ""),
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
            recipient_user_id=_str(st.get("recipient_user_id"))
            or _contact_for(contacts, _str(st.get("recipient_id")), "").get("user_id", ""),
            recipient_parent_user_id=_str(st.get("recipient_parent_user_id"))
            or _str(st.get("parent_recipient_user_id")),
        ))


def _contacts(value: dict) -> list[dict[str, str]]:
    """``contacts[]`` as flat dicts (wa_id, user_id, parent_user_id, name, username):
    docs/meta-2026-identity.md §1 adds
    the ids and ``profile.username``, and leaves ``wa_id`` out for username users."""
    out = []
    for c in _list(value.get("contacts")):
        c = _dict(c)
        profile = _dict(c.get("profile"))
        out.append({"wa_id": _str(c.get("wa_id")), "user_id": _str(c.get("user_id")),
                    "parent_user_id": _str(c.get("parent_user_id")),
                    "name": _str(profile.get("name")), "username": _str(profile.get("username"))})
    return out


def _contact_for(contacts: list[dict[str, str]], wa_id: str, user_id: str) -> dict[str, str]:
    """The contact entry of this user: by BSUID, by number, or the only one there is."""
    for c in contacts:
        if (user_id and c["user_id"] == user_id) or (
                wa_id and canonical_number(c["wa_id"]) == canonical_number(wa_id)):
            return c
    return contacts[0] if len(contacts) == 1 and not (wa_id and contacts[0]["wa_id"]) else {}


def _parse_messages_value(value: dict, out: ParsedWebhook) -> None:
    pnid = _str(_dict(value.get("metadata")).get("phone_number_id"))
    contacts = _contacts(value)
    for msg in _list(value.get("messages")):
        msg = _dict(msg)
        system = _dict(msg.get("system"))
        if _str(msg.get("type")) == "system" and \
                _str(system.get("type")) == "user_changed_user_id":
            old = _str(msg.get("from_user_id") or system.get("previous_user_id"))
            new = _str(system.get("user_id") or system.get("new_user_id"))
            if not old or not new:
                out.ignored.append("user_changed_user_id without both BSUIDs")
                continue
            out.events.append(UserIdChanged(
                phone_number_id=pnid, message_id=_str(msg.get("id")),
                timestamp=as_int(msg.get("timestamp")) or 0, old_user_id=old, new_user_id=new,
                wa_id=_str(system.get("wa_id")), old_wa_id=_str(msg.get("from"))))
            continue
        interactive = _dict(msg.get("interactive"))
        if _str(msg.get("type")) == "audio" and _str(msg.get("id")).startswith("wacid."):
            audio = _dict(msg.get("audio"))
            out.events.append(Voicemail(
                call_id=_str(msg.get("id")), phone_number_id=pnid,
                user=_str(msg.get("from")) or _str(msg.get("from_user_id")),
                media_id=_str(audio.get("id")), mime_type=_str(audio.get("mime_type")),
                sha256=_str(audio.get("sha256")), timestamp=as_int(msg.get("timestamp")) or 0))
            continue
        if _str(interactive.get("type")) != "call_permission_reply":
            out.ignored.append(f"message of type {_str(msg.get('type')) or '?'}")
            continue
        reply = _dict(interactive.get("call_permission_reply"))
        permanent = reply.get("is_permanent")
        user_id = _str(msg.get("from_user_id"))
        contact = _contact_for(contacts, _str(msg.get("from")), user_id)
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
            user_id=user_id or contact.get("user_id", ""),
            parent_user_id=_str(msg.get("from_parent_user_id"))
            or contact.get("parent_user_id", ""),
            username=contact.get("username", ""),
        ))


def _parse_media_available(call: dict, pnid: str, out: ParsedWebhook) -> None:
    kind = MEDIA_EVENTS[_str(call.get("event")).lower()]
    holder = _dict(call.get("call_recording")).get("audio") if kind == "recording" \
        else _dict(call.get("call_transcript")).get("document")
    media = _dict(holder)
    if not _str(media.get("id")):
        out.ignored.append(f"call_{kind}_available without a media id")
        return
    out.events.append(CallMediaAvailable(
        call_id=_str(call.get("id")), kind=kind, phone_number_id=pnid,
        media_id=_str(media.get("id")), mime_type=_str(media.get("mime_type")),
        sha256=_str(media.get("sha256")), url=_str(media.get("url")),
        timestamp=as_int(call.get("timestamp")) or 0,
        user=_str(call.get("from")) or _str(call.get("from_user_id"))
        or _str(call.get("to")) or _str(call.get("to_user_id"))))


def _parse_account_value(field_name: str, entry: dict, value: dict,
                         out: ParsedWebhook) -> None:
    """docs/meta-2026-settings-events.md §3. ``account_update`` has no timestamp of its own: the
    entry's ``time`` is used."""
    waba_id = _str(entry.get("id"))
    if field_name == "account_settings_update":
        settings = _dict(value.get("phone_number_settings"))
        calling = settings.get("calling")
        out.events.append(AccountSettingsUpdate(
            waba_id=waba_id, phone_number_id=_str(settings.get("phone_number_id")),
            kind=_str(value.get("type")).lower(), timestamp=as_int(value.get("timestamp")) or 0,
            calling=calling if isinstance(calling, dict) else None))
        return
    violation = _dict(value.get("violation_info"))
    restrictions = tuple(
        Restriction(restriction_type=_str(_dict(r).get("restriction_type")),
                    expiration=as_int(_dict(r).get("expiration")),
                    remediation=_str(_dict(r).get("remediation")))
        for r in _list(value.get("restriction_info")) if _dict(r).get("restriction_type"))
    out.events.append(AccountUpdate(
        waba_id=waba_id, phone_number=_str(value.get("phone_number")).lstrip("+"),
        event=_str(value.get("event")).upper(),
        timestamp=as_int(value.get("timestamp")) or as_int(entry.get("time")) or 0,
        violation_type=_str(violation.get("violation_type")),
        remediation=_str(violation.get("remediation")), restrictions=restrictions))
