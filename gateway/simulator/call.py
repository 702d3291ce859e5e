"""One call as the simulated Meta sees it: its phone, its state, its story (transcript)."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Protocol

from gateway.simulator.meta import (
    BUSINESS_INITIATED,
    USER_INITIATED,
    ApiRequest,
    WebhookDelivery,
)
from gateway.simulator.phone import SimulatedPhone
from gateway.simulator.runtime import Background, Clock
from gateway.simulator.transcript import Transcript
from gateway.simulator.users import SimulatedUser


class CallEnding(Protocol):
    """Meta's side of a call's end, whoever ended it."""

    async def terminate(self, call: SimulatedCall, error_code: int | None,
                        error_detail: str | None) -> None:
        """Send the terminate webhook."""
        ...

    async def after(self, call: SimulatedCall) -> None:
        """What follows the end: voicemail and recordings, Meta's counters."""
        ...


class RequestLog(Protocol):
    def requests_for(self, call_id: str | None = None) -> list[ApiRequest]: ...


@dataclass
class CallSummary:
    """How a simulated call went, in the terms an admin asks about."""

    call_id: str
    answered: bool
    answered_after_s: float | None
    pre_accepted: bool
    media_connected: bool
    digits_pressed: str
    dtmf_received: str
    heard: list[str]
    ended_by: str | None
    status: str | None
    error_code: int | None
    duration_s: int | None
    api_errors: list[str]
    prompts: list[str] = field(default_factory=list)
    """What the phone recognised: prompt names, ``beep``, ``tone 425 Hz``."""

    def lines(self) -> list[str]:
        answered = (f"yes, after {self.answered_after_s:.1f} s" if self.answered
                    else "no" + (" (pre-accepted only)" if self.pre_accepted else ""))
        ended = f"{self.ended_by or 'still up'}"
        if self.status:
            ended += f", terminate webhook {self.status}"
        if self.error_code:
            ended += f" with error {self.error_code}"
        if self.duration_s is not None:
            ended += f", duration {self.duration_s} s"
        out = [
            f"call       {self.call_id}",
            f"answered   {answered}",
            f"media      {'connected' if self.media_connected else 'never connected'}",
            f"pressed    {self.digits_pressed or '-'}",
            f"got DTMF   {self.dtmf_received or '-'}",
            "heard      " + ("; ".join(self.heard) if self.heard else "-"),
            "prompts    " + (", ".join(self.prompts) if self.prompts else "-"),
            f"ended      {ended}",
        ]
        if self.api_errors:
            out.append("API errors " + "; ".join(self.api_errors))
        return out


class SimulatedCall:
    """One call, either direction: the user's phone, its state at Meta, and the story so far.

    User-initiated: ``ringing`` → ``pre_accepted`` → ``accepted`` → ``ended`` (pre_accept
    optional), or → ``voicemail`` → ``ended`` when Meta's voicemail takes it.
    Business-initiated: ``connecting`` (connect answered, connect webhook pending) →
    ``ringing`` (RINGING sent) → ``accepted`` (the user picked up) → ``ended``.
    Events: ``ringing``, ``accepted``, ``ended`` (and ``pre_accepted`` for user-initiated).
    """

    def __init__(self, *, call_id: str, from_wa_id: str,
                 profile_name: str | None, phone_number_id: str, display_phone_number: str,
                 cta_payload: str | None, deeplink_payload: str | None,
                 transcript: Transcript, phone: SimulatedPhone, clock: Clock,
                 background: Background, ending: CallEnding, requests: RequestLog,
                 direction: str = USER_INITIATED, user: SimulatedUser | None = None,
                 show_number: bool = True):
        self.clock = clock
        self.background = background
        self.ending = ending
        self.requests = requests
        self.call_id = call_id
        self.direction = direction
        self.from_wa_id = from_wa_id
        """The user's number, whichever side called (kept under this name for callers of the
        user-initiated API); ``wa_id`` says the same."""
        self.wa_id = from_wa_id
        self.user = user or SimulatedUser(wa_id=from_wa_id)
        """Who Meta knows on the user's side: number, BSUID, username."""
        self.show_number = show_number
        """docs/meta-2026-identity.md §1: whether this call's webhooks carry the user's number
        (decided at its start)."""
        self.profile_name = profile_name
        self.phone_number_id = phone_number_id
        self.display_phone_number = display_phone_number
        self.cta_payload = cta_payload
        self.deeplink_payload = deeplink_payload
        self.transcript = transcript
        self.phone = phone
        self.state = "ringing" if direction == USER_INITIATED else "connecting"
        self.ringing = asyncio.Event()
        if direction == USER_INITIATED:
            self.ringing.set()
        self.pre_accepted = asyncio.Event()
        self.accepted = asyncio.Event()
        self.ended = asyncio.Event()
        self.answer_sdp: str | None = None
        """The SDP answer: the business's (user-initiated) or Meta's (business-initiated)."""
        self.offer_sdp: str | None = None
        """The business's offer (business-initiated only)."""
        self.rejected = False
        """The user declined the business's call."""
        self.biz_opaque_callback_data: str | None = None
        self.started_at = clock.now()
        self.accepted_at: float | None = None
        self.ended_at: float | None = None
        self.ended_by: str | None = None
        """``user`` (hung up, or declined a business call), ``business`` (terminate/reject),
        ``ring timeout`` or ``phone`` (no media)."""
        self.end_status: str | None = None
        self.error_code: int | None = None
        self.webhooks: list[WebhookDelivery] = []
        self.opt_in_request: dict[str, dict] = {}
        """The recording/transcription objects of the business's last /calls request."""
        self.opt_in: dict[str, dict] = {}
        """The recording/transcription this call was answered with
        (docs/meta-2026-settings-events.md §4)."""
        self.voicemail_at: float | None = None
        """When Meta's voicemail took the call (state ``voicemail``)."""
        self.voicemail_media_id: str | None = None
        self.lock = asyncio.Lock()
        phone.on_give_up = self._phone_gave_up

    @property
    def outbound(self) -> bool:
        return self.direction == BUSINESS_INITIATED

    @property
    def is_over(self) -> bool:
        """Ended, or ending (the business's terminate/reject is being processed)."""
        return self.state in ("ending", "ended")

    @property
    def media_connected(self) -> asyncio.Event:
        return self.phone.connected

    async def hangup(self) -> None:
        """The user hangs up: media stops and Meta sends the terminate webhook."""
        async with self.lock:
            if self.is_over:
                return
            self.transcript.add("user hung up")
            await self.end(by="user")

    async def wait_ended(self, timeout: float | None = None) -> None:
        await asyncio.wait_for(self.ended.wait(), timeout)

    def summary(self) -> CallSummary:
        api_errors = [f"{r.action} → {r.error_code}"
                      for r in self.requests.requests_for(self.call_id)
                      if r.error_code is not None]
        duration = None
        if self.accepted_at is not None and self.ended_at is not None:
            duration = int(self.ended_at) - int(self.accepted_at)
        return CallSummary(
            call_id=self.call_id,
            answered=self.accepted_at is not None,
            answered_after_s=None if self.accepted_at is None
            else self.accepted_at - self.started_at,
            pre_accepted=self.pre_accepted.is_set(),
            media_connected=self.phone.connected.is_set(),
            digits_pressed="".join(self.phone.digits_pressed),
            dtmf_received="".join(self.phone.dtmf_received),
            heard=[str(s) for s in self.phone.heard_segments],
            ended_by=self.ended_by,
            status=self.end_status,
            error_code=self.error_code,
            duration_s=duration,
            api_errors=api_errors,
            prompts=[h.name if h.kind in ("prompt", "beep") else f"tone {h.frequency:.0f} Hz"
                     for h in self.phone.recognised if h.kind != "audio"],
        )

    # --- Meta's side -------------------------------------------------------------------------

    def _phone_gave_up(self, code: int, reason: str) -> None:
        async def end() -> None:
            async with self.lock:
                if not self.is_over:
                    await self.end(by="phone", error_code=code, error_detail=reason)
        self.background.spawn(end())

    async def accepted_or_ended_within(self, timeout_s: float) -> bool:
        """Whether the call is accepted or ends within ``timeout_s`` (Meta's ring timeout,
        the voicemail TIMEOUT trigger)."""
        waits = [asyncio.ensure_future(self.accepted.wait()),
                 asyncio.ensure_future(self.ended.wait())]
        try:
            done, _ = await asyncio.wait(waits, timeout=timeout_s,
                                         return_when=asyncio.FIRST_COMPLETED)
        finally:
            for w in waits:
                w.cancel()
        return bool(done)

    async def ring_until_timeout(self, timeout_s: float) -> None:
        """Meta gives up on a call nobody picks up (§8: about 30-60 s): unless it is accepted
        or ended within ``timeout_s``, it ends by ``ring timeout``."""
        if await self.accepted_or_ended_within(timeout_s):
            return
        async with self.lock:
            if not self.is_over and self.accepted_at is None and self.state != "voicemail":
                if self.outbound:
                    self.transcript.add(f"the user did not pick up within {timeout_s:g} s: "
                                        "the phone stops ringing")
                else:
                    self.transcript.add(f"not answered within {timeout_s:g} s: "
                                        'phone shows "Not answered"')
                await self.end(by="ring timeout")

    async def end(self, *, by: str, error_code: int | None = None,
                  error_detail: str | None = None) -> None:
        """End the call once, whoever ended it, and send Meta's terminate webhook. The caller
        holds :attr:`lock` and has checked the call is not over.

        ASSUMPTION: Meta sends the terminate webhook for every call end, including ends the
        business asked for with terminate or reject (§6 "terminate (any call end, either
        direction)"; §2 only waives the business's terminate when the *user* hung up). Status is
        COMPLETED for a call that was accepted and FAILED otherwise (missed, rejected, cancelled,
        or ended by an error), with start/end/duration only when it was accepted.
        """
        self.state = "ended"
        self.ended_at = self.clock.now()
        self.ended_by = by
        self.error_code = error_code
        self.end_status = "COMPLETED" if self.accepted_at is not None and error_code is None \
            else "FAILED"
        await self.phone.hangup()
        await self.ending.terminate(self, error_code, error_detail)
        self.ended.set()
        await self.ending.after(self)
