"""The simulated Meta's account endpoints: ``GET call_permissions``, ``GET|POST settings``
and ``POST messages`` (permission requests, call buttons), with Meta's limits (§3-5, §10)."""

from __future__ import annotations

import asyncio
import json
from typing import Any

from aiohttp import web

from gateway.simulator import settings as number_settings
from gateway.simulator.account_events import AccountEvents
from gateway.simulator.graph_api import GraphApi
from gateway.simulator.meta import (
    CALL_PERMISSIONS_PER_S,
    ApiRequest,
    GraphError,
    invalid,
    new_wamid,
)
from gateway.simulator.payloads import Payloads
from gateway.simulator.permission_replies import PermissionReplies
from gateway.simulator.runtime import Background, Clock
from gateway.simulator.users import (
    BSUID,
    SimulatedUser,
    exhausted,
    permissions_body,
    request_limits,
)
from gateway.simulator.waba import Waba
from gateway.simulator.webhooks import WebhookSender


class AccountApi:
    """The account's Graph endpoints: call permissions, settings, messages."""

    def __init__(self, *, waba: Waba, graph: GraphApi, payloads: Payloads,
                 webhooks: WebhookSender, permissions: PermissionReplies,
                 events: AccountEvents, clock: Clock, background: Background):
        self.waba = waba
        self.graph = graph
        self.payloads = payloads
        self.webhooks = webhooks
        self.permissions = permissions
        self.events = events
        self.clock = clock
        self.background = background
        self._permission_gets: dict[str, list[float]] = {}

    def add_routes(self, app: web.Application) -> None:
        app.router.add_post("/{version}/{phone_number_id}/messages", self._handle_messages)
        app.router.add_get("/{version}/{phone_number_id}/call_permissions",
                           self._handle_call_permissions)
        app.router.add_get("/{version}/{phone_number_id}/settings", self._handle_get_settings)
        app.router.add_post("/{version}/{phone_number_id}/settings", self._handle_post_settings)

    # --- GET /{version}/{phone_number_id}/call_permissions ------------------------------------

    async def _handle_call_permissions(self, request: web.Request) -> web.Response:
        async def handle(phone_number_id: str, query: Any, rec: ApiRequest) -> dict[str, Any]:
            recent = [t for t in self._permission_gets.get(phone_number_id, [])
                      if t > self.clock.monotonic() - 1.0]
            if len(recent) >= CALL_PERMISSIONS_PER_S:
                raise GraphError(613, "(#613) Calls to this api have exceeded the rate limit.",
                                 f"At most {CALL_PERMISSIONS_PER_S} call_permissions requests "
                                 "per second", status=429)
            recent.append(self.clock.monotonic())
            self._permission_gets[phone_number_id] = recent
            # docs/meta-2026-identity.md §1: ``recipient=<BSUID>`` next to ``user_wa_id``; the
            # answer's shape is the same.
            recipient = str(query.get("recipient", "")).strip()
            wa_id = str(query.get("user_wa_id", "")).strip().lstrip("+")
            if wa_id:
                if not wa_id.isdigit():
                    raise invalid("user_wa_id must be the user's phone number")
                user = self.waba.user(wa_id)
            elif recipient:
                if not BSUID.fullmatch(recipient):
                    raise invalid("recipient must be a BSUID or a parent BSUID")
                found = self.waba.find_user(recipient)
                if found is None:
                    raise invalid(f"recipient {recipient} is not a user of this portfolio")
                user = found
            else:
                raise invalid("user_wa_id (the user's phone number) or recipient (the user's "
                              "BSUID) is required")
            now = self.clock.now()
            return permissions_body(user, self.waba.pair(phone_number_id, user.key), now)

        return await self.graph.serve(request, "call_permissions", handle,
                               lambda body: "call_permissions")

    # --- GET|POST /{version}/{phone_number_id}/settings ---------------------------------------

    async def _handle_get_settings(self, request: web.Request) -> web.Response:
        async def handle(phone_number_id: str, query: Any, rec: ApiRequest) -> dict[str, Any]:
            return json.loads(json.dumps(self.waba.number_settings(phone_number_id)))

        return await self.graph.serve(request, "settings", handle, lambda body: "get_settings")

    async def _handle_post_settings(self, request: web.Request) -> web.Response:
        async def handle(phone_number_id: str, body: Any, rec: ApiRequest) -> dict[str, Any]:
            current = self.waba.number_settings(phone_number_id)
            trial = json.loads(json.dumps(current))
            try:
                changed = number_settings.apply_settings(trial, body)
            except ValueError as exc:
                raise invalid(str(exc)) from None
            self.waba.settings[phone_number_id] = trial
            self.waba.note(f"settings of {phone_number_id} updated"
                           + (f": {', '.join(changed)} changed" if changed else " (no change)"))
            self.background.spawn(self.events.settings_changed(
                phone_number_id, current.get("calling") or {}, trial.get("calling") or {}))
            return {"success": True}

        return await self.graph.serve(request, "settings", handle, lambda body: "set_settings")

    # --- POST /{version}/{phone_number_id}/messages -------------------------------------------

    async def _handle_messages(self, request: web.Request) -> web.Response:
        def action(body: dict[str, Any]) -> str | None:
            if body.get("type") == "interactive" and isinstance(body.get("interactive"), dict):
                return body["interactive"].get("type")
            return body.get("type")

        return await self.graph.serve(request, "messages", self._message, action)

    async def _message(self, phone_number_id: str, body: Any, rec: ApiRequest) -> dict[str, Any]:
        """§5: validate, record, answer per tests/fixtures/payloads/response-message-send.json; a
        permission request is answered by the user later, like on a phone."""
        if body.get("messaging_product") != "whatsapp":
            raise invalid("messaging_product must be \"whatsapp\"")
        user, by_number = self.waba.recipient(body)
        wa_id = user.key
        kind = body.get("type", "text")
        if not isinstance(kind, str) or kind not in body:
            raise invalid(f"the message needs a {kind!r} object matching its type")
        now = self.clock.now()
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
            settings = self.waba.number_settings(phone_number_id)
            if number_settings.business_calling_paused(settings, now):
                # docs/meta-2026-settings-events.md §3: during a business-initiated pause,
                # permission requests cannot be sent either. ASSUMPTION: refused with the pause's
                # code, 138014.
                raise GraphError(138014, "Calling is temporarily disabled for this phone "
                                 "number", "Permission requests are paused with "
                                 "business-initiated calling")
            counters = self.waba.pair(phone_number_id, wa_id)
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
        if by_number:
            # docs/meta-2026-identity.md §1: the business messaged it
            self.waba.number_contact(phone_number_id, user, now)
        self.waba.messages.append({"id": wamid, "to": wa_id, "type": kind,
                              "interactive_type": interactive_type, "body": body, "time": now,
                              "phone_number_id": phone_number_id})
        self.waba.note(f"business sent {interactive_type or kind} to {wa_id} ({wamid})")
        if undeliverable:
            self.background.spawn(self._undeliverable(phone_number_id, user, wamid))
        elif is_request:
            self.background.spawn(self.permissions.answer_request(phone_number_id, user, wamid))
        # docs/meta-2026-identity.md §1: by number, as
        # tests/fixtures/payloads/response-message-send.json; by BSUID, the ids (and the wa_id
        # only if the number is visible). ASSUMPTION: user_id is left out when ``to`` was sent
        # (Meta's BSUID page; its user-call-permissions sample disagrees).
        if by_number:
            contact: dict[str, Any] = {"input": body["to"], "wa_id": user.wa_id}
        else:
            contact = {"input": body["recipient"]}
            if self.waba.shows_number(phone_number_id, user, now):
                contact["wa_id"] = user.wa_id
            contact["user_id"] = user.user_id
            if user.parent_user_id:
                contact["parent_user_id"] = user.parent_user_id
        return {"messaging_product": "whatsapp", "contacts": [contact],
                "messages": [{"id": wamid}]}

    async def _undeliverable(self, phone_number_id: str, user: SimulatedUser,
                             wamid: str) -> None:
        """§11 131026: the user's app is too old; Meta reports it with a failed status.
        ASSUMPTION: the usual Cloud API message status shape (``statuses[]`` on field
        ``messages``, status ``failed``), which the reference does not show."""
        await asyncio.sleep(0.1)
        status: dict[str, Any] = {"id": wamid, "status": "failed",
                                  "timestamp": str(int(self.clock.now()))}
        # docs/meta-2026-identity.md §1: recipient_id only when the number is shown;
        # recipient_user_id always.
        if self.waba.shows_number(phone_number_id, user):
            status["recipient_id"] = user.wa_id
        status["recipient_user_id"] = user.user_id
        status["errors"] = [{"code": 131026, "title": "Message undeliverable",
                             "message": "Message undeliverable",
                             "error_data": {"details": "The user's WhatsApp version cannot "
                                            "show this message"}}]
        self.waba.note(f"message {wamid} to {user.key} undeliverable (131026)")
        await self.webhooks.send(
            self.payloads.messages_envelope(phone_number_id, "statuses", [status]))


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
