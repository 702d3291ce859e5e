"""Business-initiated calls at the simulated Meta: ``POST /calls`` action ``connect``, the
user's phone answering like Meta (connect webhook with the answer, RINGING / ACCEPTED /
REJECTED statuses, terminate), and the user's behaviour (answer, reject, ignore, busy)."""

from __future__ import annotations

import asyncio
from typing import Any

from gateway.simulator.call import SimulatedCall
from gateway.simulator.calls import CallRegistry, Phones
from gateway.simulator.media import announcement, opt_in_objects
from gateway.simulator.meta import (
    BUSINESS_INITIATED,
    OPAQUE_MAX,
    GraphError,
    business_country_block,
    invalid,
    new_wacid,
    session_sdp,
)
from gateway.simulator.payloads import Payloads
from gateway.simulator.runtime import Background, Clock, MetaTimings
from gateway.simulator.script import ScriptError, parse_script, run_script
from gateway.simulator.settings import business_calling_paused
from gateway.simulator.transcript import Transcript
from gateway.simulator.users import SimulatedUser, call_limits, exhausted
from gateway.simulator.waba import Waba
from gateway.simulator.webhooks import WebhookSender


class BusinessCalls:
    """The business calls a user: Meta's answer to ``connect`` and the user's side after."""

    def __init__(self, *, waba: Waba, registry: CallRegistry, phones: Phones,
                 payloads: Payloads, webhooks: WebhookSender, timings: MetaTimings,
                 clock: Clock, background: Background):
        self.waba = waba
        self.registry = registry
        self.phones = phones
        self.payloads = payloads
        self.webhooks = webhooks
        self.timings = timings
        self.clock = clock
        self.background = background

    async def connect(self, phone_number_id: str, body: dict[str, Any]) -> dict[str, Any]:
        """§2/§8/§9: check the request and the user, answer with the wacid; Meta's connect
        webhook (with the phone's answer), RINGING and the user's reaction follow."""
        user, by_number = self.waba.recipient(body)
        wa_id = user.key
        sdp = session_sdp(body, "connect", "offer")
        opt_in = opt_in_objects(body, "connect")
        opaque = body.get("biz_opaque_callback_data")
        if opaque is not None and (not isinstance(opaque, str) or len(opaque) > OPAQUE_MAX):
            raise invalid(f"biz_opaque_callback_data must be a string of at most {OPAQUE_MAX} "
                          "characters")
        calling = self.waba.number_settings(phone_number_id).get("calling", {})
        if calling.get("status") != "ENABLED":
            raise GraphError(138000, "Calling is not enabled for this phone number",
                             "Enable calling in the number's settings first", status=401)
        display = self.waba.numbers[phone_number_id]
        country = business_country_block(display)
        if country:
            raise GraphError(138013, "Business-initiated calling is not available in this "
                             "country", f"Business numbers from {country} cannot call users")
        now = self.clock.now()
        paused = business_calling_paused(self.waba.number_settings(phone_number_id), now)
        if paused is not None:
            raise GraphError(138014, "Calling is temporarily disabled for this phone number",
                             str(paused.get("reason") or "Business-initiated calling "
                                                          "restricted"))
        if user.app_too_old:
            # ASSUMPTION: a client too old for calling is "unsupported client" (138001).
            raise GraphError(138001, "Receiver cannot be called",
                             "The user's WhatsApp client does not support business calls")
        if user.permission_status(now) == "no_permission":
            raise GraphError(138006, "No approved call permission from the recipient",
                             "The user has not granted this business permission to call.",
                             status=401)
        counters = self.waba.pair(phone_number_id, wa_id)
        full = exhausted(call_limits(counters, now))
        if full is not None:
            raise GraphError(138012, "Business-initiated call limit reached",
                             f"{full['max_allowed']} connected calls per 24 h reached; the next "
                             f"call is allowed at {full['limit_expiration_time']} (unix time)")
        if user.on_call == "busy" or self.registry.ongoing(phone_number_id, wa_id):
            raise GraphError(138003, "A call with this user is already in progress",
                             "Wait for the current call with this user to end")
        if by_number:
            # docs/meta-2026-identity.md §1: the business called it
            self.waba.number_contact(phone_number_id, user, now)
        transcript = Transcript()
        phone = self.phones.new(transcript, f"phone {wa_id}", user.idle_audio)
        try:
            answer = await phone.answer_offer(sdp)
        except ValueError as exc:  # SdpError included
            await phone.hangup()
            raise invalid(f"SDP offer rejected: {exc}") from exc
        call = self.registry.new_call(
            call_id=new_wacid(wa_id, user_initiated=False), from_wa_id=wa_id,
            profile_name=user.name, phone_number_id=phone_number_id,
            display_phone_number=display, cta_payload=None, deeplink_payload=None,
            transcript=transcript, phone=phone, direction=BUSINESS_INITIATED, user=user,
            show_number=self.waba.shows_number(phone_number_id, user, now))
        call.offer_sdp, call.answer_sdp = sdp, answer
        call.biz_opaque_callback_data = opaque
        call.opt_in = opt_in
        spoken = announcement(call.opt_in)
        if spoken:
            transcript.add(f"Meta will announce to both sides once answered: {spoken}")
        if sdp.count("a=fingerprint:") > 1:
            transcript.add("note: the offer lists several fingerprints; §9 asks for one sha-256")
        transcript.add(f"business calls {wa_id if by_number else user.user_id} (connect): "
                       f"accepted as {call.call_id}")
        user.in_service_window = True  # §10: a call opens the customer-service window
        await self.registry.add(call)
        self.background.spawn(self._run_outbound(call, user))
        return {"messaging_product": "whatsapp", "calls": [{"id": call.call_id}]}

    async def _run_outbound(self, call: SimulatedCall, user: SimulatedUser) -> None:
        """Meta's side of a business-initiated call, after connect returned."""
        await asyncio.sleep(self.timings.connect_webhook_delay_s)
        async with call.lock:
            if call.is_over:
                return
            await self.webhooks.send_call_webhook(call, self.payloads.connect(call))
        await asyncio.sleep(self.timings.ringing_delay_s)
        async with call.lock:
            if call.is_over:
                return
            call.state = "ringing"
            call.ringing.set()
            call.transcript.add(f"the user's phone rings ({user.on_call}"
                                + (f" after {user.answer_after_s:g} s)"
                                   if user.on_call in ("answer", "reject") else ")"))
            await self.webhooks.send_call_webhook(call, self.payloads.status(call, "RINGING"))
        self.background.spawn(call.ring_until_timeout(self.timings.ring_timeout_s))
        if user.on_call not in ("answer", "reject"):
            return  # ignore: rings until the ring timeout
        try:
            await asyncio.wait_for(call.ended.wait(), user.answer_after_s)
            return
        except TimeoutError:
            pass
        if user.on_call == "reject":
            await self.decline(call)
        else:
            await self.pick_up(call)

    async def decline(self, call: SimulatedCall) -> None:
        """The user declines the ringing call: REJECTED, then the terminate webhook."""
        async with call.lock:
            if call.is_over:
                return
            call.rejected = True
            call.transcript.add("the user declined the call")
            await self.webhooks.send_call_webhook(call, self.payloads.status(call, "REJECTED"))
            # ASSUMPTION: the terminate after REJECTED is FAILED without errors[].
            await call.end(by="user")

    async def pick_up(self, call: SimulatedCall) -> None:
        """The user picks up the ringing call: the phone sends audio, Meta counts a connected
        call and sends ACCEPTED; the user's script (if any) starts. A user configured to
        ``ignore`` calls picks up only when told so by this method."""
        async with call.lock:
            if call.state != "ringing":
                return  # not rung yet, already answered, or over
            call.state = "accepted"
            call.accepted_at = self.clock.now()
            call.phone.pick_up()
            call.transcript.add("the user picked up: the phone sends audio")
            call.accepted.set()
            counters = self.waba.pair(call.phone_number_id, call.user.key)
            counters.calls.append(call.accepted_at)
            counters.unanswered_streak = 0
            counters.reset_requests()  # §10: any connected call resets the request counters
            # §6: ACCEPTED typically arrives after media already flows.
            await self.webhooks.send_call_webhook(call, self.payloads.status(call, "ACCEPTED"))
        if call.user.script:
            self.background.spawn(self._run_user_script(call, call.user.script))

    async def _run_user_script(self, call: SimulatedCall, script: str) -> None:
        try:
            steps = parse_script(script)
        except ScriptError as exc:
            call.transcript.add(f"user script not run: {exc}")
            return
        result = await run_script(call, steps)
        call.transcript.add("user script " + ("passed" if result.ok
                                              else f"failed: {result.reason}"))
