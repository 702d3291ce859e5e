"""The business calls a WhatsApp user, for an agent waiting in the dialplan or for a CRM.

    permission check (local ledger) → our SDP offer → Graph connect → connect webhook (answer)
      → RINGING → ACCEPTED (or the first audio) → AMI Originate UnicastRTP, bridged to the
      waiting agent channel (or into a context for a CRM call) → either side ends

The waiting channel learns the result the way ``Dial()`` users expect: a ``WA_DIAL_STATUS``
variable (ANSWER, REJECTED, NOANSWER, BUSY, NO_PERMISSION, LIMIT, FAILED, CANCEL), the Meta
error code in ``WA_DIAL_META_CODE``, and a fitting Q.850 hangup cause when the call fails.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from dataclasses import dataclass
from enum import StrEnum

from gateway.asterisk import causes
from gateway.calls.base import (
    Call,
    CallDeps,
    CallEnded,
    OriginateFailed,
    caller_id,
    user_caller_id,
)
from gateway.calls.permissions import decide_call, next_allowed_at
from gateway.calls.record import CallRecord, Direction, EndReason, HangupSide, Outcome
from gateway.media.webrtc import NoCandidates, SdpError
from gateway.whatsapp.events import CallEvent, StatusEvent
from gateway.whatsapp.graph import GraphError
from gateway.whatsapp.identity import WhatsAppUser, is_bsuid

log = logging.getLogger(__name__)

RING_TIMEOUT_S = 45.0
"""Meta lets a call ring about 60 s; we stop sooner so the agent is not kept waiting."""
ANSWER_SDP_TIMEOUT_S = 20.0
"""Meta's connect webhook with its answer normally follows connect within a second or two."""


class DialStatus(StrEnum):
    ANSWER = "ANSWER"
    REJECTED = "REJECTED"
    NOANSWER = "NOANSWER"
    BUSY = "BUSY"
    NO_PERMISSION = "NO_PERMISSION"
    LIMIT = "LIMIT"
    FAILED = "FAILED"
    CANCEL = "CANCEL"


# Q.850 cause the waiting channel gets for each result (docs/asterisk-handoff.md suggests 21/19/17).
DIAL_CAUSE = {
    DialStatus.REJECTED: causes.CALL_REJECTED,
    DialStatus.NOANSWER: causes.NO_ANSWER,
    DialStatus.BUSY: causes.USER_BUSY,
    DialStatus.NO_PERMISSION: 52,  # OUTGOING_CALL_BARRED: no permission to call this user
    DialStatus.LIMIT: 34,  # NORMAL_CIRCUIT_CONGESTION: a rate limit, try later
    DialStatus.FAILED: causes.NORMAL_TEMPORARY_FAILURE,
    DialStatus.CANCEL: causes.NORMAL_CLEARING,
}

# Meta error codes (§11) → what the dialplan is told.
META_STATUS = {
    138006: DialStatus.NO_PERMISSION,
    138013: DialStatus.NO_PERMISSION,
    138000: DialStatus.FAILED,
    138001: DialStatus.FAILED,
    138003: DialStatus.BUSY,
    138002: DialStatus.LIMIT,
    138005: DialStatus.LIMIT,
    138012: DialStatus.LIMIT,
    138014: DialStatus.LIMIT,
}

# What the dashboards count for a call that never got answered.
DIAL_REASON = {
    DialStatus.REJECTED: EndReason.DECLINED,
    DialStatus.NOANSWER: EndReason.NO_ANSWER,
    DialStatus.BUSY: EndReason.BUSY,
    DialStatus.NO_PERMISSION: EndReason.NO_PERMISSION,
    DialStatus.LIMIT: EndReason.LIMIT,
    DialStatus.CANCEL: EndReason.CANCELLED,
}

LEDGER_STATUS = {
    "no_permission": DialStatus.NO_PERMISSION,
    "permission_expired": DialStatus.NO_PERMISSION,
    "country_unsupported": DialStatus.NO_PERMISSION,
    "limit_calls_24h": DialStatus.LIMIT,
}


@dataclass(frozen=True)
class DialRequest:
    """Who to call, from which number, and where the answered call goes."""

    to: str
    """The WhatsApp user: E.164 digits (with or without '+'), or a BSUID (sent to Meta as
    ``recipient``, docs/meta-2026-identity.md §1)."""
    phone_number_id: str
    agent_channel: str | None = None
    """Bridge the answered call to this waiting channel (dialplan-initiated)."""
    agent_uniqueid: str | None = None
    context: str | None = None
    """Or send the answered call into this context/extension (CRM click-to-call)."""
    extension: str = "s"
    requested_by: str = "dialplan"


class OutboundCall(Call):
    def __init__(self, request: DialRequest, deps: CallDeps):
        self.request = request
        self.gateway_id = f"wa-{uuid.uuid4().hex}"
        number = deps.config.number(request.phone_number_id)
        self.number = number
        bsuid = request.to.strip() if is_bsuid(request.to) else ""
        super().__init__(deps, CallRecord(
            wacid="", direction=Direction.OUTBOUND, phone_number_id=request.phone_number_id,
            from_number=(number.display_number if number and number.display_number
                         else request.phone_number_id),
            to_number="" if bsuid else request.to.strip().lstrip("+"),
            channel_id=self.gateway_id, context=request.context or "", webhook_at=time.time(),
            user_id=bsuid))
        self.status: DialStatus | None = None
        self.state = "checking"
        """checking → calling → ringing → answered → ended (for GET /v1/calls/{id})."""
        self._answer_sdp: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        self._picked_up = asyncio.Event()
        self.ringing_at: float | None = None

    @property
    def user(self) -> WhatsAppUser:
        """Who is called, with what Meta's webhooks told us since (number and BSUID)."""
        return WhatsAppUser(wa_id=self.record.to_number, user_id=self.record.user_id,
                            username=self.record.username)

    def _learn(self, user: WhatsAppUser) -> None:
        """Fill in the number or BSUID the webhooks give (the dialled number is kept)."""
        rec = self.record
        rec.to_number = rec.to_number or user.wa_id
        rec.user_id = rec.user_id or user.user_id
        rec.username = rec.username or user.username

    # --- events from WhatsApp -------------------------------------------------------------------

    def connect_webhook(self, event: CallEvent) -> None:
        """Meta's connect webhook for our call carries the SDP answer."""
        self._learn(event.user)
        if event.sdp and not self._answer_sdp.done():
            self._answer_sdp.set_result(event.sdp)

    def status_webhook(self, event: StatusEvent) -> None:
        self._learn(event.user)
        if event.status == "RINGING":
            self.state = "ringing" if self.state == "calling" else self.state
            self.ringing_at = self.ringing_at or time.time()
            self.deps.observer.call_event(self.record, "ringing")
        elif event.status == "ACCEPTED":
            self._picked_up.set()
        elif event.status == "REJECTED":
            self.status = DialStatus.REJECTED
            self._finish(HangupSide.WHATSAPP, "the user declined the call")

    def whatsapp_terminated(self, event: CallEvent) -> None:
        if self.status is None and not self.answered:
            codes = [e.code for e in event.errors if e.code]
            self.status = next((META_STATUS[c] for c in codes if c in META_STATUS),
                               DialStatus.NOANSWER if event.status != "FAILED" or not codes
                               else DialStatus.FAILED)
        super().whatsapp_terminated(event)

    def _on_agent_event(self, ev: dict[str, str]) -> None:
        if ev.get("Event") == "Hangup" and not self.answered:
            self.cancel_dial("the waiting channel hung up before the answer")

    def hangup(self, why: str = "hung up through the API") -> None:
        if not self.answered:  # before the user answered: a cancelled call, not a failed one
            self.status = DialStatus.CANCEL
        super().hangup(why)

    def cancel_dial(self, why: str) -> None:
        """The agent is gone before the user answered: stop ringing the user."""
        self.status = DialStatus.CANCEL
        self._finish(HangupSide.ASTERISK, why)

    # --- the call's life ----------------------------------------------------------------------

    async def run(self) -> None:
        obs = self.deps.observer
        outcome: Outcome | None = None
        if self.request.agent_uniqueid:
            self.deps.ami.add_channel_listener(self.request.agent_uniqueid, self._on_agent_event)
        try:
            if not await self._permitted():
                outcome = Outcome.REJECTED
                return
            await self._place()
            await self._until_end(self._ring(), timeout=RING_TIMEOUT_S)
            await self._bridge()
            obs.call_event(self.record, "bridged", asterisk_channel=self.record.channel)
            self._spawn(self._watch_media_flow())
            await self._end
        except CallEnded:
            pass
        except TimeoutError:
            self.status = self.status or DialStatus.NOANSWER
            self._finish(HangupSide.GATEWAY, "no answer")
            outcome = Outcome.NO_ANSWER
        except GraphError as exc:
            self.record.meta_error_code = exc.code
            self.record.meta_error_text = exc.meta_message
            self.status = META_STATUS.get(exc.code or 0, DialStatus.FAILED)
            if self.deps.ledger is not None and exc.code:
                await self.deps.ledger.apply_meta_error(
                    self.record.phone_number_id, self.user, exc.code,
                    retry_at=next_allowed_at(exc.error_data, self.deps.ledger.clock()))
            self._finish(HangupSide.WHATSAPP, str(exc), EndReason.META_API_ERROR)
            outcome = Outcome.REJECTED if self.status != DialStatus.FAILED else Outcome.FAILED
        except (SdpError, OriginateFailed, NoCandidates) as exc:
            self.status = DialStatus.FAILED
            self._finish(HangupSide.GATEWAY, str(exc), EndReason.BAD_SDP
                         if isinstance(exc, SdpError) else EndReason.ASTERISK_REFUSED
                         if isinstance(exc, OriginateFailed) else EndReason.CAPACITY)
            outcome = Outcome.FAILED
        except Exception as exc:
            log.exception("outbound call %s: unexpected error", self.gateway_id)
            self.status = DialStatus.FAILED
            self._finish(HangupSide.GATEWAY, f"gateway error: {exc!r}", EndReason.GATEWAY_ERROR)
            outcome = Outcome.FAILED
        finally:
            await self._teardown(outcome)

    async def _permitted(self) -> bool:
        ledger = self.deps.ledger
        if ledger is None:
            return True
        decision = await decide_call(self.deps.graph, ledger, self.record.phone_number_id,
                                     self.request.to.strip().lstrip("+"))
        if decision.allowed:
            return True
        self.status = LEDGER_STATUS.get(decision.reason, DialStatus.NO_PERMISSION)
        self.record.meta_error_code = decision.meta_code
        self.deps.observer.call_event(self.record, "permission_refused", reason=decision.reason)
        self._finish(HangupSide.GATEWAY, f"refused before dialing: {decision.message}")
        return False

    async def _place(self) -> None:
        deps = self.deps
        leg = self._new_webrtc_leg()
        offer = await leg.offer()
        self.state = "calling"
        number = deps.config.number(self.record.phone_number_id)
        recording = number.recording if number else None  # docs/meta-2026-settings-events.md §4
        wacid = await self._until_end(deps.graph.connect(
            self.record.phone_number_id, self.request.to.strip().lstrip("+"), offer,
            callback_data=self.gateway_id,
            opt_in=recording.objects("outbound") if recording else None))
        self.record.wacid = wacid
        # Recorded from here on: the call record is keyed by Meta's call id.
        deps.observer.call_admitted(self.record)
        deps.observer.call_event(self.record, "connect_sent",
                                 requested_by=self.request.requested_by)
        answer = await self._until_end(asyncio.shield(self._answer_sdp),
                                       timeout=ANSWER_SDP_TIMEOUT_S)
        await leg.apply_answer(answer)

    async def _ring(self) -> None:
        """Until the user picks up: ACCEPTED, or the first audio, whichever comes first (§6)."""
        assert self.leg is not None
        first_audio = asyncio.ensure_future(self.leg.first_audio.wait())
        accepted = asyncio.ensure_future(self._picked_up.wait())
        try:
            await asyncio.wait({first_audio, accepted}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            first_audio.cancel()
            accepted.cancel()

    async def _bridge(self) -> None:
        rec, req = self.record, self.request
        self.answered = True
        self.status = DialStatus.ANSWER
        self.state = "answered"
        rec.answered_at = time.time()
        await self._open_rtp_leg()
        variables = self._channel_variables()
        caller = caller_id("WhatsApp", rec.to_number) if rec.to_number \
            else user_caller_id(rec, self.number)
        if req.agent_channel:
            await self._set_agent_status(DialStatus.ANSWER)
            # Its own CDR rows would say dcontext "default" (an Originate into an application
            # has no dialplan place); the agent channel's row already records the call.
            await self._originate(caller=caller, variables={**variables, "CDR_PROP(disable)": "1"},
                                  application="Bridge", data=req.agent_channel)
        else:
            await self._originate(caller=caller, variables=variables,
                                  context=req.context, exten=req.extension)
        self.deps.observer.call_setup(rec, "dialplan", self._elapsed())

    async def _set_agent_status(self, status: DialStatus) -> None:
        channel = self.request.agent_channel
        if not channel:
            return
        try:
            await self.deps.ami.setvar(channel, "WA_DIAL_STATUS", status.value)
            await self.deps.ami.setvar(channel, "WA_DIAL_META_CODE",
                                       str(self.record.meta_error_code or ""))
            if self.record.wacid:
                await self.deps.ami.setvar(channel, "WA_CALL_ID", self.record.wacid)
                # The agent's CDR row is the call's row (README "CDR"): tag it as ours.
                for cdr_field in ("CDR(userfield)", "CDR(wa_call_id)"):
                    await self.deps.ami.setvar(channel, cdr_field, self.record.wacid)
            if self.accountcode:
                await self.deps.ami.setvar(channel, "CHANNEL(accountcode)", self.accountcode)
        except Exception as exc:
            log.warning("outbound %s: cannot set WA_DIAL_STATUS on %s: %s", self.gateway_id,
                        channel, exc)

    async def _teardown(self, outcome: Outcome | None) -> None:
        deps, rec = self.deps, self.record
        if not self._end.done():
            self._finish(HangupSide.GATEWAY, "ended")
        side, why, reason = self._end.result()
        rec.hangup_side, rec.reason = side, why
        rec.end_reason = DIAL_REASON.get(self.status, reason) if not self.answered else reason
        rec.ended_at = time.time()
        self.state = "ended"
        if rec.wacid and side != HangupSide.WHATSAPP:
            try:
                await deps.graph.terminate(rec.phone_number_id, rec.wacid)
            except GraphError as exc:
                log.warning("outbound %s: terminate failed: %s", rec.wacid, exc)
        if self.channel_up and side != HangupSide.ASTERISK:
            rec.q850_cause = causes.NORMAL_CLEARING
            await self._hangup_channel(rec.q850_cause)
        elif side == HangupSide.ASTERISK:
            rec.q850_cause = self.asterisk_cause
        if not self.answered:
            status = self.status or DialStatus.FAILED
            rec.q850_cause = DIAL_CAUSE[status]
            if status != DialStatus.CANCEL and self.request.agent_channel:
                await self._set_agent_status(status)
                try:
                    await deps.ami.hangup(self.request.agent_channel, DIAL_CAUSE[status])
                except Exception as exc:
                    log.warning("outbound %s: hangup of %s failed: %s", self.gateway_id,
                                self.request.agent_channel, exc)
        if outcome is None:
            outcome = {DialStatus.ANSWER: Outcome.ANSWERED, DialStatus.REJECTED: Outcome.REJECTED,
                       DialStatus.NOANSWER: Outcome.NO_ANSWER, DialStatus.CANCEL:
                       Outcome.ABANDONED}.get(self.status or DialStatus.FAILED, Outcome.FAILED)
        rec.outcome = outcome
        # Only what the user did counts toward Meta's unanswered streak (4 revoke permission):
        # a call we failed to set up or cancelled ourselves says nothing about the user.
        if deps.ledger is not None and rec.wacid and self.status in (
                DialStatus.ANSWER, DialStatus.REJECTED, DialStatus.NOANSWER):
            try:
                await deps.ledger.record_call_result(rec.phone_number_id, self.user,
                                                     answered=self.answered,
                                                     call_id=rec.wacid)
            except Exception:
                log.exception("outbound %s: ledger update failed", rec.wacid)
        if self.request.agent_uniqueid:
            deps.ami.remove_channel_listener(self.request.agent_uniqueid)
        await self._release()
        if not rec.wacid:  # Meta never assigned an id (refused before or at connect): the
            rec.wacid = self.gateway_id  # record is still kept, under our id
        deps.observer.call_ended(rec)
        log.info("outbound call %s to %s: %s (%s)", rec.wacid, rec.user_key, self.status, why)
