"""One WhatsApp user's call into the business: the one place where WhatsApp meets Asterisk.

The call object owns everything it opens (the WebRTC leg, the RTP socket and its port, the AMI
channel and listener, its tasks) and releases all of it in one ``finally``, whatever ended the
call. Set-up follows whatsapp-calling.md §8 and asterisk-handoff.md:

    connect webhook → WebRTC answer → pre_accept (caller hears ringing, ICE/DTLS start)
      → AMI Originate UnicastRTP into the number's context (the dialplan starts at once)
      → Getvar UNICASTRTP_LOCAL_PORT → accept (same SDP) → Asterisk's audio released

Ends, whichever comes first: the WhatsApp terminate webhook (→ AMI Hangup), Asterisk's Hangup
event (→ Graph terminate), or a media failure (→ both).
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
import uuid
from dataclasses import dataclass

from gateway.asterisk import causes
from gateway.calls.observer import CallObserver
from gateway.calls.record import CallRecord, Direction, HangupSide, Outcome
from gateway.config import Config, NumberSettings
from gateway.media.codecs import ASTERISK_CODECS
from gateway.media.ports import PortPool
from gateway.media.rtp_leg import AsteriskRtpLeg
from gateway.media.webrtc import SdpError, WebRtcLeg
from gateway.whatsapp.events import CallEvent
from gateway.whatsapp.graph import ERROR_TEXT, GraphClient, GraphError

log = logging.getLogger(__name__)

MEDIA_CONNECT_TIMEOUT_S = 20.0
"""ICE+DTLS must be up by then: WhatsApp itself gives up after 20 s without media (§9)."""
DTMF_DURATION_MS = 120


@dataclass
class CallDeps:
    """What a call needs from the running gateway."""

    config: Config
    graph: GraphClient
    ami: object  # gateway.asterisk.ami.AmiClient (duck-typed so tests may pass a stand-in)
    ports: PortPool
    observer: CallObserver


def caller_id(profile_name: str, number: str) -> str:
    """``"Name" <+E164>``, as a PSTN trunk would present it; quotes and brackets removed."""
    name = re.sub(r'["<>\\\r\n]', "", profile_name).strip()
    num = number if number.startswith("+") else f"+{number}"
    return f'"{name}" <{num}>' if name else f"<{num}>"


class CallEnded(Exception):
    """Raised inside set-up when the call ended while it was being set up."""


class InboundCall:
    def __init__(self, event: CallEvent, number: NumberSettings, deps: CallDeps,
                 *, context: str | None = None, extension: str | None = None):
        self.deps = deps
        self.event = event
        self.number = number
        self.context = context or number.context
        self.extension = extension or number.extension
        self.channel_id = f"wa-{uuid.uuid4().hex}"
        codec = ASTERISK_CODECS[deps.config.asterisk.codec]
        self.record = CallRecord(
            wacid=event.call_id, direction=Direction.INBOUND,
            phone_number_id=event.phone_number_id, from_number=event.from_number,
            to_number=event.to_number or event.display_phone_number,
            profile_name=event.profile_name, channel_id=self.channel_id,
            context=self.context, codec=codec.name, webhook_at=time.time())
        self._t0 = time.perf_counter()
        self._codec = codec
        self._end: asyncio.Future[tuple[HangupSide, str]] = \
            asyncio.get_running_loop().create_future()
        self._dtmf: asyncio.Queue[tuple[str, int]] = asyncio.Queue()
        self.leg: WebRtcLeg | None = None
        self.rtp: AsteriskRtpLeg | None = None
        self.pre_accepted = False
        self.accepted = False
        self.channel_up = False
        self.asterisk_cause: int | None = None
        self.last_event_ts = event.timestamp
        self.done = asyncio.Event()
        self._tasks: list[asyncio.Future] = []

    # --- what the outside world tells the call -------------------------------------------------

    def whatsapp_terminated(self, event: CallEvent) -> None:
        """The user hung up (or Meta ended the call): terminate webhook."""
        err = event.errors[0] if event.errors else None
        if err is not None:
            self.record.meta_error_code = err.code
            self.record.meta_error_text = err.message or ERROR_TEXT.get(err.code or 0, "")
        why = f"terminate webhook ({event.status or 'no status'})"
        self._finish(HangupSide.WHATSAPP, why)

    def _on_ami_event(self, ev: dict[str, str]) -> None:
        name = ev.get("Event")
        if name == "Hangup":
            cause = ev.get("Cause", "")
            self.asterisk_cause = int(cause) if cause.isdigit() else None
            self._finish(HangupSide.ASTERISK,
                         f"Asterisk hung up ({cause} {ev.get('Cause-txt', '')})".strip())

    def _finish(self, side: HangupSide, why: str) -> None:
        if not self._end.done():
            self._end.set_result((side, why))

    def _elapsed(self) -> float:
        return time.perf_counter() - self._t0

    # --- the call's life ----------------------------------------------------------------------

    async def run(self) -> None:
        """Set up, bridge, wait for the end, clean up. Never raises."""
        obs = self.deps.observer
        try:
            obs.call_admitted(self.record)
            await self._setup()
            obs.call_event(self.record, "bridged", asterisk_channel=self.record.channel)
            side, why = await self._end
            await self._teardown(side, why)
        except CallEnded:
            side, why = self._end.result()
            await self._teardown(side, why)
        except SdpError as exc:
            await self._teardown(HangupSide.GATEWAY, f"unusable SDP offer: {exc}",
                                 outcome=Outcome.REJECTED)
        except OriginateFailed as exc:
            await self._teardown(HangupSide.ASTERISK, str(exc), outcome=Outcome.FAILED)
        except GraphError as exc:
            self.record.meta_error_code = exc.code
            self.record.meta_error_text = exc.meta_message
            await self._teardown(HangupSide.GATEWAY, str(exc), outcome=Outcome.FAILED)
        except Exception as exc:  # a fault in one call must never reach the others
            log.exception("call %s: unexpected error", self.event.call_id)
            await self._teardown(HangupSide.GATEWAY, f"gateway error: {exc!r}",
                                 outcome=Outcome.FAILED)
        finally:
            self.done.set()

    async def _until_end(self, aw, timeout: float | None = None):
        """Await ``aw`` unless the call ends first (then raise CallEnded)."""
        task = asyncio.ensure_future(aw)
        done, _ = await asyncio.wait({task, self._end}, timeout=timeout,
                                     return_when=asyncio.FIRST_COMPLETED)
        if task in done:
            return task.result()
        task.cancel()
        try:
            await task
        except BaseException:  # noqa: BLE001 - we are abandoning it either way
            pass
        if self._end.done():
            raise CallEnded
        raise TimeoutError

    async def _setup(self) -> None:
        deps, ev, obs = self.deps, self.event, self.deps.observer
        media = deps.config.media
        self.leg = WebRtcLeg(name=ev.call_id, opus_bitrate=media.opus_bitrate,
                             public_ip=media.public_ip)
        self.leg.outgoing.gate_open = False  # Meta: no call audio before accept returns 200
        self.leg.on_state = self._on_webrtc_state
        self.leg.on_dtmf = lambda digit, ms: self._dtmf.put_nowait((digit, ms))
        answer = await self.leg.answer(ev.sdp or "")

        await self._until_end(deps.graph.pre_accept(ev.phone_number_id, ev.call_id, answer))
        self.pre_accepted = True
        obs.call_setup(self.record, "pre_accept", self._elapsed())
        self._tasks.append(asyncio.ensure_future(self._watch_media()))

        sock = deps.ports.bind(media.rtp_address)
        self.rtp = AsteriskRtpLeg(sock, self._codec, name=self.channel_id)
        await self.rtp.start()
        self.leg.on_audio = self.rtp.send
        self.rtp.on_audio = self.leg.play

        ami = deps.ami
        ami.add_channel_listener(self.channel_id, self._on_ami_event)
        variables = {
            "WA_CALL_ID": ev.call_id,
            "WA_FROM": f"+{ev.from_number.lstrip('+')}",
            "WA_TO": ev.to_number or ev.display_phone_number,
            "WA_PHONE_NUMBER_ID": ev.phone_number_id,
            "WA_DIRECTION": "inbound",
            "WA_CHANNEL_ID": self.channel_id,
            "WA_CTA_PAYLOAD": ev.cta_payload or "",
            "WA_DEEPLINK_PAYLOAD": ev.deeplink_payload or "",
        }
        result = await self._until_end(ami.originate_unicast(
            channel_id=self.channel_id, rtp_host=self.rtp.local[0], rtp_port=self.rtp.port,
            codec=self._codec.name, context=self.context, exten=self.extension,
            caller_id=caller_id(ev.profile_name, ev.from_number), variables=variables))
        if not result.success:
            raise OriginateFailed(f"Asterisk refused the channel (reason {result.reason})")
        self.channel_up = True
        self.record.channel = result.channel
        obs.call_setup(self.record, "dialplan", self._elapsed())
        obs.call_event(self.record, "dialplan_started", asterisk_channel=result.channel,
                       context=self.context)

        port = await self._until_end(ami.getvar(self.channel_id, "UNICASTRTP_LOCAL_PORT"))
        host = await self._until_end(ami.getvar(self.channel_id, "UNICASTRTP_LOCAL_ADDRESS"))
        if not port or not str(port).isdigit():
            raise OriginateFailed(f"Asterisk gave no RTP port for the channel ({port!r})")
        self.rtp.set_remote(host if host and host != "0.0.0.0" else self.rtp.local[0], int(port))

        await self._until_end(deps.graph.accept(ev.phone_number_id, ev.call_id, answer,
                                                callback_data=self.channel_id))
        self.accepted = True
        self.record.answered_at = time.time()
        self.leg.outgoing.gate_open = True
        obs.call_event(self.record, "accepted")
        self._tasks.append(asyncio.ensure_future(self._forward_dtmf()))

    async def _watch_media(self) -> None:
        """Media failure ends the call: ICE/DTLS never up, or the leg dies mid-call."""
        assert self.leg is not None
        try:
            await self._until_end(self.leg.connected.wait(),
                                  timeout=max(0.1, MEDIA_CONNECT_TIMEOUT_S - self._elapsed()))
            self.deps.observer.call_setup(self.record, "media", self._elapsed())
        except CallEnded:
            return
        except TimeoutError:
            self._finish(HangupSide.GATEWAY, "media never connected (ICE/DTLS timeout)")

    def _on_webrtc_state(self, state: str) -> None:
        if state in ("failed", "closed") and not self._end.done():
            self._finish(HangupSide.GATEWAY, f"WebRTC leg {state}")

    async def _forward_dtmf(self) -> None:
        """Caller's key presses → PlayDTMF Receive:true, in order, one AMI action at a time."""
        while True:
            digit, _ms = await self._dtmf.get()
            self.record.dtmf_in += 1
            self.deps.observer.call_event(self.record, "dtmf", digit=digit)
            try:
                await self.deps.ami.play_dtmf(self.channel_id, digit, DTMF_DURATION_MS)
            except Exception as exc:  # Asterisk gone: the Hangup path ends the call
                log.warning("call %s: PlayDTMF %s failed: %s", self.event.call_id, digit, exc)

    async def _teardown(self, side: HangupSide, why: str,
                        outcome: Outcome | None = None) -> None:
        deps, rec, ev = self.deps, self.record, self.event
        if not self._end.done():
            self._end.set_result((side, why))
        rec.ended_at = time.time()
        rec.hangup_side = rec.hangup_side or side
        rec.reason = why
        for task in self._tasks:
            task.cancel()

        # The other side(s) learn the call is over.
        if side != HangupSide.WHATSAPP:
            try:
                if self.accepted:
                    await deps.graph.terminate(ev.phone_number_id, ev.call_id)
                else:
                    await deps.graph.reject(ev.phone_number_id, ev.call_id)
            except GraphError as exc:
                log.warning("call %s: could not end the WhatsApp side: %s", ev.call_id, exc)
        if self.channel_up and side != HangupSide.ASTERISK:
            q850 = causes.NORMAL_CLEARING if side == HangupSide.WHATSAPP \
                else causes.NORMAL_TEMPORARY_FAILURE
            try:
                await deps.ami.hangup(self.channel_id, q850)
            except Exception as exc:
                log.warning("call %s: AMI Hangup of %s failed: %s (the orphan sweep will "
                            "catch it)", ev.call_id, self.channel_id, exc)
            rec.q850_cause = q850
        elif side == HangupSide.ASTERISK:
            rec.q850_cause = self.asterisk_cause

        if outcome is None:
            if self.accepted:
                outcome = Outcome.ANSWERED if side != HangupSide.GATEWAY else Outcome.FAILED
            elif side == HangupSide.WHATSAPP:
                outcome = Outcome.ABANDONED
            else:
                outcome = Outcome.FAILED
        if rec.meta_error_code and outcome == Outcome.ANSWERED and side == HangupSide.WHATSAPP:
            outcome = Outcome.FAILED  # e.g. 138021: the client got no media
        rec.outcome = outcome

        # Release everything this call opened.
        if self.leg is not None:
            try:
                stats = await asyncio.wait_for(self.leg.stats(), 1.0)
                rec.packets_in = int(stats.get("packets_received", 0))
                rec.packets_out = int(stats.get("frames_sent", 0))
                rec.packets_lost = int(stats.get("packets_lost", 0))
                rec.jitter_seconds = stats.get("jitter_seconds")
                rec.rtt_seconds = stats.get("rtt_seconds")
            except Exception:
                pass
            await self.leg.close()
        deps.ami.remove_channel_listener(self.channel_id)
        if self.rtp is not None:
            self.rtp.close()
            deps.ports.release(self.rtp.port)
        deps.observer.call_ended(rec)


class OriginateFailed(Exception):
    """Asterisk would not create or describe the call's channel."""
