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
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from gateway.calls.base import Call, CallDeps, caller_id, user_caller_id
from gateway.calls.ending import (
    DIAL_CAUSE,
    CallFailure,
    CallState,
    DialStatus,
    Ending,
    Happened,
    LedgerCount,
    What,
    ending_for,
)
from gateway.calls.permissions import Decision, RefusalReason, decide_call, next_allowed_at
from gateway.calls.record import CallRecord, Direction
from gateway.instance import new_channel_id
from gateway.whatsapp.events import CallEvent, StatusEvent
from gateway.whatsapp.identity import WhatsAppUser, is_bsuid, parse_target

__all__ = ["DIAL_CAUSE", "DialRequest", "DialStatus", "OutboundCall", "dial_request",
           "refuse_dial"]

log = logging.getLogger(__name__)

RING_TIMEOUT_S = 45.0
"""Meta lets a call ring about 60 s; we stop sooner so the agent is not kept waiting."""
ANSWER_SDP_TIMEOUT_S = 20.0
"""Meta's connect webhook with its answer normally follows connect within a second or two."""

# The permission rules' refusals of a call, as the ending table names them.
LEDGER_WHAT = {
    RefusalReason.NO_PERMISSION: What.NO_PERMISSION,
    RefusalReason.PERMISSION_EXPIRED: What.NO_PERMISSION,
    RefusalReason.COUNTRY_UNSUPPORTED: What.NO_PERMISSION,
    RefusalReason.LIMIT_CALLS_24H: What.LIMIT,
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
    permission: Decision | None = None
    """The permission decision when the requester already made it (the API answers the CRM
    with it before dialing); None: the call asks the ledger itself."""


class OutboundCall(Call):
    def __init__(self, request: DialRequest, deps: CallDeps):
        self.request = request
        self.gateway_id = new_channel_id(deps.config.gateway.instance_id)
        number = deps.config.number(request.phone_number_id)
        self.number = number
        bsuid = request.to.strip() if is_bsuid(request.to) else ""
        super().__init__(deps, CallRecord(
            wacid="", direction=Direction.OUTBOUND, phone_number_id=request.phone_number_id,
            from_number=(number.display_number if number and number.display_number
                         else request.phone_number_id),
            to_number="" if bsuid else request.to.strip().lstrip("+"),
            channel_id=self.gateway_id, context=request.context or "", webhook_at=time.time(),
            user_id=bsuid, owner=deps.config.gateway.instance_id))
        self._answer_sdp: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        self._picked_up = asyncio.Event()
        self._meta_refusal: int | None = None
        """Meta's error code when a Graph request of this call failed (the ledger learns it)."""
        self._meta_error_data: dict | None = None
        """That error's ``error_data`` (138012 says when the next call is allowed)."""
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

    @property
    def status(self) -> DialStatus | None:
        """What the dialplan is (or will be) told: None while the call is being placed."""
        ending = self.ending
        if ending is not None:
            return ending.dial_status
        return DialStatus.ANSWER if self.state == CallState.ANSWERED else None

    # --- events from WhatsApp -------------------------------------------------------------------

    def connect_webhook(self, event: CallEvent) -> None:
        """Meta's connect webhook for our call carries the SDP answer."""
        self._learn(event.user)
        if event.sdp and not self._answer_sdp.done():
            self._answer_sdp.set_result(event.sdp)

    def status_webhook(self, event: StatusEvent) -> None:
        self._learn(event.user)
        if event.status == "RINGING":
            if self.state == CallState.CALLING:
                self.state = CallState.RINGING
            self.ringing_at = self.ringing_at or time.time()
            self.deps.observer.call_event(self.record, "ringing")
        elif event.status == "ACCEPTED":
            self._picked_up.set()
        elif event.status == "REJECTED":
            self.end(What.REJECTED, "the user declined the call")

    def _on_agent_event(self, ev: dict[str, str]) -> None:
        """The waiting agent channel hung up: before the answer the call is cancelled; after
        it (the bridge may not even be up yet) the call is over all the same."""
        if ev.get("Event") == "Hangup":
            self.cancel_dial("the waiting channel hung up" + (
                "" if self.state == CallState.ANSWERED else " before the answer"))

    def cancel_dial(self, why: str) -> None:
        """The agent is gone before the user answered: stop ringing the user."""
        self.end(What.AGENT_HANGUP, why)

    # --- the call's life ----------------------------------------------------------------------

    async def run(self) -> None:
        if self.request.agent_uniqueid:
            self.deps.ami.add_channel_listener(self.request.agent_uniqueid, self._on_agent_event)
        await super().run()

    def _failed(self, happened: Happened) -> None:
        if happened.what == What.GRAPH_ERROR and happened.meta_code:
            self._meta_refusal = happened.meta_code
            self._meta_error_data = happened.error_data
        super()._failed(happened)

    async def _setup(self) -> None:
        await self._check_permission()
        await self._place()
        try:
            await self._until_end(self._ring(), timeout=RING_TIMEOUT_S)
        except TimeoutError:
            raise CallFailure(What.RING_TIMEOUT,
                              f"no answer within {RING_TIMEOUT_S:g} s") from None
        await self._bridge()
        self.deps.observer.call_event(self.record, "bridged",
                                      asterisk_channel=self.record.channel)
        self._spawn(self._watch_media_flow())

    async def _check_permission(self) -> None:
        ledger = self.deps.ledger
        if ledger is None:
            return
        decision = self.request.permission
        if decision is None:
            decision = await decide_call(self.deps.graph, ledger, self.record.phone_number_id,
                                         self.request.to.strip().lstrip("+"))
        if decision.allowed:
            return
        self.record.meta_error_code = decision.meta_code
        self.deps.observer.call_event(self.record, "permission_refused", reason=decision.reason)
        raise CallFailure(LEDGER_WHAT.get(decision.reason, What.NO_PERMISSION),
                          f"refused before dialing: {decision.message}")

    async def _place(self) -> None:
        deps = self.deps
        leg = self._new_webrtc_leg()
        offer = await leg.offer()
        number = deps.config.number(self.record.phone_number_id)
        recording = number.recording if number else None  # docs/meta-2026-settings-events.md §4
        wacid = await self._until_end(deps.graph.connect(
            self.record.phone_number_id, self.request.to.strip().lstrip("+"), offer,
            callback_data=self.gateway_id,
            opt_in=recording.objects("outbound") if recording else None))
        self.record.wacid = wacid
        self.state = CallState.CALLING
        # Recorded from here on: the call record is keyed by Meta's call id.
        deps.observer.call_admitted(self.record)
        deps.observer.call_event(self.record, "connect_sent",
                                 requested_by=self.request.requested_by)
        try:
            answer = await self._until_end(asyncio.shield(self._answer_sdp),
                                           timeout=ANSWER_SDP_TIMEOUT_S)
        except TimeoutError:
            raise CallFailure(What.ANSWER_TIMEOUT, f"Meta sent no answer SDP within "
                              f"{ANSWER_SDP_TIMEOUT_S:g} s of connect") from None
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
        self.state = CallState.ANSWERED
        rec.answered_at = time.time()
        await self._open_rtp_leg()
        variables = self._channel_variables()
        caller = caller_id("WhatsApp", rec.to_number) if rec.to_number \
            else user_caller_id(rec, self.number)
        if req.agent_channel:
            await self._set_agent_status(DialStatus.ANSWER)
            # Its own CDR rows would say dcontext "default" (an Originate into an application
            # has no dialplan place); the agent channel's row already records the call.
            await self._originate_channel(caller=caller,
                                          variables={**variables, "CDR_PROP(disable)": "1"},
                                          application="Bridge", data=req.agent_channel)
        else:
            await self._originate_channel(caller=caller, variables=variables,
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

    async def _after_end(self, ending: Ending) -> None:
        """Tell the waiting agent channel, and the permission ledger, how the call went."""
        deps, rec = self.deps, self.record
        status = ending.dial_status or DialStatus.FAILED
        if ending.answered and not self.channel_made and self.request.agent_channel:
            # The user answered and the call ended before its channel was made to bridge the
            # agent: the agent's channel waits in [to-whatsapp] for a bridge that will never
            # come. It ends as a bridged one would, with the call's cause.
            try:
                await deps.ami.hangup(self.request.agent_channel,
                                      ending.q850 or DIAL_CAUSE[DialStatus.ANSWER])
            except Exception as exc:
                log.warning("outbound %s: hangup of %s failed: %s", self.gateway_id,
                            self.request.agent_channel, exc)
        if not ending.answered:
            rec.q850_cause = ending.q850
            if status != DialStatus.CANCEL and self.request.agent_channel:
                await self._set_agent_status(status)
                try:
                    await deps.ami.hangup(self.request.agent_channel, DIAL_CAUSE[status])
                except Exception as exc:
                    log.warning("outbound %s: hangup of %s failed: %s", self.gateway_id,
                                self.request.agent_channel, exc)
        if deps.ledger is not None and rec.wacid and ending.ledger != LedgerCount.NONE:
            # Only what the user did counts toward Meta's unanswered streak (4 revoke the
            # permission): a call we failed to set up or cancelled says nothing about the user.
            try:
                await deps.ledger.record_call_result(
                    rec.phone_number_id, self.user,
                    answered=ending.ledger == LedgerCount.ANSWERED, now=time.time(),
                    call_id=rec.wacid)
            except Exception:
                log.exception("outbound %s: ledger update failed", rec.wacid)
        if deps.ledger is not None and self._meta_refusal:
            try:
                await deps.ledger.apply_meta_error(
                    rec.phone_number_id, self.user, self._meta_refusal,
                    retry_at=next_allowed_at(self._meta_error_data, deps.ledger.clock()))
            except Exception:
                log.exception("outbound %s: ledger update failed", rec.wacid)
        if self.request.agent_uniqueid:
            deps.ami.remove_channel_listener(self.request.agent_uniqueid)
        if not rec.wacid:  # Meta never assigned an id (refused before or at connect): the
            rec.wacid = self.gateway_id  # record is still kept, under our id
        log.info("outbound call %s to %s: %s (%s)", rec.wacid, rec.user_key, status,
                 self.ended_why)


def dial_request(ev: dict[str, str], numbers: Sequence[Any]) -> DialRequest | str:
    """The call an AMI ``UserEvent(WhatsAppDial)`` asks for, or why it cannot be placed.

    ``To:`` may be a BSUID (or given as ``Recipient:``): the call then goes to Meta as
    ``recipient`` (docs/meta-2026-identity.md §1). ``From:`` names the business number (its
    id or display number); it may be left out when only one is configured."""
    try:
        number_to, bsuid = parse_target(ev.get("Recipient") or ev.get("To"))
    except ValueError:
        number_to, bsuid = "", ""
    to = number_to or bsuid
    source = ev.get("From", "").strip().lstrip("+")
    channel, uniqueid = ev.get("Channel", ""), ev.get("Uniqueid", "")
    number = next((n for n in numbers if source and source in
                   (n.phone_number_id, (n.display_number or "").lstrip("+"))), None)
    if number is None and not source and len(numbers) == 1:
        number = numbers[0]
    if not to:
        return "To: is not a number or a BSUID"
    if number is None:
        return f"From: {source or '(missing)'} is not a configured business number"
    if not channel:
        return "no channel"
    return DialRequest(to=to, phone_number_id=number.phone_number_id,
                       agent_channel=channel, agent_uniqueid=uniqueid or None)


async def refuse_dial(ami: Any, channel: str, why: str,
                      what: What = What.UNKNOWN_NUMBER) -> None:
    """A WhatsAppDial naming no user or no business number of ours (or one no gateway can
    claim): the ending table says what the waiting channel is told (it never became a call,
    so nothing else follows)."""
    ending = ending_for(what, CallState.NEW, direction=Direction.OUTBOUND)
    assert ending.dial_status is not None and ending.q850 is not None
    try:
        await ami.setvar(channel, "WA_DIAL_STATUS", ending.dial_status.value)
        await ami.hangup(channel, ending.q850)
    except Exception as exc:
        log.warning("could not hang up %s after a bad WhatsAppDial (%s): %s", channel, why, exc)
