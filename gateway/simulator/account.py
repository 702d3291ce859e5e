"""The simulated Meta's account endpoints: ``GET call_permissions``, ``GET|POST settings``
and ``POST messages`` (permission requests, call buttons), with Meta's limits (§3-5, §10)."""

from __future__ import annotations

import asyncio
import json
import re
import time
from typing import Any

from aiohttp import web

from gateway.simulator import settings as number_settings
from gateway.simulator.meta import (
    CALL_PERMISSIONS_PER_S,
    ApiRequest,
    GraphError,
    invalid,
    new_wamid,
)
from gateway.simulator.users import (
    SimulatedUser,
    exhausted,
    permissions_body,
    request_limits,
)


class AccountApi:
    """Mixin of :class:`CloudApiSimulator`: permissions, settings, messages."""

    # --- GET /{version}/{phone_number_id}/call_permissions ------------------------------------

    async def _handle_call_permissions(self, request: web.Request) -> web.Response:
        async def handle(phone_number_id: str, query: Any, rec: ApiRequest) -> dict[str, Any]:
            recent = [t for t in self._permission_gets.get(phone_number_id, [])
                      if t > time.monotonic() - 1.0]
            if len(recent) >= CALL_PERMISSIONS_PER_S:
                raise GraphError(613, "(#613) Calls to this api have exceeded the rate limit.",
                                 f"At most {CALL_PERMISSIONS_PER_S} call_permissions requests "
                                 "per second", status=429)
            recent.append(time.monotonic())
            self._permission_gets[phone_number_id] = recent
            wa_id = str(query.get("user_wa_id", "")).strip().lstrip("+")
            if not wa_id.isdigit():
                raise invalid("user_wa_id is required: the user's phone number")
            now = time.time()
            return permissions_body(self.user(wa_id), self.pair(phone_number_id, wa_id), now)

        return await self._api(request, "call_permissions", handle,
                               lambda body: "call_permissions")

    # --- GET|POST /{version}/{phone_number_id}/settings ---------------------------------------

    async def _handle_get_settings(self, request: web.Request) -> web.Response:
        async def handle(phone_number_id: str, query: Any, rec: ApiRequest) -> dict[str, Any]:
            return json.loads(json.dumps(self.number_settings(phone_number_id)))

        return await self._api(request, "settings", handle, lambda body: "get_settings")

    async def _handle_post_settings(self, request: web.Request) -> web.Response:
        async def handle(phone_number_id: str, body: Any, rec: ApiRequest) -> dict[str, Any]:
            current = self.number_settings(phone_number_id)
            trial = json.loads(json.dumps(current))
            try:
                changed = number_settings.apply_settings(trial, body)
            except ValueError as exc:
                raise invalid(str(exc)) from None
            self.settings[phone_number_id] = trial
            self.note(f"settings of {phone_number_id} updated"
                      + (f": {', '.join(changed)} changed" if changed else " (no change)"))
            return {"success": True}

        return await self._api(request, "settings", handle, lambda body: "set_settings")

    # --- POST /{version}/{phone_number_id}/messages -------------------------------------------

    async def _handle_messages(self, request: web.Request) -> web.Response:
        def action(body: dict[str, Any]) -> str | None:
            if body.get("type") == "interactive" and isinstance(body.get("interactive"), dict):
                return body["interactive"].get("type")
            return body.get("type")

        return await self._api(request, "messages", self._message, action)

    async def _message(self, phone_number_id: str, body: Any, rec: ApiRequest) -> dict[str, Any]:
        """§5: validate, record, answer per tests/fixtures/payloads/response-message-send.json; a
        permission request is answered by the user later, like on a phone."""
        if body.get("messaging_product") != "whatsapp":
            raise invalid("messaging_product must be \"whatsapp\"")
        to = body.get("to")
        if not isinstance(to, str) or not re.fullmatch(r"\+?\d{6,15}", to.strip()):
            raise invalid("to must be the user's phone number")
        wa_id = to.strip().lstrip("+")
        kind = body.get("type", "text")
        if not isinstance(kind, str) or kind not in body:
            raise invalid(f"the message needs a {kind!r} object matching its type")
        user = self.user(wa_id)
        now = time.time()
        interactive_type = None
        is_request = False
        if kind == "interactive":
            interactive = body["interactive"]
            if not isinstance(interactive, dict):
                raise invalid("interactive must be an object")
            interactive_type = interactive.get("type")
            if interactive_type == "call_permission_request":
                _check_permission_request(interactive)
                is_request = True
            elif interactive_type == "voice_call":
                _check_voice_call(interactive)
            if interactive_type in ("call_permission_request", "voice_call") and \
                    not user.in_service_window:
                # ASSUMPTION: 131047 is Meta's code for free-form messages outside the 24 h
                # customer-service window (§5 says templates are needed then; no code given).
                raise GraphError(131047, "Re-engagement message",
                                 "More than 24 hours have passed since the user last wrote; "
                                 "use a template")
        elif kind == "template":
            template = body["template"]
            components = template.get("components") if isinstance(template, dict) else None
            is_request = any(isinstance(c, dict) and c.get("type") == "call_permission_request"
                             for c in components or [])
        wamid = new_wamid()
        undeliverable = user.app_too_old and (
            is_request or interactive_type == "voice_call"
            or (kind == "template" and "voice_call" in json.dumps(body["template"])))
        if is_request and not undeliverable:
            counters = self.pair(phone_number_id, wa_id)
            if user.permission_status(now) == "permanent":
                raise GraphError(138017, "Permission request not sent: permanent permission "
                                 "exists", "The user already granted a permanent permission")
            full = exhausted(request_limits(counters, now))
            if full is not None:
                raise GraphError(138009, "Call permission request limit reached",
                                 f"At most {full['max_allowed']} per {full['time_period']}; "
                                 f"the next request is allowed at "
                                 f"{full['limit_expiration_time']} (unix time)")
            counters.requests.append(now)
        self.messages.append({"id": wamid, "to": wa_id, "type": kind,
                              "interactive_type": interactive_type, "body": body, "time": now,
                              "phone_number_id": phone_number_id})
        self.note(f"business sent {interactive_type or kind} to {wa_id} ({wamid})")
        if undeliverable:
            self._spawn(self._undeliverable(phone_number_id, user, wamid))
        elif is_request:
            self._spawn(self._reply_to_request(phone_number_id, user, wamid))
        return {"messaging_product": "whatsapp",
                "contacts": [{"input": to, "wa_id": wa_id}],
                "messages": [{"id": wamid}]}

    async def _reply_to_request(self, phone_number_id: str, user: SimulatedUser,
                                wamid: str) -> None:
        """The user answers the permission request on the phone (§6 permission reply).

        ASSUMPTION: a decline leaves the user without permission (the latest answer wins)."""
        how = user.on_permission_request
        if how == "ignore":
            self.note(f"user {user.wa_id} ignores the permission request {wamid}")
            return
        await asyncio.sleep(user.reply_after_s)
        now = time.time()
        if how == "reject":
            user.set_permission("no_permission", now)
        else:
            user.set_permission("permanent" if how == "accept_permanent" else "temporary", now)
        self.note(f"user {user.wa_id} answers the permission request: "
                  f"{'reject' if how == 'reject' else user.permission}")
        await self._send_permission_reply(
            phone_number_id, user, response="reject" if how == "reject" else "accept",
            source="user_action", context_id=wamid, permanent=how == "accept_permanent",
            now=now)

    async def _undeliverable(self, phone_number_id: str, user: SimulatedUser,
                             wamid: str) -> None:
        """§11 131026: the user's app is too old; Meta reports it with a failed status.
        ASSUMPTION: the usual Cloud API message status shape (``statuses[]`` on field
        ``messages``, status ``failed``), which the reference does not show."""
        await asyncio.sleep(0.1)
        status = {"id": wamid, "status": "failed", "timestamp": str(int(time.time())),
                  "recipient_id": user.wa_id,
                  "errors": [{"code": 131026, "title": "Message undeliverable",
                              "message": "Message undeliverable",
                              "error_data": {"details": "The user's WhatsApp version cannot "
                                             "show this message"}}]}
        self.note(f"message {wamid} to {user.wa_id} undeliverable (131026)")
        await self.send_webhook(self._messages_envelope(phone_number_id, "statuses", [status]))


def _check_permission_request(interactive: dict[str, Any]) -> None:
    """§5 / tests/fixtures/payloads/request-message-call-permission-request.json."""
    action = interactive.get("action")
    if not isinstance(action, dict) or action.get("name") != "call_permission_request":
        raise invalid("interactive.action.name must be \"call_permission_request\"")
    for part in ("header", "footer"):
        if part in interactive:
            raise invalid(f"a free-form call permission request takes no {part}")
    if "body" in interactive:
        body = interactive["body"]
        if not isinstance(body, dict) or not isinstance(body.get("text"), str) \
                or not body["text"].strip():
            raise invalid("interactive.body must be {\"text\": \"...\"}")
        if len(body["text"]) > 1024:
            raise invalid("interactive.body.text is limited to 1024 characters")


def _check_voice_call(interactive: dict[str, Any]) -> None:
    """§5 / tests/fixtures/payloads/request-message-voice-call-button.json."""
    body = interactive.get("body")
    if not isinstance(body, dict) or not isinstance(body.get("text"), str) \
            or not body["text"].strip():
        raise invalid("interactive.body.text is required for a voice_call message")
    action = interactive.get("action")
    if not isinstance(action, dict) or action.get("name") != "voice_call":
        raise invalid("interactive.action.name must be \"voice_call\"")
    params = action.get("parameters", {})
    if not isinstance(params, dict):
        raise invalid("interactive.action.parameters must be an object")
    display = params.get("display_text", "Call Now")
    if not isinstance(display, str) or not display or len(display) > 20:
        raise invalid("display_text must be 1 to 20 characters")
    ttl = params.get("ttl_minutes", 10080)
    if isinstance(ttl, str) and ttl.isdigit():
        ttl = int(ttl)
    if not isinstance(ttl, int) or isinstance(ttl, bool) or not 1 <= ttl <= 43200:
        raise invalid("ttl_minutes must be between 1 and 43200")
    payload = params.get("payload")
    if payload is not None and (not isinstance(payload, str) or len(payload) > 512):
        raise invalid("payload must be a string of at most 512 characters")
