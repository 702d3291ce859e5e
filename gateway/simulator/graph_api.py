"""The Graph API's front door at the simulated Meta: every request is recorded, its token,
Graph version and business number checked, and its answer (or :class:`GraphError`) written the
way Meta writes it (docs/meta-calling.md §11, §14). Faults injected on purpose (a test aid)
answer before anything else.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from gateway.simulator.meta import ApiRequest, GraphError, invalid, version_refusal
from gateway.simulator.runtime import Clock
from gateway.simulator.waba import Waba

Handler = Callable[[str, Any, ApiRequest], Awaitable[dict[str, Any]]]
"""Carries out one request: (phone_number_id, body or query, its record) → the 200 body."""


@dataclass
class InjectedFault:
    """A test aid, not Meta behaviour: the next ``count`` requests for ``action`` (a calls
    action, message type or ``call_permissions``) get an error instead of being carried out.

    ``status`` 500 answers Graph's transient unknown error (code 1), 429 its rate limit (code
    4, with ``Retry-After`` if given), anything else code 2 (service unavailable).
    ``delay_s`` holds the answer that long first, to run a client into its timeout."""

    action: str
    status: int = 500
    count: int = 1
    retry_after: float | None = None
    delay_s: float = 0.0

    def error(self) -> GraphError:
        if self.status == 429:
            return GraphError(4, "(#4) Application request limit reached", status=429)
        if self.status == 500:
            return GraphError(1, "An unknown error has occurred.", status=500)
        return GraphError(2, "Service temporarily unavailable", status=self.status)


class GraphApi:
    """Records, checks and answers the business's Graph requests."""

    def __init__(self, *, waba: Waba, clock: Clock, access_token: str):
        self.waba = waba
        self.clock = clock
        self.access_token = access_token
        self.requests: list[ApiRequest] = []
        self.faults: list[InjectedFault] = []
        """Test aid: Graph requests to fail on purpose (:meth:`fail_next`)."""

    def add_routes(self, app: web.Application) -> None:
        app.router.add_post("/_sim/faults", self._handle_faults)

    def requests_for(self, call_id: str | None = None, action: str | None = None,
                     endpoint: str | None = None) -> list[ApiRequest]:
        """Recorded requests. ``action``: the calls action, the message type
        (``call_permission_request``, ``voice_call``, ``text``, ``template``...),
        ``call_permissions``, ``get_settings`` or ``set_settings``."""
        return [r for r in self.requests
                if (call_id is None or r.call_id == call_id)
                and (action is None or r.action == action)
                and (endpoint is None or r.endpoint == endpoint)]

    async def serve(self, request: web.Request, endpoint: str, handle: Handler,
                    action: Callable[[Any], str | None]) -> web.Response:
        """Record a Graph request, check token, version and number, run ``handle`` and answer
        its result or its :class:`GraphError`."""
        phone_number_id = request.match_info["phone_number_id"]
        if request.method == "GET":
            body: Any = dict(request.query)
        else:
            raw = await request.read()
            try:
                body = json.loads(raw) if raw else {}
            except ValueError:
                body = raw.decode(errors="replace")
        rec = ApiRequest(action=action(body) if isinstance(body, dict) else None, body=body,
                         time=self.clock.now(), phone_number_id=phone_number_id,
                         endpoint=endpoint, method=request.method)
        self.requests.append(rec)
        fault = self._take_fault(rec.action)
        if fault is not None:
            if fault.delay_s:
                await asyncio.sleep(fault.delay_s)
            err = fault.error()
            rec.status, rec.response = err.status, err.body()
            headers = {"Retry-After": f"{fault.retry_after:g}"} \
                if fault.retry_after is not None else None
            return web.json_response(rec.response, status=rec.status, headers=headers)
        try:
            self.check_auth(request)
            self.check_version(request.match_info["version"])
            if not isinstance(body, dict):
                raise invalid("The request body is not a JSON object")
            if phone_number_id not in self.waba.numbers:
                raise GraphError(
                    100, f"Unsupported {request.method.lower()} request. Object with ID "
                    f"'{phone_number_id}' does not exist, cannot be loaded due to missing "
                    "permissions, or does not support this operation.", subcode=33)
            result = await handle(phone_number_id, body, rec)
            rec.status, rec.response = 200, result
        except GraphError as err:
            rec.status, rec.response = err.status, err.body()
        return web.json_response(rec.response, status=rec.status)

    def check_auth(self, request: web.Request) -> None:
        header = request.headers.get("Authorization", "")
        token = header[7:].strip() if header.lower().startswith("bearer ") else ""
        if not token or not hmac.compare_digest(token.encode(), self.access_token.encode()):
            raise GraphError(190, "Invalid OAuth access token - Cannot parse access token",
                             status=401)

    def check_version(self, version: str) -> None:
        today = time.strftime("%Y-%m-%d", time.gmtime(self.clock.now()))
        refusal = version_refusal(version, today)
        if refusal is not None:
            raise refusal

    # --- fault injection (a test aid) ---------------------------------------------------------

    def fail_next(self, action: str, status: int = 500, count: int = 1, *,
                  retry_after: float | None = None, delay_s: float = 0.0) -> InjectedFault:
        """Fail the next ``count`` ``action`` requests with ``status`` (see InjectedFault).
        Faults for one action are used up in the order they were added."""
        fault = InjectedFault(action, status, count, retry_after, delay_s)
        self.faults.append(fault)
        return fault

    def _take_fault(self, action: str | None) -> InjectedFault | None:
        fault = next((f for f in self.faults if f.action == action and f.count > 0), None)
        if fault is None:
            return None
        fault.count -= 1
        if fault.count == 0:
            self.faults.remove(fault)
        return fault

    async def _handle_faults(self, request: web.Request) -> web.Response:
        """``POST /_sim/faults`` ``{"action", "status", "count", "retry_after", "delay_s"}``."""
        try:
            body = await request.json()
            fault = self.fail_next(str(body["action"]), int(body.get("status", 500)),
                                   int(body.get("count", 1)),
                                   retry_after=body.get("retry_after"),
                                   delay_s=float(body.get("delay_s", 0.0)))
        except (ValueError, KeyError, TypeError) as exc:
            return web.json_response({"error": f"bad fault: {exc!r}"}, status=400)
        return web.json_response({"action": fault.action, "status": fault.status,
                                  "count": fault.count})
