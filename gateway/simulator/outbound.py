"""Business-initiated calls at the simulated Meta: ``POST /calls`` action ``connect``, the
user's phone answering like Meta (connect webhook with the answer, RINGING / ACCEPTED /
REJECTED statuses, terminate), and the user's behaviour (answer, reject, ignore, busy)."""

from __future__ import annotations

import asyncio
import re
import time
from typing import Any

from gateway.simulator.call import (
    SimulatedCall,
)
from gateway.simulator.meta import (
    BUSINESS_INITIATED,
    OPAQUE_MAX,
    GraphError,
    business_country_block,
    invalid,
    new_wacid,
    session_sdp,
)
from gateway.simulator.phone import SimulatedPhone
from gateway.simulator.transcript import Transcript
from gateway.simulator.users import (
    UNANSWERED_TO_REVOKE,
    SimulatedUser,
    call_limits,
    exhausted,
)


class BusinessCalling:
    """Mixin of :class:`CloudApiSimulator`: the business calls a user."""

    # --- business-initiated calls: POST /calls action connect ---------------------------------

    async def _connect(self, phone_number_id: str, body: dict[str, Any]) -> dict[str, Any]:
        """§2/§8/§9: check the request and the user, answer with the wacid; Meta's connect
        webhook (with the phone's answer), RINGING and the user's reaction follow."""
        to = body.get("to")
        if not isinstance(to, str) or not re.fullmatch(r"\+?\d{6,15}", to.strip()):
            raise invalid("to must be the user's phone number (digits, optionally with +)")
        wa_id = to.strip().lstrip("+")
        sdp = session_sdp(body, "connect", "offer")
        opaque = body.get("biz_opaque_callback_data")
        if opaque is not None and (not isinstance(opaque, str) or len(opaque) > OPAQUE_MAX):
            raise invalid(f"biz_opaque_callback_data must be a string of at most {OPAQUE_MAX} "
                          "characters")
        calling = self.number_settings(phone_number_id).get("calling", {})
        if calling.get("status") != "ENABLED":
            raise GraphError(138000, "Calling is not enabled for this phone number",
                             "Enable calling in the number's settings first", status=401)
        display = self.numbers[phone_number_id]
        country = business_country_block(display)
        if country:
            raise GraphError(138013, "Business-initiated calling is not available in this "
                             "country", f"Business numbers from {country} cannot call users")
        now = time.time()
        for r in (calling.get("restrictions") or {}).get("restrictions_list") or []:
            if r.get("type") == "RESTRICTED_BUSINESS_INITIATED_CALLING" and \
                    float(r.get("expiration") or 0) > now:
                raise GraphError(138014, "Calling is temporarily disabled for this phone number",
                                 str(r.get("reason") or "Business-initiated calling restricted"))
        user = self.user(wa_id)
        if user.app_too_old:
            # ASSUMPTION: a client too old for calling is "unsupported client" (138001).
            raise GraphError(138001, "Receiver cannot be called",
                             "The user's WhatsApp client does not support business calls")
        if user.permission_status(now) == "no_permission":
            raise GraphError(138006, "No approved call permission from the recipient",
                             "The user has not granted this business permission to call.",
                             status=401)
        counters = self.pair(phone_number_id, wa_id)
        full = exhausted(call_limits(counters, now))
        if full is not None:
            raise GraphError(138012, "Business-initiated call limit reached",
                             f"{full['max_allowed']} connected calls per 24 h reached; the next "
                             f"call is allowed at {full['limit_expiration_time']} (unix time)")
        ongoing = any(c.wa_id == wa_id and c.phone_number_id == phone_number_id
                      and not c.is_over for c in self.calls.values())
        if user.on_call == "busy" or ongoing:
            raise GraphError(138003, "A call with this user is already in progress",
                             "Wait for the current call with this user to end")
        transcript = Transcript()
        phone = SimulatedPhone(transcript=transcript, name=f"phone {wa_id}",
                               timers=self.phone_timers, idle_audio=user.idle_audio,
                               hearing_window_s=self.hearing_window_s)
        try:
            answer = await phone.answer_offer(sdp)
        except ValueError as exc:  # SdpError included
            await phone.hangup()
            raise invalid(f"SDP offer rejected: {exc}") from exc
        call = SimulatedCall(self, call_id=new_wacid(wa_id, user_initiated=False),
                             from_wa_id=wa_id, profile_name=user.name,
                             phone_number_id=phone_number_id, display_phone_number=display,
                             cta_payload=None, deeplink_payload=None, transcript=transcript,
                             phone=phone, direction=BUSINESS_INITIATED)
        call.offer_sdp, call.answer_sdp = sdp, answer
        call.biz_opaque_callback_data = opaque
        if sdp.count("a=fingerprint:") > 1:
            transcript.add("note: the offer lists several fingerprints; §9 asks for one sha-256")
        transcript.add(f"business calls {wa_id} (connect): accepted as {call.call_id}")
        self.calls[call.call_id] = call
        user.in_service_window = True  # §10: a call opens the customer-service window
        for listener in self.call_listeners:
            listener(call)
        async with self._outbound_added:
            self._outbound_added.notify_all()
        self._spawn(self._run_outbound(call, user))
        return {"messaging_product": "whatsapp", "calls": [{"id": call.call_id}]}

    async def _run_outbound(self, call: SimulatedCall, user: SimulatedUser) -> None:
        """Meta's side of a business-initiated call, after connect returned."""
        await asyncio.sleep(self.connect_webhook_delay_s)
        async with call.lock:
            if call.is_over:
                return
            await self._send_call_webhook(call, self.connect_payload(call))
        await asyncio.sleep(self.ringing_delay_s)
        async with call.lock:
            if call.is_over:
                return
            call.state = "ringing"
            call.ringing.set()
            call.transcript.add(f"the user's phone rings ({user.on_call}"
                                + (f" after {user.answer_after_s:g} s)"
                                   if user.on_call in ("answer", "reject") else ")"))
            await self._send_call_webhook(call, self.status_payload(call, "RINGING"))
        self._spawn(self._ring_timeout(call))
        if user.on_call not in ("answer", "reject"):
            return  # ignore: rings until the ring timeout
        try:
            await asyncio.wait_for(call.ended.wait(), user.answer_after_s)
            return
        except TimeoutError:
            pass
        async with call.lock:
            if call.is_over:
                return
            if user.on_call == "reject":
                call.rejected = True
                call.transcript.add("the user declined the call")
                await self._send_call_webhook(call, self.status_payload(call, "REJECTED"))
                # ASSUMPTION: the terminate after REJECTED is FAILED without errors[].
                await call._end(by="user")
                return
            call.state = "accepted"
            call.accepted_at = time.time()
            call.phone.pick_up()
            call.transcript.add("the user picked up: the phone sends audio")
            call.accepted.set()
            counters = self.pair(call.phone_number_id, call.wa_id)
            counters.calls.append(call.accepted_at)
            counters.unanswered_streak = 0
            counters.reset_requests()  # §10: any connected call resets the request counters
            # §6: ACCEPTED typically arrives after media already flows.
            await self._send_call_webhook(call, self.status_payload(call, "ACCEPTED"))
        if user.script:
            self._spawn(self._run_user_script(call, user.script))

    async def _run_user_script(self, call: SimulatedCall, script: str) -> None:
        from gateway.simulator.control import ScriptError, parse_script, run_script
        try:
            steps = parse_script(script)
        except ScriptError as exc:
            call.transcript.add(f"user script not run: {exc}")
            return
        result = await run_script(call, steps)
        call.transcript.add("user script " + ("passed" if result.ok
                                              else f"failed: {result.reason}"))

    async def _outbound_ended(self, call: SimulatedCall) -> None:
        """§10: declined or unanswered business calls in a row; 4 revoke the permission, with
        an automatic reject reply
        (tests/fixtures/payloads/webhook-call-permission-reply-auto-revoked.json).

        ASSUMPTION: only what the user did counts (declined, or not picked up before the ring
        timeout); a call the business cancelled or that failed on media does not."""
        if call.accepted_at is not None or call.ended_by not in ("user", "ring timeout"):
            return
        counters = self.pair(call.phone_number_id, call.wa_id)
        counters.unanswered_streak += 1
        call.transcript.add(f"unanswered business calls in a row: {counters.unanswered_streak}")
        if counters.unanswered_streak < UNANSWERED_TO_REVOKE:
            return
        counters.unanswered_streak = 0
        user = self.user(call.wa_id)
        now = time.time()
        user.set_permission("no_permission", now)
        call.transcript.add(f"{UNANSWERED_TO_REVOKE} unanswered calls in a row: call permission "
                            "revoked automatically")
        await self._send_permission_reply(call.phone_number_id, user, response="reject",
                                          source="automatic", context_id=None,
                                          permanent=False, now=now, transcript=call.transcript)
