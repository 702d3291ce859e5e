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

from gateway import strict_json
from gateway.whatsapp.identity import WhatsAppUser, canonical_number


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
    user_id: str = ""
    """The user's BSUID (``from_user_id`` of a user's call, ``to_user_id`` of ours,
    docs/meta-2026-identity.md §1)."""
    parent_user_id: str = ""
    username: str = ""
    """``contacts[].profile.username``, only if the user adopted one."""

    @property
    def dedup_key(self) -> tuple:
        return ("call", self.call_id, self.event, self.timestamp)

    @property
    def user(self) -> WhatsAppUser:
        """The WhatsApp user's side: ``from`` of a user's call, ``to`` of the business's."""
        number = self.to_number if self.direction == "BUSINESS_INITIATED" else self.from_number
        return WhatsAppUser(wa_id=number, user_id=self.user_id,
                            parent_user_id=self.parent_user_id, username=self.username,
                            profile_name=self.profile_name)


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
    recipient_user_id: str = ""
    """docs/meta-2026-identity.md §1/§6: ``recipient_user_id``; ``recipient_id`` is left out for
    username users."""
    recipient_parent_user_id: str = ""
    """``recipient_parent_user_id``; Meta called it ``parent_recipient_user_id`` until May 2026,
    so both names are read (docs/meta-2026-identity.md §1)."""

    @property
    def dedup_key(self) -> tuple:
        return ("status", self.call_id, self.status, self.timestamp)

    @property
    def user(self) -> WhatsAppUser:
        return WhatsAppUser(wa_id=self.recipient_id, user_id=self.recipient_user_id,
                            parent_user_id=self.recipient_parent_user_id)


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
    user_id: str = ""
    """``messages[].from_user_id`` (docs/meta-2026-identity.md §1); ``user`` (``from``) may
    then be empty."""
    parent_user_id: str = ""
    username: str = ""

    @property
    def dedup_key(self) -> tuple:
        return ("permission", self.message_id)

    @property
    def who(self) -> WhatsAppUser:
        return WhatsAppUser(wa_id=self.user, user_id=self.user_id,
                            parent_user_id=self.parent_user_id, username=self.username)


@dataclass(frozen=True)
class UserIdChanged:
    """A ``system`` message of type ``user_changed_user_id`` (docs/meta-2026-identity.md §1): the
    user changed phone
    number, so Meta gave them a new BSUID.

    ASSUMPTION: the reference names the message but shows no sample. Read leniently: the old
    BSUID is ``from_user_id`` of the message (or ``system.previous_user_id``), the new one
    ``system.user_id`` (or ``system.new_user_id``), the new number ``system.wa_id`` (as in
    Meta's ``user_changed_number`` messages)."""

    phone_number_id: str
    message_id: str
    timestamp: int
    old_user_id: str
    new_user_id: str
    wa_id: str = ""
    old_wa_id: str = ""

    @property
    def dedup_key(self) -> tuple:
        return ("user_id_changed", self.message_id)



@dataclass(frozen=True)
class CallMediaAvailable:
    """``calls[i]`` with event ``call_recording_available`` / ``call_transcription_available``
    (docs/meta-2026-settings-events.md §4): Meta's recording or transcript of an ended call. ``url``
    is valid for 5 minutes; after that the Media API gives a fresh one for ``media_id``."""

    call_id: str
    kind: str  # "recording" | "transcription"
    phone_number_id: str
    media_id: str
    mime_type: str
    sha256: str
    url: str
    timestamp: int
    user: str = ""

    @property
    def dedup_key(self) -> tuple:
        return ("media", self.call_id, self.kind, self.media_id)


@dataclass(frozen=True)
class Voicemail:
    """A ``messages[i]`` of type ``audio`` whose id is a call's wacid: what the caller left on
    Meta's voicemail (docs/meta-2026-settings-events.md §2). Delivery is best effort."""

    call_id: str
    phone_number_id: str
    user: str
    media_id: str
    mime_type: str
    sha256: str
    timestamp: int

    @property
    def dedup_key(self) -> tuple:
        return ("voicemail", self.call_id, self.media_id)


@dataclass(frozen=True)
class Restriction:
    restriction_type: str
    expiration: int | None = None
    """Unix time the restriction ends; None for the call button hidden (lifted by hand)."""
    remediation: str = ""


@dataclass(frozen=True)
class AccountUpdate:
    """Field ``account_update`` (docs/meta-2026-settings-events.md §3): ``ACCOUNT_VIOLATION``
    (Meta's early warning: low pickup rate or quality) or ``ACCOUNT_RESTRICTION`` (calling paused,
    or the call button hidden). The number is the display number (``phone_number``), not its id."""

    waba_id: str
    phone_number: str
    event: str
    timestamp: int
    violation_type: str = ""
    remediation: str = ""
    restrictions: tuple[Restriction, ...] = ()

    @property
    def dedup_key(self) -> tuple:
        return ("account_update", self.waba_id, self.phone_number, self.event, self.timestamp,
                self.violation_type, tuple(r.restriction_type for r in self.restrictions))


@dataclass(frozen=True)
class AccountSettingsUpdate:
    """Field ``account_settings_update`` (docs/meta-2026-settings-events.md §3): the tracked calling
    settings of one number, after any change (the business's own included). ``calling`` is None when
    Meta sends null."""

    waba_id: str
    phone_number_id: str
    kind: str  # "phone_number_settings" (the table says PHONE_NUMBER_SETTINGS)
    timestamp: int
    calling: dict | None

    @property
    def dedup_key(self) -> tuple:
        return ("account_settings_update", self.phone_number_id, self.timestamp,
                json.dumps(self.calling, sort_keys=True))


Event = (CallEvent | StatusEvent | PermissionReply | UserIdChanged | CallMediaAvailable
         | Voicemail | AccountUpdate | AccountSettingsUpdate)
MEDIA_EVENTS = {"call_recording_available": "recording",
                "call_transcription_available": "transcription"}


@dataclass
class ParsedWebhook:
    events: list[Event] = field(default_factory=list)
    ignored: list[str] = field(default_factory=list)
    """What was skipped and why, for one log line each."""
    raw: bytes = field(default=b"", repr=False, compare=False)
    """The signature-checked body (set by the webhook route): ``serve --workers N`` forwards it
    to the worker that owns the call, which parses it again (gateway/workers/routing.py)."""


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
