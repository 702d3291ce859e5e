"""What every call has, whichever side placed it: two legs, one end, one teardown.

A call owns its WebRTC leg (WhatsApp), its RTP leg and port (Asterisk), its AMI channel listener
and its tasks, and releases all of them in :meth:`Call._release` on every path. The first thing
that ends the call — a terminate webhook, Asterisk's Hangup event, a media failure, a Graph
error — is turned into an :class:`~gateway.calls.ending.Ending` by the one table in
gateway/calls/ending.py, at that moment and from the call's state then; everything after that
is the same teardown, which carries the Ending out on both sides.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from typing import Any

from gateway.calls.caller_id import caller_id, channel_variables, e164, user_caller_id
from gateway.calls.deps import CallDeps
from gateway.calls.ending import (
    CallFailure,
    CallState,
    Ending,
    GraphAction,
    Happened,
    What,
    ending_for,
    what_for,
)
from gateway.calls.record import CallRecord
from gateway.errors import GatewayError
from gateway.media.codecs import ASTERISK_CODECS, G711_CODECS
from gateway.media.rtp_leg import AsteriskRtpLeg
from gateway.media.webrtc import WebRtcLeg
from gateway.whatsapp.events import CallEvent
from gateway.whatsapp.graph import ERROR_TEXT, GraphError

__all__ = ["Call", "CallDeps", "CallEnded", "OriginateFailed", "caller_id", "e164",
           "user_caller_id"]

log = logging.getLogger(__name__)

MEDIA_LOSS_GRACE_S = 2.0
DTMF_DURATION_MS = 120
"""Length of each digit played into Asterisk (PlayDTMF); Asterisk's own default is 100 ms."""
ORIGINATE_WAIT_S = 30.0
"""How long a teardown waits for an Originate still in flight before hanging up what it made
(the AMI client's own limit is action_timeout_s + 10 s)."""


ORIGINATE_REASONS = {
    0: "no such extension/context, or the channel failed",
    1: "hung up at once",
    3: "ringing",
    4: "answered",
    5: "busy",
    8: "congestion",
}
"""OriginateResponse ``Reason`` values (Asterisk's AST_CONTROL_* numbering)."""


class CallEnded(GatewayError):
    """Raised inside set-up when the call ended while it was being set up."""


class OriginateFailed(CallFailure):
    """Asterisk would not create or describe the call's channel."""

    def __init__(self, detail: str):
        super().__init__(What.ORIGINATE_FAILED, detail)


class Call:
    def __init__(self, deps: CallDeps, record: CallRecord):
        self.deps = deps
        self.record = record
        self.channel_id = record.channel_id
        self._codec = ASTERISK_CODECS[deps.config.asterisk.codec]
        record.codec = self._codec.name
        self._passthrough = False
        """G.711 both ways: payloads go between the legs untouched (no transcoding)."""
        self._t0 = time.perf_counter()
        self._end: asyncio.Future[Ending] = asyncio.get_running_loop().create_future()
        self.ended_why = ""
        """The words for the record's ``reason`` (set with the Ending)."""
        self.state = CallState.NEW
        self._dtmf_in: asyncio.Queue[str] = asyncio.Queue()
        self._tasks: list[asyncio.Future] = []
        self.leg: WebRtcLeg | None = None
        self.rtp: AsteriskRtpLeg | None = None
        self._rtp_sock: socket.socket | None = None
        self._originate: asyncio.Task | None = None
        """The AMI Originate, once sent: the teardown waits for it and hangs up what it made."""
        self.last_event_ts = 0
        self.done = asyncio.Event()

    @property
    def wacid(self) -> str:
        return self.record.wacid

    @property
    def ended(self) -> bool:
        return self._end.done()

    @property
    def channel_made(self) -> bool:
        """An Originate was sent and has not (yet) failed: Asterisk may hold our channel."""
        task = self._originate
        if task is None:
            return False
        if not task.done():
            return True
        return task.cancelled() or task.exception() is not None or bool(task.result().success)

    @property
    def ending(self) -> Ending | None:
        return self._end.result() if self._end.done() else None

    # --- ending ---------------------------------------------------------------------------------

    def end(self, what: What, why: str = "", *, meta_code: int | None = None,
            meta_text: str = "", cause: int | None = None) -> bool:
        """End the call because ``what`` happened. The first end wins (returns True); the
        Ending is decided now, from the state the call is in now."""
        if self._end.done():
            return False
        ending = ending_for(what, self.state, direction=self.record.direction,
                            meta_code=meta_code, cause=cause)
        if meta_code is not None:
            self.record.meta_error_code = meta_code
            self.record.meta_error_text = meta_text
        self.ended_why = why or what.value.replace("_", " ")
        self._end.set_result(ending)
        return True

    def hangup(self, why: str = "hung up through the API") -> None:
        self.end(What.API_HANGUP, why)

    # --- what the outside world tells the call -------------------------------------------------

    def whatsapp_terminated(self, event: CallEvent) -> None:
        """The user hung up, or Meta ended the call: the terminate webhook."""
        err = event.errors[0] if event.errors else None
        why = f"terminate webhook ({event.status or 'no status'})"
        if err is None:
            self.end(What.TERMINATE_WEBHOOK, why)
        else:
            self.end(What.WHATSAPP_FAILED, why, meta_code=err.code,
                     meta_text=err.message or ERROR_TEXT.get(err.code or 0, ""))

    def _on_ami_event(self, ev: dict[str, str]) -> None:
        name = ev.get("Event")
        if name == "Hangup":
            cause = ev.get("Cause", "")
            self.end(What.ASTERISK_HANGUP,
                     f"Asterisk hung up ({cause} {ev.get('Cause-txt', '')})".strip(),
                     cause=int(cause) if cause.isdigit() else None)
        elif name == "DTMFEnd" and ev.get("Direction", "").lower() == "sent":
            # Asterisk writes a digit to our channel (an agent's key press across a bridge):
            # chan_rtp cannot send it, so it goes to WhatsApp as RFC 4733
            # (docs/asterisk-handoff.md).
            digit = ev.get("Digit", "")
            duration = ev.get("DurationMs", "")
            if self.leg is not None and digit:
                self.leg.send_dtmf(digit, int(duration) if duration.isdigit() else 100)
                self.record.dtmf_out += 1
                self.deps.observer.call_event(self.record, "dtmf_out", digit=digit)

    # --- the call's life ------------------------------------------------------------------------

    async def run(self) -> None:
        """Set up, bridge, wait for the end, clean up. Never raises."""
        try:
            if not self._end.done():  # ended at admission (e.g. no RTP port): no set-up
                await self._setup()
            await self._end
        except CallEnded:
            pass
        except Exception as exc:  # a fault in one call must never reach the others
            happened = what_for(exc)
            if happened.what == What.GATEWAY_ERROR:
                log.exception("call %s (%s): unexpected error", self.wacid, self.channel_id)
            self._failed(happened)
        finally:
            if not self._end.done():  # cancelled, or set-up returned without an end
                self.end(What.GATEWAY_ERROR, "the call's task ended without an end")
            await self._teardown(self._end.result())

    def _failed(self, happened: Happened) -> None:
        self.end(happened.what, happened.detail, meta_code=happened.meta_code,
                 meta_text=happened.meta_text)

    async def _setup(self) -> None:
        raise NotImplementedError

    async def _teardown(self, ending: Ending) -> None:
        """Carry the Ending out: the record, the WhatsApp side, the Asterisk side, release."""
        rec = self.record
        rec.hangup_side, rec.reason, rec.end_reason = ending.side, self.ended_why, ending.reason
        rec.outcome = ending.outcome
        rec.ended_at = time.time()
        self.state = CallState.ENDED
        await self._end_whatsapp(ending)
        await self._end_asterisk(ending)
        await self._after_end(ending)
        await self._release()
        self.deps.observer.call_ended(rec)

    async def _after_end(self, ending: Ending) -> None:
        """Direction-specific work after both sides are ended (outbound: agent, ledger)."""

    async def _end_whatsapp(self, ending: Ending) -> None:
        """The Graph action the table chose (retried by the Graph client where safe); when it
        finally fails, the record says so: the WhatsApp side may still be up."""
        rec = self.record
        if ending.graph == GraphAction.NONE or not rec.wacid:
            return
        action = self.deps.graph.terminate if ending.graph == GraphAction.TERMINATE \
            else self.deps.graph.reject
        try:
            await action(rec.phone_number_id, rec.wacid)
        except GraphError as exc:
            log.warning("call %s: %s failed, the WhatsApp side may still be up: %s",
                        rec.wacid, ending.graph.value, exc)
            rec.reason = f"{rec.reason}; {ending.graph.value} failed: {exc}"
            if rec.meta_error_code is None:
                rec.meta_error_code, rec.meta_error_text = exc.code, exc.meta_message
            self.deps.observer.call_event(rec, "graph_end_failed", action=ending.graph.value,
                                          error=str(exc))

    async def _end_asterisk(self, ending: Ending) -> None:
        """Hang up the channel this call created, if Asterisk did not end it. An Originate
        still in flight is waited for first: hanging up before Asterisk has made the channel
        would leave it behind (the orphan of issue 8 finding 6)."""
        if self._originate is None:
            return
        created = await self._originated()
        if created:
            self.record.q850_cause = ending.q850
            if ending.hangup_channel:
                await self._hangup_channel(ending.q850 or 16)

    async def _originated(self) -> bool:
        """Whether the Originate made a channel (unknown counts as made: hang it up)."""
        assert self._originate is not None
        try:
            result = await asyncio.wait_for(asyncio.shield(self._originate), ORIGINATE_WAIT_S)
        except TimeoutError:
            return True
        except Exception:  # AMI gone: the orphan sweep on reconnect catches the channel
            return True
        return bool(result.success)

    def _elapsed(self) -> float:
        return time.perf_counter() - self._t0

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
        except BaseException:  # noqa: BLE001 - abandoned either way
            pass
        if self._end.done():
            raise CallEnded
        raise TimeoutError

    def _spawn(self, coro) -> None:
        self._tasks.append(asyncio.ensure_future(coro))

    # --- legs -----------------------------------------------------------------------------------

    def reserve_port(self) -> int:
        """Bind this call's RTP port now, at admission (raises PortsExhausted): a port
        checked free at admission but bound only after ICE could be gone by then."""
        if self._rtp_sock is None:
            self._rtp_sock = self.deps.ports.bind(self.deps.config.media.rtp_address)
        return self._rtp_sock.getsockname()[1]

    def _new_webrtc_leg(self) -> WebRtcLeg:
        name = self.wacid or self.channel_id
        if self.deps.new_webrtc_leg is not None:
            leg = self.deps.new_webrtc_leg(name)
        else:
            media = self.deps.config.media
            leg = WebRtcLeg(name=name, opus_bitrate=media.opus_bitrate,
                            opus_complexity=media.opus_complexity, public_ip=media.public_ip,
                            addresses=media.webrtc_addresses or None,
                            ports=(media.webrtc_ports.first, media.webrtc_ports.last)
                            if media.webrtc_ports else None)
        leg.on_state = self._on_webrtc_state
        leg.on_dtmf = lambda digit, ms: self._dtmf_in.put_nowait(digit)
        self.leg = leg
        return leg

    def use_passthrough(self, g711: str) -> None:
        """WhatsApp's leg speaks ``g711`` (PCMU/PCMA): the Asterisk channel is ulaw/alaw and
        frames pass between the legs as they are. Before the RTP leg is opened."""
        self._codec = ASTERISK_CODECS[G711_CODECS[g711]]
        self.record.codec = self._codec.name
        self._passthrough = True

    def _on_webrtc_state(self, state: str) -> None:
        if state in ("failed", "closed") and not self._end.done():
            self._spawn(self._media_lost(state))

    async def _media_lost(self, state: str) -> None:
        """The WebRTC leg went down. When the user hangs up, the phone's DTLS close usually
        overtakes Meta's terminate webhook: wait a moment for it, so a normal hangup is not
        recorded as a media failure (and no needless terminate is sent)."""
        try:
            await asyncio.wait_for(asyncio.shield(self._end), MEDIA_LOSS_GRACE_S)
        except TimeoutError:
            self.end(What.MEDIA_LOST, f"WebRTC leg {state} (media lost)")

    async def _watch_media_flow(self) -> None:
        """End the call when the WhatsApp leg goes silent at the packet level (no RTP at all,
        not merely a quiet caller: WhatsApp sends packets during silence)."""
        assert self.leg is not None
        limit = self.deps.config.media.no_media_timeout_s
        loop = asyncio.get_running_loop()
        seen, since = self.leg.packets_received, loop.time()
        while not self._end.done():
            await asyncio.sleep(min(1.0, limit / 4))
            if self.leg.packets_received != seen:
                seen, since = self.leg.packets_received, loop.time()
            elif loop.time() - since >= limit:
                self.end(What.MEDIA_LOST,
                         f"no media from WhatsApp for {limit:g} s (WebRTC leg lost)")

    async def _open_rtp_leg(self) -> AsteriskRtpLeg:
        assert self.leg is not None
        self.reserve_port()
        sock, self._rtp_sock = self._rtp_sock, None
        assert sock is not None
        self.rtp = AsteriskRtpLeg(sock, self._codec, name=self.channel_id,
                                  passthrough=self._passthrough)
        await self.rtp.start()
        self.leg.on_audio = self.rtp.send
        self.rtp.on_audio = self.leg.play
        self.deps.ami.add_channel_listener(self.channel_id, self._on_ami_event)
        return self.rtp

    def _channel_variables(self, **extra: str) -> dict[str, str]:
        return channel_variables(self.record, **extra)

    @property
    def accountcode(self) -> str | None:
        """The number's ``accountcode`` (config), for the channel and so its CDR rows."""
        number = self.deps.config.number(self.record.phone_number_id)
        return number.accountcode if number else None

    async def _originate_channel(self, *, caller: str, variables: dict[str, str],
                                 context: str | None = None, exten: str | None = None,
                                 application: str | None = None, data: str | None = None) -> None:
        """Create the UnicastRTP channel and point our RTP leg at Asterisk's port.

        The Originate itself is never cancelled: if the call ends while it is in flight, the
        teardown waits for it and hangs up the channel it made."""
        assert self.rtp is not None
        kwargs: dict[str, Any] = {"application": application, "data": data} if application \
            else {"context": context, "exten": exten}
        if self._end.done():
            raise CallEnded
        self._originate = asyncio.ensure_future(self.deps.ami.originate_unicast(
            channel_id=self.channel_id, rtp_host=self.rtp.local[0], rtp_port=self.rtp.port,
            codec=self._codec.name, caller_id=caller, variables=variables,
            account=self.accountcode, **kwargs))
        result = await self._until_end(asyncio.shield(self._originate))
        if not result.success:
            raise OriginateFailed(f"Asterisk refused the channel (Originate reason "
                                  f"{result.reason}: {ORIGINATE_REASONS.get(result.reason, '?')})")
        self.record.channel = result.channel
        ami = self.deps.ami
        port = await self._until_end(ami.getvar(self.channel_id, "UNICASTRTP_LOCAL_PORT"))
        host = await self._until_end(ami.getvar(self.channel_id, "UNICASTRTP_LOCAL_ADDRESS"))
        if not port or not str(port).isdigit():
            raise OriginateFailed(f"Asterisk gave no RTP port for the channel ({port!r})")
        # Once the WhatsApp leg is up, its sender's 20 ms clock paces the Asterisk leg too.
        paced = self.leg is not None and self.leg.connected.is_set()
        if paced:
            self.leg.outgoing.on_tick = self.rtp.tick
        self.rtp.set_remote(host if host and host != "0.0.0.0" else self.rtp.local[0], int(port),
                            paced_outside=paced)
        self._spawn(self._forward_dtmf())

    async def _forward_dtmf(self) -> None:
        """WhatsApp key presses → PlayDTMF Receive:true, in order, one AMI action at a time."""
        while True:
            digit = await self._dtmf_in.get()
            self.record.dtmf_in += 1
            self.deps.observer.call_event(self.record, "dtmf", digit=digit)
            try:
                await self.deps.ami.play_dtmf(self.channel_id, digit, DTMF_DURATION_MS)
            except Exception as exc:  # Asterisk gone: the Hangup path ends the call
                log.warning("call %s: PlayDTMF %s failed: %s", self.wacid, digit, exc)

    async def _hangup_channel(self, q850: int) -> None:
        try:
            await self.deps.ami.hangup(self.channel_id, q850)
        except Exception as exc:
            log.warning("call %s: AMI Hangup of %s failed: %s (the orphan sweep will catch it)",
                        self.wacid, self.channel_id, exc)

    async def _release(self) -> None:
        """Close everything this call opened; collect media stats into the record."""
        rec = self.record
        for task in self._tasks:
            task.cancel()
        if self.leg is not None:
            try:
                stats = await asyncio.wait_for(self.leg.stats(), 1.0)
                rec.packets_in = int(stats.get("packets_received", 0))
                rec.packets_out = int(stats.get("frames_sent", 0))
                rec.packets_lost = int(stats.get("packets_lost", 0))
                rec.jitter_seconds = stats.get("jitter_seconds")
                rec.rtt_seconds = stats.get("rtt_seconds")
            except Exception:  # stats are best effort
                pass
            await self.leg.close()
        self.deps.ami.remove_channel_listener(self.channel_id)
        if self.rtp is not None:
            self.rtp.close()
            self.deps.ports.release(self.rtp.port)
        if self._rtp_sock is not None:  # reserved at admission, never used
            port = self._rtp_sock.getsockname()[1]
            self._rtp_sock.close()
            self._rtp_sock = None
            self.deps.ports.release(port)
        rec.ended_at = rec.ended_at or time.time()
        self.done.set()
