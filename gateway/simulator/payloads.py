"""Webhook bodies of the simulated Meta, shaped like the samples in tests/fixtures/payloads/:
the ``calls`` field (connect, terminate, call statuses) and the ``messages`` field (permission
replies, message statuses), with the 2026 user ids (docs/meta-2026-identity.md §1)."""

from __future__ import annotations

from typing import Any

from gateway.simulator.call import SimulatedCall
from gateway.simulator.meta import TROUBLESHOOTING_URL, new_wamid
from gateway.simulator.phone import NO_MEDIA_ERROR
from gateway.simulator.runtime import Clock
from gateway.simulator.users import SimulatedUser
from gateway.simulator.waba import Waba


def contact(user: SimulatedUser, show_number: bool, *, name: str | None,
             outbound: bool = False) -> dict[str, Any]:
    """``contacts[0]`` (docs/meta-2026-identity.md §1; the samples
    tests/fixtures/payloads/webhook-connect-user-initiated-with-bsuid.json and
    ...-username-only.json): profile (name; username only if adopted), wa_id only when the
    number is shown, user_id, parent_user_id only when parent BSUIDs exist.
    Business-initiated contacts carry no profile name (as
    tests/fixtures/payloads/webhook-connect-business-initiated.json), and the username
    after the ids (Meta: "user_id, parent_user_id, wa_id and profile.username")."""
    profile: dict[str, Any] = {}
    if name:
        profile["name"] = name
    if user.username:
        profile["username"] = user.username
    contact: dict[str, Any] = {}
    if profile and not outbound:
        contact["profile"] = profile
    if show_number:
        contact["wa_id"] = user.wa_id
    contact["user_id"] = user.user_id
    if user.parent_user_id:
        contact["parent_user_id"] = user.parent_user_id
    if outbound and user.username:
        contact["profile"] = {"username": user.username}
    return contact

def parties(call: SimulatedCall) -> dict[str, str]:
    """``to``/``from``; the user's side is left out (not empty) when the number is hidden."""
    user_side = {"to" if call.outbound else "from": call.wa_id} if call.show_number else {}
    if call.outbound:
        return {**user_side, "from": call.display_phone_number}
    return {"to": call.display_phone_number, **user_side}

def user_ids(call: SimulatedCall) -> dict[str, str]:
    """``from_user_id``/``to_user_id`` (+ parent) of a ``calls[]`` item
    (docs/meta-2026-identity.md §1)."""
    side = "to" if call.outbound else "from"
    ids = {f"{side}_user_id": call.user.user_id}
    if call.user.parent_user_id:
        ids[f"{side}_parent_user_id"] = call.user.parent_user_id
    return ids


class Payloads:
    """Writes the webhook bodies of one business account."""

    def __init__(self, *, waba: Waba, clock: Clock):
        self.waba = waba
        self.clock = clock

    def call_envelope(self, call: SimulatedCall, calls: list[dict[str, Any]],
                      errors: list[dict[str, Any]] | None = None,
                      contacts: bool = False, key: str = "calls") -> dict[str, Any]:
        """Field ``calls``: call events, or call statuses under ``key="statuses"``."""
        value: dict[str, Any] = {
            "messaging_product": "whatsapp",
            "metadata": {"display_phone_number": call.display_phone_number,
                         "phone_number_id": call.phone_number_id},
        }
        if contacts:
            entry = contact(call.user, call.show_number,
                            name=None if call.outbound else call.profile_name,
                            outbound=call.outbound)
            if key == "statuses":  # ids only, as webhook-status-ringing-with-bsuid.json
                entry.pop("profile", None)
            value["contacts"] = [entry]
        value[key] = calls
        if errors:
            value["errors"] = errors
        return {"object": "whatsapp_business_account",
                "entry": [{"id": self.waba.waba_id,
                           "changes": [{"value": value, "field": "calls"}]}]}

    def connect(self, call: SimulatedCall) -> dict[str, Any]:
        """Shaped like tests/fixtures/payloads/webhook-connect-{user,business}-initiated.json."""
        if call.outbound:
            item: dict[str, Any] = {"id": call.call_id, **parties(call),
                                    "event": "connect", "timestamp": str(int(self.clock.now())),
                                    "direction": call.direction}
            if call.biz_opaque_callback_data is not None:
                item["biz_opaque_callback_data"] = call.biz_opaque_callback_data
            item["session"] = {"sdp_type": "answer", "sdp": call.answer_sdp}
            item.update(user_ids(call))
            return self.call_envelope(call, [item], contacts=True)
        item = {
            "id": call.call_id,
            **parties(call),
            "event": "connect",
            "timestamp": str(int(call.started_at)),
            "direction": call.direction,
        }
        if call.deeplink_payload is not None:
            item["deeplink_payload"] = call.deeplink_payload
        if call.cta_payload is not None:
            item["cta_payload"] = call.cta_payload
        item["session"] = {"sdp_type": "offer", "sdp": call.phone.offer_sdp}
        item.update(user_ids(call))
        return self.call_envelope(call, [item], contacts=True)

    def terminate(self, call: SimulatedCall, *, error_code: int | None = None,
                  error_detail: str | None = None) -> dict[str, Any]:
        """Shaped like tests/fixtures/payloads/webhook-terminate-{completed,failed}.json."""
        item: dict[str, Any] = {
            "id": call.call_id,
            **parties(call),
            "event": "terminate",
            "direction": call.direction,
        }
        for key in ("deeplink_payload", "cta_payload", "biz_opaque_callback_data"):
            if getattr(call, key) is not None:
                item[key] = getattr(call, key)
        item["timestamp"] = str(int(call.ended_at or self.clock.now()))
        item["status"] = call.end_status or "FAILED"
        if call.accepted_at is not None:
            item["start_time"] = str(int(call.accepted_at))
            item["end_time"] = str(int(call.ended_at or self.clock.now()))
            item["duration"] = int(call.ended_at or self.clock.now()) - int(call.accepted_at)
        # docs/meta-2026-identity.md §1: terminates carry the user ids and a contacts[] entry, as
        # connects do.
        item.update(user_ids(call))
        errors = None
        if error_code is not None:
            message = {NO_MEDIA_ERROR: "No media received"}.get(error_code, "Call failed")
            details = error_detail or message
            # Both levels, as delivered events do (§7.6): `value` with href, `calls[i]` with title.
            errors = [{"code": error_code, "message": message, "href": TROUBLESHOOTING_URL,
                       "error_data": {"details": details}}]
            item["errors"] = [{"code": error_code, "title": message, "message": message,
                               "error_data": {"details": details}}]
        return self.call_envelope(call, [item], errors, contacts=True)

    def status(self, call: SimulatedCall, status: str) -> dict[str, Any]:
        """Shaped like tests/fixtures/payloads/webhook-status-ringing-with-bsuid.json:
        ``recipient_id`` only when the number is shown, ``recipient_user_id`` always,
        ``contacts`` with the ids."""
        item: dict[str, Any] = {"id": call.call_id, "timestamp": str(int(self.clock.now())),
                                "type": "call", "status": status}
        if call.show_number:
            item["recipient_id"] = call.wa_id
        item["recipient_user_id"] = call.user.user_id
        if call.user.parent_user_id:
            item["recipient_parent_user_id"] = call.user.parent_user_id
        if call.biz_opaque_callback_data is not None:
            item["biz_opaque_callback_data"] = call.biz_opaque_callback_data
        return self.call_envelope(call, [item], key="statuses", contacts=True)

    def messages_envelope(self, phone_number_id: str, key: str, items: list[dict[str, Any]],
                          user: SimulatedUser | None = None) -> dict[str, Any]:
        """Field ``messages`` (§6 permission replies; message statuses)."""
        value: dict[str, Any] = {
            "messaging_product": "whatsapp",
            "metadata": {"display_phone_number": self.waba.display_number(phone_number_id),
                         "phone_number_id": phone_number_id},
        }
        if user is not None:
            value["contacts"] = [contact(user, self.waba.shows_number(phone_number_id, user),
                                         name=user.name)]
        value[key] = items
        return {"object": "whatsapp_business_account",
                "entry": [{"id": self.waba.waba_id,
                           "changes": [{"value": value, "field": "messages"}]}]}

    def permission_reply(self, phone_number_id: str, user: SimulatedUser, *,
                         response: str, source: str, context_id: str | None,
                         permanent: bool, expires_at: float | None,
                         now: float) -> dict[str, Any]:
        """Shaped like tests/fixtures/payloads/webhook-call-permission-reply*.json. ASSUMPTION: a
        reject carries only ``response`` and ``response_source`` (as the auto-revoked sample)."""
        reply: dict[str, Any] = {"response": response}
        if response == "accept":
            reply["is_permanent"] = permanent
            if not permanent and expires_at is not None:
                reply["expiration_timestamp"] = str(int(expires_at))
        reply["response_source"] = source
        shown = self.waba.shows_number(phone_number_id, user, now)
        message: dict[str, Any] = {"from": user.wa_id} if shown else {}
        # docs/meta-2026-identity.md §1: permission replies carry from_user_id (and the parent
        # id), per Meta's user-call-permissions page.
        message["from_user_id"] = user.user_id
        if user.parent_user_id:
            message["from_parent_user_id"] = user.parent_user_id
        message |= {"id": new_wamid(), "timestamp": str(int(now))}
        if context_id is not None:
            message["context"] = ({"from": user.wa_id} if shown else {}) | {"id": context_id}
        message["type"] = "interactive"
        message["interactive"] = {"type": "call_permission_reply",
                                  "call_permission_reply": reply}
        return self.messages_envelope(phone_number_id, "messages", [message], user)
