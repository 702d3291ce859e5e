"""Asking and calling: what the API, the CLI and outbound calls ask of the permission rules.

:func:`decide_call` (may the business call this user now?), :func:`request_permission` (send a
call permission request unless a §10 rule forbids it) and :func:`send_call_button` (§5) are
the ledger's rules plus Meta's word. :class:`PermissionService` binds the first two to the
running gateway's Graph client and ledger and counts each outcome in the metrics, so the API's
refusals are counted as the dialplan's calls' are.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Protocol

from gateway.calls.deps import Ledger
from gateway.calls.permissions.ledger import PermissionLedger
from gateway.calls.permissions.rules import (
    OK,
    PERMANENT_EXISTS,
    REQUEST_LIMIT,
    Decision,
    RefusalReason,
    next_allowed_at,
)
from gateway.whatsapp.graph import GraphError
from gateway.whatsapp.messages import permission_request_body, voice_call_body

log = logging.getLogger(__name__)

META_REFRESH_S = 600.0
"""How long a "no permission" the ledger learned from Meta is trusted without asking again."""


class CallPermissionsApi(Protocol):
    """Meta's ``GET call_permissions`` (§3), as :func:`decide_call` asks it."""

    async def get_call_permissions(self, phone_number_id: str,
                                   user_wa_id: str) -> dict[str, Any]: ...


class PermissionsGraph(CallPermissionsApi, Protocol):
    """What asking and calling need of the Graph client."""

    async def send_message(self, phone_number_id: str, body: dict[str, Any]) -> str: ...


async def decide_call(graph: CallPermissionsApi, ledger: Ledger, pnid: str, user: str,
                      now: float | None = None) -> Decision:
    """May the business call this user now? The ledger answers; when it would refuse for lack
    of permission but has heard nothing from Meta about the pair lately (a new user, or a
    grant made outside our view, e.g. from the business profile), Meta's call_permissions
    decides first (§3), so a fresh ledger never blocks a user who did grant permission."""
    decision = await ledger.can_call(pnid, user, now)
    if decision.allowed or decision.reason not in (RefusalReason.NO_PERMISSION,
                                                   RefusalReason.PERMISSION_EXPIRED):
        return decision
    state = await ledger.get(pnid, user, now)
    heard = max(state.get("meta_checked_at") or 0, state["permission"].get("updated_at") or 0)
    if heard and (ledger.clock() if now is None else now) - heard < META_REFRESH_S:
        return decision
    try:
        answer = await graph.get_call_permissions(pnid, user)
    except GraphError as exc:
        log.warning("call_permissions for +%s not available (%s); the ledger decides", user, exc)
        return decision
    await ledger.apply_meta_permissions(pnid, user, answer, now)
    return await ledger.can_call(pnid, user, now)


async def request_permission(graph: PermissionsGraph, ledger: PermissionLedger, pnid: str,
                             user: str, body_text: str | None, *,
                             now: float | None = None) -> tuple[Decision, str | None]:
    """Send ``user`` a call permission request unless a §10 rule forbids it.

    Returns the decision and Meta's message id (None when refused). Refused locally: over the
    request limits (with the next allowed time), permanent permission already held, unsupported
    country. The request is counted in the same store transaction that allows it, so two
    gateways sharing a ledger cannot both send one. Meta's 138009 / 138017 are recorded and
    returned as refusals; any other Graph error is raised as :class:`GraphError`."""
    body = permission_request_body(user, body_text)
    async with ledger.pair_lock(pnid, user):
        decision, reservation = await ledger.reserve_request(pnid, user, now)
        if not decision.allowed:
            return decision, None
        try:
            message_id = await graph.send_message(pnid, body)
        except BaseException as exc:
            await ledger.release_request(reservation)
            if not isinstance(exc, GraphError) or exc.code not in (REQUEST_LIMIT,
                                                                    PERMANENT_EXISTS):
                raise
            refused = await ledger.apply_meta_error(
                pnid, user, exc.code, now,
                retry_at=next_allowed_at(exc.error_data, ledger.clock() if now is None
                                         else now))
            if refused is not None and not refused.allowed:
                return refused, None
            return Decision(False, RefusalReason.LIMIT_REQUESTS_24H if exc.code == REQUEST_LIMIT
                            else RefusalReason.PERMANENT_EXISTS,
                            f"Meta refused: {exc.meta_message}", None, exc.code), None
        await ledger.confirm_request(pnid, user, reservation, message_id, now)
        return OK, message_id


async def send_call_button(graph: PermissionsGraph, pnid: str, user: str, body_text: str,
                           display_text: str = "Call Now", ttl_minutes: int = 10080,
                           payload: str | None = None) -> str:
    """Send the "call us" button (§5); returns Meta's message id. The payload comes back as
    ``cta_payload`` on the user's call. Raises ValueError (naming the field) before any request
    when a parameter is out of Meta's bounds."""
    body = voice_call_body(user, body_text, display_text, ttl_minutes, payload)
    return await graph.send_message(pnid, body)


class PermissionMetrics(Protocol):
    """Where outcomes are counted (:class:`gateway.metrics.GatewayMetrics`)."""

    def permission_request(self, result: str, phone_number_id: str) -> None: ...

    def permission_refused(self, reason: str, phone_number_id: str,
                           what: str = "call") -> None: ...


@dataclass
class PermissionService:
    """The rules bound to the running gateway: one decision per API request, each refusal
    counted once (``what`` = call or request), whoever asked."""

    graph: PermissionsGraph
    ledger: PermissionLedger
    metrics: PermissionMetrics | None = None

    async def may_call(self, pnid: str, user: str) -> Decision:
        """:func:`decide_call`, a refusal counted."""
        decision = await decide_call(self.graph, self.ledger, pnid, user)
        if not decision.allowed and self.metrics is not None:
            self.metrics.permission_refused(decision.reason, pnid, what="call")
        return decision

    async def request(self, pnid: str, user: str,
                      body_text: str | None) -> tuple[Decision, str | None]:
        """:func:`request_permission`, the request or its refusal counted."""
        decision, message_id = await request_permission(self.graph, self.ledger, pnid, user,
                                                        body_text)
        if self.metrics is not None:
            if decision.allowed:
                self.metrics.permission_request("sent", pnid)
            else:
                self.metrics.permission_refused(decision.reason, pnid, what="request")
        return decision, message_id
