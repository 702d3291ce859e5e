"""``/v1``: the HTTP API for CRMs and admins (click-to-call, call state, call records,
permission requests). Bearer-token auth from ``api.tokens``; every error is JSON with the field
or reason named, so a CRM developer can act on it without reading logs.

    POST   /v1/calls                 {"to": "+5511...", "phone_number_id": "...",
                                      "context": "agents", "extension": "100"}  or "channel";
                                     "recipient": "US.1349..." (a BSUID) instead of "to"
    GET    /v1/calls/{id}            state of an outbound call placed through the API
    DELETE /v1/calls/{id}            hang it up
    GET    /v1/calls?since=&until=&direction=&outcome=&limit=&format=csv   call records
    POST   /v1/permission-requests   {"to": "...", "phone_number_id": "...", "body": "..."}
    POST   /v1/call-buttons          {"to": "...", "body": "...", "display_text": "Call Now",
                                      "ttl_minutes": 10080, "payload": "order-123"}
    GET    /v1/permissions/{phone_number_id}/{user}
"""

from __future__ import annotations

import io
import json
import math
import re
import time
from collections.abc import Callable
from typing import Any

from aiohttp import web

from gateway import strict_json
from gateway.calls.ending import CallState
from gateway.calls.manager import CallManager
from gateway.calls.outbound import DialRequest, OutboundCall
from gateway.calls.permissions import (
    Decision,
    PermissionService,
    RefusalReason,
    send_call_button,
)
from gateway.config import Config
from gateway.store import filters_from_query, parse_time
from gateway.whatsapp.graph import GraphError
from gateway.whatsapp.identity import is_bsuid
from gateway.whatsapp.webhook import same_secret

E164 = re.compile(r"^\+?[1-9]\d{6,14}$")
CONTEXT = re.compile(r"[A-Za-z0-9_.+-]{1,79}")
"""A dialplan context name Asterisk accepts and a config would write (AST_MAX_CONTEXT 80)."""
EXTENSION = re.compile(r"[A-Za-z0-9*#+._-]{1,79}")
"""An extension to dial into: digits, letters and ``* # + . _ -`` (AST_MAX_EXTENSION 80)."""
CHANNEL = re.compile(r"[A-Za-z][A-Za-z0-9_]{0,19}/[A-Za-z0-9@._+*#:;=~\[\]/-]{1,200}")
"""``Tech/resource`` as Asterisk names channels (``PJSIP/agent-0000002a``,
``Local/100@agents-00000001;1``); no spaces, commas, ``&``, quotes or controls, which would
split Bridge()'s argument or an AMI header."""
RATE_LIMITS = frozenset(r for r in RefusalReason if r.is_limit)
"""Refusals the API answers with 429 (the action is possible again later); the others 409."""
MAX_TTL_MINUTES = 43200
"""Meta's voice-call button lasts at most 30 days."""


def _dumps(data: Any) -> str:
    return json.dumps(data, default=lambda o: o.to_dict() if hasattr(o, "to_dict") else str(o))


def bearer_auth(config: Callable[[], Config]):  # type: ignore[no-untyped-def]
    """The middleware that guards ``/v1``: the one check of the bearer token, for a gateway
    and for the supervisor of ``serve --workers N`` alike. ``config`` is read per request, so a
    reload's new tokens apply at once."""

    @web.middleware
    async def auth(request: web.Request, handler):  # type: ignore[no-untyped-def]
        if not request.path.startswith("/v1/"):
            return await handler(request)
        tokens = [t.reveal() for t in config().api.tokens if t.reveal()]
        if not tokens:
            return _error(403, "the /v1 API is disabled: set api.tokens in the config")
        header = request.headers.get("Authorization", "")
        given = header[7:].strip() if header.lower().startswith("bearer ") else ""
        # Every token is compared (bytes, constant time), so timing tells nothing either.
        matches = [same_secret(given, t) for t in tokens]
        if not given or not any(matches):
            return _error(401, "missing or wrong bearer token (Authorization: Bearer ...)")
        return await handler(request)

    return auth


def _storage_errors(permissions: Any) -> tuple[type[BaseException], ...]:
    """What the ledger's database raises when it is away (disk full, PostgreSQL down)."""
    store = getattr(getattr(permissions, "ledger", None), "store", None)
    return tuple(getattr(store, "storage_errors", ()))


def _ledger_unavailable(exc: BaseException) -> web.Response:
    """The decision needs a read of the ledger and its database is away: the CRM may try
    again later; nothing was sent to Meta (docs/scaling.md, "The permission ledger")."""
    return _error(503, f"the permission ledger is unavailable: {type(exc).__name__}",
                  reason="ledger_unavailable")


def _error(status: int, message: str, **fields: Any) -> web.Response:
    return web.json_response({"error": {"message": message, **fields}}, status=status)


def _bad_request(message: str, **fields: Any) -> web.HTTPBadRequest:
    """A 400 to raise from a helper, with the JSON body every /v1 error has."""
    return web.HTTPBadRequest(text=json.dumps({"error": {"message": message, **fields}}),
                              content_type="application/json")


def _field_error(field: str, problem: str) -> web.Response:
    return _error(400, f"{field}: {problem}", field=field)


def _filter_field(message: str, query: dict[str, str]) -> str:
    """Which query parameter a filters_from_query error is about: the one its message starts
    with (``limit must be ...``), else the first it does not know (``unknown filter x``)."""
    named = next((key for key in query if message.startswith(key)), None)
    if named is not None:
        return named
    unknown = [key for key in query if key in message.removeprefix("unknown filter ")
               .split(";")[0].split(", ")]
    return unknown[0] if unknown else "query"


def call_state(call: OutboundCall) -> dict[str, Any]:
    rec = call.record
    return {
        "id": call.gateway_id,
        "state": "checking" if call.state == CallState.NEW else call.state.value,
        "wacid": rec.wacid if rec.wacid and rec.wacid != call.gateway_id else None,
        "status": call.status.value if call.status else None,
        "to": f"+{rec.to_number}" if rec.to_number else None,
        "recipient": rec.user_id or None, "username": rec.username or None,
        "phone_number_id": rec.phone_number_id, "asterisk_channel": rec.channel or None,
        "outcome": rec.outcome.value, "reason": rec.reason or None,
        "meta_error_code": rec.meta_error_code, "q850_cause": rec.q850_cause,
        "answered_at": rec.answered_at, "ended_at": rec.ended_at,
    }


def _refused(decision: Decision) -> web.Response:
    """A permission refusal: 429 for a limit (possible again later), 409 otherwise."""
    return _error(429 if decision.reason in RATE_LIMITS else 409, decision.message,
                  reason=decision.reason,
                  next_allowed_at=decision.next_allowed_at, meta_code=decision.meta_code)


def add_api_routes(app: web.Application, config: Config | Callable[[], Config],
                   calls: CallManager, store: Any = None, graph: Any = None,
                   permissions: PermissionService | None = None, handoff: Any = None) -> None:
    """``config`` may be a function returning the running config, so a reload's numbers and
    tokens apply to the next request. ``graph`` sends the call buttons; ``permissions``: the
    permission rules (None: no ledger, calls are placed unchecked and the permission routes
    answer 404). ``handoff`` (gateway/handoff.py ``CallHandOff``, several gateways on one
    store): a call live on another gateway is asked there."""
    current: Callable[[], Config] = config if callable(config) else (lambda: config)

    app.middlewares.append(bearer_auth(current))

    async def recipient(request: web.Request) -> tuple[dict, str, str]:
        """The JSON body, the WhatsApp user (E.164 digits, or a BSUID given as ``recipient``
        -- docs/meta-2026-identity.md §1 -- or in ``to``) and the business number id."""
        try:
            body = strict_json.loads(await request.read())
        except strict_json.StrictJsonError as exc:
            raise _bad_request(str(exc), field=exc.field) from None
        if not isinstance(body, dict):
            raise _bad_request("body must be a JSON object")
        if body.get("recipient") is not None and body.get("to") is None:
            target = str(body["recipient"])
            if not is_bsuid(target):
                raise _bad_request("recipient: must be a BSUID like US.13491208655302741918",
                                   field="recipient")
            to = target
        else:
            to = str(body.get("to", ""))
            if not E164.match(to) and not is_bsuid(to):
                raise _bad_request("to: must be an E.164 number like +5511987650000 (or give "
                                   "a BSUID as recipient)", field="to")
        pnid = body.get("phone_number_id")
        config = current()
        if pnid is None and len(config.numbers) == 1:
            pnid = config.numbers[0].phone_number_id
        if pnid is None:
            raise _bad_request("phone_number_id: required (several numbers configured)",
                         field="phone_number_id")
        if config.number(str(pnid)) is None:
            raise _bad_request(f"phone_number_id: {pnid} is not a configured number",
                         field="phone_number_id")
        return body, to.strip().lstrip("+"), str(pnid)

    async def create_call(request: web.Request) -> web.Response:
        body, to, pnid = await recipient(request)
        channel, context = body.get("channel"), body.get("context")
        if bool(channel) == bool(context):
            return _field_error("context", "give either context (+ extension) or channel")
        extension = body.get("extension", "s")
        for field, value, syntax, rule in (
                ("context", context, CONTEXT, "letters, digits and _ . + - (at most 79)"),
                ("extension", extension, EXTENSION,
                 "letters, digits and * # + . _ - (at most 79)"),
                ("channel", channel, CHANNEL, "Tech/resource, e.g. PJSIP/agent-0000002a, "
                 "without spaces, commas, & or quotes")):
            if value is None or (field != "extension" and not value):
                continue
            if not isinstance(value, str) or not syntax.fullmatch(value):
                return _field_error(field, f"not a valid Asterisk {field}: {rule}")
        if not calls.ami_connected:
            # Else the user's phone would ring for a call that can never reach an agent.
            return _error(409, "Asterisk is not connected (AMI): no call can be bridged now",
                          reason="asterisk_down")
        decision = None
        if permissions is not None:
            # Decided once, here: the CRM gets the refusal, and the call is told the decision
            # rather than asking the ledger (and Meta's call_permissions) again.
            try:
                decision = await permissions.may_call(pnid, to)
            except _storage_errors(permissions) as exc:
                return _ledger_unavailable(exc)
            if not decision.allowed:
                return _refused(decision)
        call = calls.dial(DialRequest(
            to=to, phone_number_id=pnid, agent_channel=channel or None,
            context=context or None, extension=extension, requested_by="api",
            permission=decision))
        return web.json_response(call_state(call), status=201,
                                 headers={"Location": f"/v1/calls/{call.gateway_id}"})

    async def get_call(request: web.Request) -> web.Response:
        call = calls.find_outbound(request.match_info["id"])
        if call is None and handoff is not None:
            state = await handoff.get_call(request.match_info["id"])
            if state is not None:  # live on the gateway that runs it
                return web.json_response(state)
        if call is None:
            if store is not None:
                record = await store.get(request.match_info["id"])
                if record is not None:  # with Meta's voicemail/recording/transcript, if any
                    media = [vars(m) for m in await store.media_for(record.wacid)]
                    return web.json_response({**record.as_dict(), "media": media})
            return _error(404, "no such call")
        return web.json_response(call_state(call))

    async def delete_call(request: web.Request) -> web.Response:
        call = calls.find_outbound(request.match_info["id"])
        if call is None and handoff is not None:
            state = await handoff.delete_call(request.match_info["id"])
            if state is not None:  # ended by the gateway that ran it
                return web.json_response(state)
        if call is None:
            return _error(404, "no such call")
        call.hangup("hung up through the API")
        await call.done.wait()
        return web.json_response(call_state(call))

    async def list_calls(request: web.Request) -> web.Response:
        if store is None:
            return _error(404, "call records are not enabled")
        query = {k: v for k, v in request.query.items() if k != "format"}
        for key in ("since", "until"):
            if query.get(key):
                try:
                    at = parse_time(query[key])
                except (ValueError, OverflowError):
                    at = math.nan
                if not math.isfinite(at) or not 0 <= at < 1e11:
                    return _field_error(key, "not a time: use 24h, 7d, 2026-01-31, "
                                             "2026-01-31T08:00:00+01:00 or a Unix timestamp")
        try:
            filters = filters_from_query(query)
        except ValueError as exc:
            return _error(400, str(exc), field=_filter_field(str(exc), query))
        if request.query.get("format") == "csv":
            filters.pop("limit", None)
            out = io.StringIO()
            await store.export_csv(out, **filters)
            return web.Response(text=out.getvalue(), content_type="text/csv")
        records = await store.list(**filters)
        return web.json_response({"calls": [r.as_dict() for r in records]})

    async def permission_request(request: web.Request) -> web.Response:
        if permissions is None:
            return _error(404, "permission ledger not enabled")
        body, to, pnid = await recipient(request)
        try:
            decision, message_id = await permissions.request(pnid, to,
                                                             str(body.get("body") or ""))
        except GraphError as exc:
            return _error(502, f"Meta refused the request: {exc.meta_message or exc}",
                          meta_code=exc.code)
        except ValueError as exc:
            return _field_error("body", str(exc))
        except _storage_errors(permissions) as exc:
            return _ledger_unavailable(exc)
        if not decision.allowed:
            return _refused(decision)
        return web.json_response({"message_id": message_id, "sent_at": time.time()}, status=201)

    async def call_button(request: web.Request) -> web.Response:
        body, to, pnid = await recipient(request)
        ttl = body.get("ttl_minutes", 10080)
        if isinstance(ttl, str) and ttl.strip().isdigit() and len(ttl) < 10:
            ttl = int(ttl)
        if isinstance(ttl, float) and ttl.is_integer():
            ttl = int(ttl)
        if not isinstance(ttl, int) or isinstance(ttl, bool) \
                or not 1 <= ttl <= MAX_TTL_MINUTES:
            return _field_error("ttl_minutes", f"must be a whole number of minutes from 1 to "
                                               f"{MAX_TTL_MINUTES}")
        try:
            message_id = await send_call_button(
                graph, pnid, to, str(body.get("body") or ""),
                display_text=str(body.get("display_text") or "Call Now"), ttl_minutes=ttl,
                payload=body.get("payload"))
        except ValueError as exc:  # "field: problem", from the message builder's checks
            field, _, problem = str(exc).partition(": ")
            return _field_error("body" if field == "body_text" else field, problem)
        except GraphError as exc:
            return _error(502, f"Meta refused the message: {exc.meta_message or exc}",
                          meta_code=exc.code)
        return web.json_response({"message_id": message_id}, status=201)

    async def get_permission(request: web.Request) -> web.Response:
        if permissions is None:
            return _error(404, "permission ledger not enabled")
        pnid, user = request.match_info["pnid"], request.match_info["user"].lstrip("+")
        return web.json_response(await permissions.ledger.get(pnid, user), dumps=_dumps)

    app.router.add_post("/v1/calls", create_call)
    app.router.add_get("/v1/calls", list_calls)
    app.router.add_get("/v1/calls/{id}", get_call)
    app.router.add_delete("/v1/calls/{id}", delete_call)
    app.router.add_post("/v1/permission-requests", permission_request)
    app.router.add_post("/v1/call-buttons", call_button)
    app.router.add_get("/v1/permissions/{pnid}/{user}", get_permission)
