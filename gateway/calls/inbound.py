"""A WhatsApp user calls the business: the call walks the number's dialplan like a PSTN call.

Set-up follows docs/meta-calling.md §8 and docs/asterisk-handoff.md:

    connect webhook → WebRTC answer → pre_accept (caller sees "Ringing", ICE/DTLS start)
      → ICE/DTLS connected → AMI Originate UnicastRTP into the number's context (the
      dialplan starts at once) → Getvar UNICASTRTP_LOCAL_PORT → accept (same SDP)
      → Asterisk's audio released

Until ``accept`` returns, Asterisk's audio is held back (Meta: audio before accept may be lost
or count as answered); the first prompt is therefore buffered, not dropped (see OutgoingAudio).
"""

from __future__ import annotations

import logging
import time
import uuid

from gateway.asterisk import causes
from gateway.calls.base import Call, CallDeps, CallEnded, OriginateFailed, user_caller_id
from gateway.calls.record import CallRecord, Direction, EndReason, HangupSide, Outcome
from gateway.config import NumberSettings
from gateway.media.webrtc import NoCandidates, SdpError
from gateway.whatsapp.events import CallEvent
from gateway.whatsapp.graph import GraphError

log = logging.getLogger(__name__)


class InboundCall(Call):
    def __init__(self, event: CallEvent, number: NumberSettings, deps: CallDeps,
                 *, context: str | None = None, extension: str | None = None):
        self.event = event
        self.number = number
        self.context = context or number.context
        self.extension = extension or number.extension
        super().__init__(deps, CallRecord(
            wacid=event.call_id, direction=Direction.INBOUND,
            phone_number_id=event.phone_number_id, from_number=event.from_number,
            to_number=event.to_number or event.display_phone_number,
            profile_name=event.profile_name, channel_id=f"wa-{uuid.uuid4().hex}",
            context=self.context, webhook_at=time.time(), user_id=event.user_id,
            username=event.username))
        self.last_event_ts = event.timestamp
        self.pre_accepted = False

    async def run(self) -> None:
        """Set up, bridge, wait for the end, clean up. Never raises."""
        obs = self.deps.observer
        outcome: Outcome | None = None
        try:
            obs.call_admitted(self.record)
            await self._setup()
            obs.call_event(self.record, "bridged", asterisk_channel=self.record.channel)
            await self._end
        except CallEnded:
            pass
        except SdpError as exc:
            self._finish(HangupSide.GATEWAY, f"unusable SDP offer: {exc}", EndReason.BAD_SDP)
            outcome = Outcome.REJECTED
        except NoCandidates as exc:
            self._finish(HangupSide.GATEWAY, f"capacity: {exc}", EndReason.CAPACITY)
            outcome = Outcome.REJECTED
        except OriginateFailed as exc:
            self._finish(HangupSide.ASTERISK, str(exc), EndReason.ASTERISK_REFUSED)
            outcome = Outcome.FAILED
        except GraphError as exc:
            self.record.meta_error_code = exc.code
            self.record.meta_error_text = exc.meta_message
            self._finish(HangupSide.GATEWAY, str(exc), EndReason.META_API_ERROR)
            outcome = Outcome.FAILED
        except Exception as exc:  # a fault in one call must never reach the others
            log.exception("call %s: unexpected error", self.wacid)
            self._finish(HangupSide.GATEWAY, f"gateway error: {exc!r}", EndReason.GATEWAY_ERROR)
            outcome = Outcome.FAILED
        finally:
            await self._teardown(outcome)

    async def _setup(self) -> None:
        deps, ev, obs = self.deps, self.event, self.deps.observer
        leg = self._new_webrtc_leg()
        leg.outgoing.gate_open = False  # Meta: no call audio before accept returns 200
        answer = await leg.answer(ev.sdp or "")

        await self._until_end(deps.graph.pre_accept(ev.phone_number_id, ev.call_id, answer))
        self.pre_accepted = True
        obs.call_setup(self.record, "pre_accept", self._elapsed())

        # The caller hears ringing while ICE/DTLS come up; only then does the dialplan start,
        # so a call whose media can never flow creates no channel, and the first prompt is
        # not played into a leg that cannot carry it yet (docs/meta-calling.md §9).
        limit = deps.config.media.connect_timeout_s
        try:
            await self._until_end(leg.connected.wait(), timeout=max(0.1, limit - self._elapsed()))
        except TimeoutError:
            self._finish(HangupSide.GATEWAY,
                         f"media never connected (ICE/DTLS not up after {limit:g} s)",
                         EndReason.MEDIA_TIMEOUT)
            raise CallEnded from None
        obs.call_setup(self.record, "media", self._elapsed())
        self._spawn(self._watch_media_flow())

        await self._open_rtp_leg()
        await self._originate(
            caller=user_caller_id(self.record, self.number),
            variables=self._channel_variables(
                WA_CTA_PAYLOAD=ev.cta_payload or "",
                WA_DEEPLINK_PAYLOAD=ev.deeplink_payload or "",
                WA_PROFILE_NAME=ev.profile_name),
            context=self.context, exten=self.extension)
        obs.call_setup(self.record, "dialplan", self._elapsed())
        obs.call_event(self.record, "dialplan_started", asterisk_channel=self.record.channel,
                       context=self.context)

        recording = self.number.recording  # docs/meta-2026-settings-events.md §4
        await self._until_end(deps.graph.accept(
            ev.phone_number_id, ev.call_id, answer, callback_data=self.channel_id,
            opt_in=recording.objects("inbound") if recording else None))
        self.answered = True
        self.record.answered_at = time.time()
        leg.outgoing.gate_open = True
        obs.call_event(self.record, "accepted")
        if deps.ledger is not None:  # a connected call resets the permission-request counters
            await deps.ledger.record_user_call(ev.phone_number_id, ev.user)

    async def _teardown(self, outcome: Outcome | None) -> None:
        deps, rec, ev = self.deps, self.record, self.event
        side, why, reason = self._end.result()
        rec.hangup_side = side
        rec.reason = why
        rec.end_reason = reason
        rec.ended_at = time.time()
        if side != HangupSide.WHATSAPP:
            # reject is for a call not yet accepted, terminate for one that was (§2).
            try:
                if self.answered:
                    await deps.graph.terminate(ev.phone_number_id, ev.call_id)
                else:
                    await deps.graph.reject(ev.phone_number_id, ev.call_id)
            except GraphError as exc:
                log.warning("call %s: could not end the WhatsApp side: %s", ev.call_id, exc)
        if side == HangupSide.ASTERISK:
            rec.q850_cause = self.asterisk_cause
        elif self.channel_up:
            rec.q850_cause = causes.NORMAL_CLEARING if side == HangupSide.WHATSAPP \
                else causes.NORMAL_TEMPORARY_FAILURE
            await self._hangup_channel(rec.q850_cause)

        if outcome is None:
            if self.answered:
                outcome = Outcome.ANSWERED if side != HangupSide.GATEWAY else Outcome.FAILED
            else:
                outcome = Outcome.ABANDONED if side == HangupSide.WHATSAPP else Outcome.FAILED
        if rec.meta_error_code and side == HangupSide.WHATSAPP:
            outcome = Outcome.FAILED  # e.g. 138021: the client got no media
        rec.outcome = outcome
        await self._release()
        deps.observer.call_ended(rec)
