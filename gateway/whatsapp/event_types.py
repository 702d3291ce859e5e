"""The events a webhook body carries, as the gateway uses them (docs/meta-calling.md §6-7).

Plain frozen values; gateway/whatsapp/events.py reads Meta's bodies into them (and re-exports
them, so callers import events and parser from one place). Each has a ``dedup_key``: Meta
delivers at least once, and the call manager drops what it has seen.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

from gateway.whatsapp.identity import WhatsAppUser


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


@dataclass
class ParsedWebhook:
    events: list[Event] = field(default_factory=list)
    ignored: list[str] = field(default_factory=list)
    """What was skipped and why, for one log line each."""
    raw: bytes = field(default=b"", repr=False, compare=False)
    """The signature-checked body (set by the webhook route): ``serve --workers N`` forwards it
    to the worker that owns the call, which parses it again (gateway/workers/routing.py)."""
