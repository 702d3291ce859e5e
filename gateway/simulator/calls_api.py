"""``POST /{version}/{phone_number_id}/calls`` at the simulated Meta: the business's call
actions checked and carried out as docs/meta-calling.md §2, §9 and §14 describe. ``connect``
goes to :class:`~gateway.simulator.outbound.BusinessCalls`; ``pre_accept``, ``accept``,
``reject`` and ``terminate`` act on the call they name."""

from __future__ import annotations

import asyncio
from typing import Any

from aiohttp import web

from gateway.simulator import settings as number_settings
from gateway.simulator.call import SimulatedCall
from gateway.simulator.calls import CallRegistry
from gateway.simulator.graph_api import GraphApi
from gateway.simulator.media import CallMedia, announcement, opt_in_objects
from gateway.simulator.meta import OPAQUE_MAX, ApiRequest, GraphError, invalid, session_sdp
from gateway.simulator.outbound import BusinessCalls
from gateway.simulator.runtime import Background, Clock, MetaTimings
from gateway.simulator.waba import Waba


class CallsEndpoint:
    """The business's ``/calls`` requests."""

    def __init__(self, *, waba: Waba, graph: GraphApi, registry: CallRegistry,
                 business: BusinessCalls, media: CallMedia, timings: MetaTimings,
                 clock: Clock, background: Background):
        self.waba = waba
        self.graph = graph
        self.registry = registry
        self.business = business
        self.media = media
        self.timings = timings
        self.clock = clock
        self.background = background

    def add_routes(self, app: web.Application) -> None:
        app.router.add_post("/{version}/{phone_number_id}/calls", self._handle_calls)

    async def _handle_calls(self, request: web.Request) -> web.Response:
        async def handle(phone_number_id: str, body: Any, rec: ApiRequest) -> dict[str, Any]:
            try:
                result = await self._action(phone_number_id, body)
            except GraphError as err:
                call = self.registry.get(rec.call_id or "")
                if call is not None:
                    call.transcript.add(f"business sent {rec.action}: refused with error "
                                        f"{err.code} ({err.details or err.message})")
                raise
            if rec.action == "connect":
                rec.created_call_id = result["calls"][0]["id"]
            return result

        return await self.graph.serve(request, "calls", handle, lambda body: body.get("action"))

    async def _action(self, phone_number_id: str, body: dict[str, Any]) -> dict[str, Any]:
        if body.get("messaging_product") != "whatsapp":
            raise invalid("messaging_product must be \"whatsapp\"")
        sip = self.waba.number_settings(phone_number_id).get("calling", {}).get("sip", {})
        if sip.get("status") == "ENABLED":
            # §13: a SIP-enabled number refuses the calling Graph endpoints.
            raise GraphError(131055, "Calling Graph API endpoints are not available for a "
                             "number with SIP enabled", "Disable calling.sip to use /calls")
        action = body.get("action")
        if action == "connect":
            return await self.business.connect(phone_number_id, body)
        if action not in ("pre_accept", "accept", "reject", "terminate"):
            raise invalid(f"action must be one of connect, pre_accept, accept, reject, "
                          f"terminate; got {action!r}")
        call_id = body.get("call_id")
        if not isinstance(call_id, str) or not call_id:
            raise invalid(f"call_id is required for {action}")
        call = self.registry.get(call_id)
        if call is None or call.phone_number_id != phone_number_id:
            # ASSUMPTION: an unknown call id is an invalid parameter (code 100).
            raise invalid(f"Unknown call_id {call_id} for phone number {phone_number_id}")
        call.opt_in_request = opt_in_objects(body, action)
        if call.outbound and action != "terminate":
            # ASSUMPTION: pre_accept/accept/reject are the user-initiated actions (§2 table);
            # on a business-initiated call they are an invalid parameter.
            raise invalid(f"{action} is for calls from users; call {call_id} was placed by the "
                          "business (use terminate)")
        if action == "accept" and self.timings.accept_latency_s > 0:
            await asyncio.sleep(self.timings.accept_latency_s)  # Meta is slow to answer this one
        async with call.lock:
            if action in ("pre_accept", "accept"):
                await self._answer(call, action, body)
            elif action == "reject":
                await self._reject(call)
            else:
                await self._terminate(call)
        return {"messaging_product": "whatsapp", "success": True}

    async def _answer(self, call: SimulatedCall, action: str, body: dict[str, Any]) -> None:
        if call.is_over:
            # ASSUMPTION: actions on an ended call are refused as an invalid parameter.
            raise invalid(f"Call {call.call_id} has already ended")
        if call.state == "voicemail":
            # ASSUMPTION (docs/meta-2026-settings-events.md §2, §7): once Meta's voicemail took
            # the call, the business can no longer answer it; refused as an invalid parameter.
            raise invalid(f"Call {call.call_id} was answered by voicemail")
        sdp = session_sdp(body, action, "answer")
        opaque = body.get("biz_opaque_callback_data")
        if opaque is not None and (not isinstance(opaque, str) or len(opaque) > OPAQUE_MAX):
            raise invalid(f"biz_opaque_callback_data must be a string of at most {OPAQUE_MAX} "
                          "characters")
        if call.answer_sdp is not None and sdp != call.answer_sdp:
            raise invalid(f"The SDP in {action} differs from the SDP sent in pre_accept; "
                          "accept must carry exactly the same SDP")
        if call.state == "accepted" or (action == "pre_accept" and call.state == "pre_accepted"):
            # ASSUMPTION: repeating an action with the same SDP (a retry) changes nothing and
            # succeeds; the reference does not say what Meta answers.
            call.transcript.add(f"business repeated {action} (same SDP): no change")
            return
        if action == "pre_accept" and call.state != "ringing":
            raise invalid("pre_accept must come before accept")
        if call.answer_sdp is None:
            try:
                await call.phone.apply_answer(sdp)
            except ValueError as exc:  # SdpError included
                raise invalid(f"SDP answer rejected: {exc}") from exc
            call.answer_sdp = sdp
        if action == "pre_accept":
            call.state = "pre_accepted"
            call.transcript.add('business sent pre_accept: phone shows "Ringing"')
            call.pre_accepted.set()
            return
        if opaque is not None:
            call.biz_opaque_callback_data = opaque
        call.state = "accepted"
        call.accepted_at = self.clock.now()
        call.phone.answered = True
        call.transcript.add("business sent accept: call answered")
        call.opt_in = call.opt_in_request
        spoken = announcement(call.opt_in)
        if spoken:
            call.transcript.add(f"Meta announces to both sides: {spoken}")
        call.accepted.set()
        # §10: a connected call resets the permission request counters.
        self.waba.pair(call.phone_number_id, call.user.key).reset_requests()

    async def _reject(self, call: SimulatedCall) -> None:
        if call.is_over:
            raise invalid(f"Call {call.call_id} has already ended")
        if call.state == "accepted":
            raise invalid("reject is only for a call not yet accepted; use terminate")
        if call.state == "voicemail":
            raise invalid(f"Call {call.call_id} was answered by voicemail")
        calling = self.waba.number_settings(call.phone_number_id).get("calling", {})
        if number_settings.voicemail_on_reject(calling):
            await self.media.start_voicemail(
                call, "business sent reject (voicemail REJECT trigger)")
            return
        call.transcript.add("business sent reject: phone shows the call declined")
        call.state = "ending"
        self.background.spawn(self._end_locked(call))

    async def _terminate(self, call: SimulatedCall) -> None:
        if call.is_over:
            raise invalid(f"Call {call.call_id} has already ended")
        if call.outbound:
            call.transcript.add("hung up by the business (terminate)" if call.accepted_at
                                else "the business cancelled the call (terminate) before the "
                                "user picked up")
        elif call.state == "ringing":
            # The reference: reject is for a call not yet accepted, terminate ends a connected
            # call. Meta's answer to terminate on a ringing call is not documented: end it, say so.
            call.transcript.add("business sent terminate on a call it never pre-accepted or "
                                "accepted (reject is the action for that)")
        else:
            call.transcript.add("hung up by the business (terminate)")
        # The HTTP answer goes out first; the terminate webhook follows, as from Meta.
        call.state = "ending"
        self.background.spawn(self._end_locked(call))

    async def _end_locked(self, call: SimulatedCall) -> None:
        async with call.lock:
            if call.state != "ended":
                await call.end(by="business")
