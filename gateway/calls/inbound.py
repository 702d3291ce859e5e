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

from gateway.calls.base import Call, CallDeps, user_caller_id
from gateway.calls.ending import CallFailure, CallState, What
from gateway.calls.record import CallRecord, Direction
from gateway.config import NumberSettings
from gateway.instance import new_channel_id
from gateway.whatsapp.events import CallEvent

log = logging.getLogger(__name__)
_warned_no_g711: set[str] = set()


class InboundCall(Call):
    def __init__(self, event: CallEvent, number: NumberSettings, deps: CallDeps,
                 *, context: str | None = None, extension: str | None = None):
        self.event = event
        self.number = number
        self.context = context or number.context
        self.extension = extension or number.extension
        instance = deps.config.gateway.instance_id
        super().__init__(deps, CallRecord(
            wacid=event.call_id, direction=Direction.INBOUND,
            phone_number_id=event.phone_number_id, from_number=event.from_number,
            to_number=event.to_number or event.display_phone_number,
            profile_name=event.profile_name, channel_id=new_channel_id(instance),
            context=self.context, webhook_at=time.time(), user_id=event.user_id,
            username=event.username, owner=instance))
        self.last_event_ts = event.timestamp

    def _follow_negotiated_codec(self) -> None:
        """G.711 answered (``media.mode`` passthrough/auto): the Asterisk channel takes the
        same codec, and payloads pass through untouched."""
        assert self.leg is not None
        if self.leg.audio_codec != "opus":
            self.use_passthrough(self.leg.audio_codec)
        elif self.number.media_mode == "passthrough" and \
                self.number.phone_number_id not in _warned_no_g711:
            _warned_no_g711.add(self.number.phone_number_id)
            log.warning("number %s: media.mode is passthrough but WhatsApp offered no PCMU/PCMA "
                        "(is calling.audio.additional_codecs set at Meta?): calls are "
                        "transcoded from Opus (said once)", self.number.phone_number_id)

    async def run(self) -> None:
        self.deps.observer.call_admitted(self.record)
        await super().run()

    async def _setup(self) -> None:
        deps, ev, obs = self.deps, self.event, self.deps.observer
        leg = self._new_webrtc_leg()
        leg.g711, leg.passthrough = self.number.g711, True
        leg.outgoing.gate_open = False  # Meta: no call audio before accept returns 200
        answer = await leg.answer(ev.sdp or "")
        self._follow_negotiated_codec()

        await self._until_end(deps.graph.pre_accept(ev.phone_number_id, ev.call_id, answer))
        self.state = CallState.RINGING
        obs.call_setup(self.record, "pre_accept", self._elapsed())

        # The caller hears ringing while ICE/DTLS come up; only then does the dialplan start,
        # so a call whose media can never flow creates no channel, and the first prompt is
        # not played into a leg that cannot carry it yet (docs/meta-calling.md §9).
        limit = deps.config.media.connect_timeout_s
        try:
            await self._until_end(leg.connected.wait(), timeout=max(0.1, limit - self._elapsed()))
        except TimeoutError:
            raise CallFailure(What.MEDIA_TIMEOUT, f"media never connected (ICE/DTLS not up "
                              f"after {limit:g} s)") from None
        obs.call_setup(self.record, "media", self._elapsed())
        self._spawn(self._watch_media_flow())

        await self._open_rtp_leg()
        await self._originate_channel(
            caller=user_caller_id(self.record, self.number),
            variables=self._channel_variables(
                WA_CTA_PAYLOAD=ev.cta_payload or "",
                WA_DEEPLINK_PAYLOAD=ev.deeplink_payload or "",
                WA_PROFILE_NAME=ev.profile_name),
            context=self.context, exten=self.extension)
        obs.call_setup(self.record, "dialplan", self._elapsed())
        obs.call_event(self.record, "dialplan_started", asterisk_channel=self.record.channel,
                       context=self.context)
        self.state = CallState.DIALPLAN

        recording = self.number.recording  # docs/meta-2026-settings-events.md §4
        await self._until_end(deps.graph.accept(
            ev.phone_number_id, ev.call_id, answer, callback_data=self.channel_id,
            opt_in=recording.objects("inbound") if recording else None))
        self.state = CallState.ANSWERED
        self.record.answered_at = time.time()
        leg.outgoing.gate_open = True
        obs.call_event(self.record, "accepted")
        obs.call_event(self.record, "bridged", asterisk_channel=self.record.channel)
        if deps.ledger is not None:  # a connected call resets the permission-request counters
            try:
                await deps.ledger.record_user_call(ev.phone_number_id, ev.user)
            except Exception as exc:  # bookkeeping must never end a call that is up
                log.warning("call %s: permission ledger not updated: %s", ev.call_id, exc)
