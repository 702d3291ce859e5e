"""A WhatsApp user's phone, as the business sees it through Meta's relay: a real WebRTC peer.

The phone offers what WhatsApp offers (docs/meta-calling.md §9,
tests/fixtures/payloads/webhook-connect-user-initiated.json): an ICE-lite relay with one
IPv4 and one IPv6 host candidate, DTLS ``actpass``
with one sha-256 fingerprint, Opus/111 with WhatsApp's fmtp and telephone-event/8000 on 126, one
SSRC named ``WhatsAppAudioStream1``; with the number's ``audio.additional_codecs`` on, PCMU/0 and
PCMA/8 after Opus (:func:`whatsapp_offer`). Underneath runs the project's own
:class:`WebRtcLeg`, so the media is real Opus (or G.711) over SRTP and key presses are real
RFC 4733 events.

It behaves like the WhatsApp client where that matters to a gateway:
- it sends audio from the moment media connects (silence unless told to play something);
- it hangs up with 138021 when it gets no media from the business for 20 s after the call
  starts connecting, or for 30 s once media has flowed (§9 "Keep media flowing"); RTP and RTCP
  both count, as the reference accepts "audio ... or at least RTCP";
- it records everything it hears, with arrival times, and describes it in plain words;
  given Asterisk's sound files (:mod:`gateway.simulator.prompts`) it names the prompts it
  heard, beeps and tones, once each stretch of sound is over.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import logging
import time
import wave
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from gateway.media.codecs import FRAME_BYTES, RATE
from gateway.media.webrtc import WebRtcLeg
from gateway.simulator import audio
from gateway.simulator.prompts import Heard as Recognised
from gateway.simulator.prompts import PromptLibrary, recognise, same_heard
from gateway.simulator.transcript import Transcript
from gateway.simulator.whatsapp_sdp import (  # noqa: F401 (tests import them from here)
    G711_STATIC_PTS,
    META_ANSWER_OPUS_FMTP,
    META_DTMF_PT,
    WHATSAPP_OPUS_FMTP,
    meta_answer,
    whatsapp_offer,
)

log = logging.getLogger(__name__)

NO_MEDIA_ERROR = 138021
"""Client received no media for too long (docs/meta-calling.md §11)."""
MAX_STRETCH_S = 20.0
"""Sound without a pause is handed to prompt recognition at least this often."""
FRAME_S = FRAME_BYTES / 2 / RATE
"""20 ms: every frame the leg hands over (concealed ones included) is one."""
LOOKBACK_S = 4.0
"""Recognition also looks this far before a stretch: a prompt split by a short dropout (or by
MAX_STRETCH_S) is still heard whole once; what was reported before is not repeated."""
FEED_LEAD_FRAMES = 3
"""Frames queued ahead of the sender's 20 ms clock: enough to ride out loop jitter, well under
the 200 ms the outgoing queue keeps."""


@dataclass(frozen=True)
class PhoneTimers:
    """WhatsApp's media timeouts; tests shorten them."""

    no_media_at_start_s: float = 20.0
    """From the moment the call starts connecting (the business's answer SDP reaches the phone)."""
    no_media_mid_call_s: float = 30.0
    """Once media has flowed: longest gap the client tolerates."""


DEFAULT_TIMERS = PhoneTimers()


class SimulatedPhone:
    """One WhatsApp user's phone for one call.

    ``on_give_up(error_code, reason)`` is called when the phone ends the call on its own (the
    no-media rule); the call object turns that into Meta's terminate webhook.
    """

    def __init__(self, *, transcript: Transcript | None = None, name: str = "phone",
                 timers: PhoneTimers = DEFAULT_TIMERS, idle_audio: bytes | None = None,
                 hearing_window_s: float = 0.5, prompts: PromptLibrary | None = None,
                 g711: Sequence[str] = ()):
        self.transcript = transcript or Transcript()
        self.timers = timers
        self.idle_audio = idle_audio
        """Looped toward the business when nothing else is being said (None: silence)."""
        self.hearing_window_s = hearing_window_s
        self.prompts = prompts
        self.recognised: list[Recognised] = []
        """Prompts, beeps, tones and unmatched sound heard, in time order (prompts.py)."""
        self._stretch_start: float | None = None
        self._recognition: asyncio.Future[None] | None = None
        self.g711 = tuple(c for c in G711_STATIC_PTS if c in g711)
        """G.711 codecs the phone offers after Opus (the number's ``additional_codecs``)."""
        self.leg = WebRtcLeg(name=name, g711=self.g711)
        self.leg.on_audio = self._on_audio
        self.leg.on_dtmf = self._on_dtmf
        self.leg.on_state = self._on_state
        self.connected = self.leg.connected
        self.offer_sdp: str | None = None
        self.answer_sdp: str | None = None
        self.state = "idle"
        """idle → offered → connecting → connected → ended."""
        self.received: list[tuple[float, bytes]] = []
        """Every decoded 20 ms frame heard, with its arrival time (seconds since call start)."""
        self.sent: list[tuple[float, bytes]] = []
        """Every 20 ms frame the phone sent (silence is not sent), with its time."""
        self.heard_segments: list[audio.HeardSegment] = []
        self.digits_pressed: list[str] = []
        self.dtmf_received: list[str] = []
        self.on_give_up: Callable[[int, str], None] = lambda code, reason: None
        self.answered = False
        """Set by the call when the business's accept arrives (the phone's timer starts)."""
        self._connecting_since: float | None = None
        self._last_media: float | None = None
        self._tx = bytearray()
        self._tx_drained = asyncio.Event()
        self._tx_drained.set()
        self._idle_pos = 0
        self._audio_waiters: list[asyncio.Future[float]] = []
        self._tasks: list[asyncio.Task[None]] = []
        self.picked_up = asyncio.Event()
        """Set when the user picks up. A phone called by the business sends no RTP before
        that (it rings; ICE and DTLS may already be up); a calling phone is set at once."""
        self.picked_up.set()
        outgoing_recv = self.leg.outgoing.recv

        async def gated_recv():  # type: ignore[no-untyped-def]
            await self.picked_up.wait()
            return await outgoing_recv()

        self.leg.outgoing.recv = gated_recv  # type: ignore[method-assign]

    # --- signalling ---------------------------------------------------------------------------

    async def make_offer(self) -> str:
        """Create the phone's offer and return it in WhatsApp's shape."""
        # WhatsApp names its one m-section "audio", and says ice-lite: the business will be
        # controlling, so this full ICE agent must act as the controlled side.
        local = await self.leg.offer(mid="audio", ice_controlled=True)
        self.offer_sdp = whatsapp_offer(local, self.g711)
        self.state = "offered"
        return self.offer_sdp

    async def answer_offer(self, offer_sdp: str) -> str:
        """The business calls this phone: answer its offer the way Meta does and return the
        answer in Meta's shape (:func:`meta_answer`). ICE/DTLS may start at once, but the phone
        sends no RTP until :meth:`pick_up`. Raises SdpError / ValueError if the offer is
        unusable."""
        self.picked_up.clear()
        self._count_media()
        local = await self.leg.answer(offer_sdp)
        if self.leg.dtmf_payload_type is None:
            self.leg.dtmf_payload_type = META_DTMF_PT
        self.offer_sdp = offer_sdp
        self.answer_sdp = meta_answer(local)
        self._after_negotiation()
        return self.answer_sdp

    def pick_up(self) -> None:
        """The user takes the business's call: the phone starts sending audio."""
        self.answered = True
        self.picked_up.set()

    def _count_media(self) -> None:
        # Every RTP packet (DTMF included) and every RTCP packet counts as media.
        def seen() -> None:
            self._last_media = time.monotonic()

        self.leg.on_media = seen

    async def apply_answer(self, sdp: str) -> None:
        """Apply the business's answer (from pre_accept, or accept without pre_accept): ICE and
        DTLS start, and so does the no-media clock. Raises SdpError / ValueError if unusable."""
        if self.answer_sdp is not None:
            return
        self._count_media()
        await self.leg.apply_answer(sdp)
        self.answer_sdp = sdp
        if self.leg.audio_codec != "opus":
            self.transcript.add(f"media codec {self.leg.audio_codec} (G.711, narrowband)")
        self._after_negotiation()

    def _after_negotiation(self) -> None:
        self.state = "connecting"
        self._connecting_since = time.monotonic()
        self._spawn(self._watch_media())

    # --- what the user does ---------------------------------------------------------------------

    async def say_tone(self, freq: float, seconds: float, dbfs: float = -18.0) -> None:
        """Send a tone toward the business; returns once it has been handed to the sender."""
        self.transcript.add(f"phone sends tone {freq:g} Hz for {seconds:g} s")
        await self.say(audio.tone(freq, seconds, dbfs))

    async def say(self, pcm: bytes) -> None:
        """Send 16 kHz mono PCM toward the business (queued behind anything still playing)."""
        self._tx += pcm
        self._tx_drained.clear()
        await self._tx_drained.wait()

    async def press(self, digits: str, duration_ms: int = 100) -> None:
        """Press keys on the dial pad: RFC 4733 events in the audio stream, like WhatsApp."""
        if not self.connected.is_set() or self.state == "ended":
            raise RuntimeError("cannot press keys: media is not connected")
        self.leg.send_dtmf(digits, duration_ms)
        self.digits_pressed += list(digits)
        self.transcript.add(f"pressed {digits}")
        # Pacing only: each digit occupies the stream for its duration plus the end packets
        # and gap (gateway/media/webrtc.py OutgoingAudio.queue_dtmf).
        await asyncio.sleep(len(digits) * (duration_ms + 120) / 1000)

    async def hangup(self) -> None:
        """End the phone's side: media stops. Signalling is the call's business."""
        if self.state == "ended":
            return
        self.state = "ended"
        self.picked_up.set()  # let a gated sender see the closed track and stop
        if self.received:
            now = self.transcript.now()
            self._close_segment(now)
            if self._stretch_start is not None:
                self._recognise(self._stretch_start, now + 1)
                self._stretch_start = None
        for task in self._tasks:
            task.cancel()
        for waiter in self._audio_waiters:
            if not waiter.done():
                waiter.cancel()
        await self.leg.close()

    # --- what the user hears ------------------------------------------------------------------

    async def wait_audio(self, timeout: float | None = None) -> float:
        """Wait until the phone hears something that is not silence; returns the time (seconds
        since call start). Raises TimeoutError."""
        fut: asyncio.Future[float] = asyncio.get_running_loop().create_future()
        self._audio_waiters.append(fut)
        try:
            return await asyncio.wait_for(fut, timeout)
        finally:
            self._audio_waiters.remove(fut)

    def heard_pcm(self, since: float | None = None, until: float | None = None) -> bytes:
        """Audio heard between two times (seconds since call start), back to back."""
        return b"".join(pcm for t, pcm in self.received
                        if (since is None or t >= since) and (until is None or t < until))

    def heard(self, since: float | None = None, until: float | None = None) -> audio.Heard:
        """What the phone heard in that span, described (silence / tone at X Hz / audio)."""
        return audio.describe(self.heard_pcm(since, until))

    def save_wav(self, path: str, both: bool = False) -> None:
        """Everything heard as a 16 kHz WAV, gaps without packets filled with silence; with
        ``both``, stereo: left what the phone heard, right what it sent."""
        heard = audio.timeline(self.received)
        if not both:
            channels, frames = 1, heard
        else:
            sent = audio.timeline(self.sent)
            length = max(len(heard), len(sent))
            left = np.frombuffer(heard.ljust(length, b"\0"), dtype="<i2")
            right = np.frombuffer(sent.ljust(length, b"\0"), dtype="<i2")
            channels, frames = 2, np.column_stack([left, right]).astype("<i2").tobytes()
        with wave.open(path, "wb") as w:
            w.setnchannels(channels)
            w.setsampwidth(2)
            w.setframerate(RATE)
            w.writeframes(frames)

    async def finish_listening(self, timeout: float = 15.0) -> None:
        """Wait for the last prompt recognition (the call's end starts one)."""
        if self._recognition is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(asyncio.shield(self._recognition), timeout)

    # --- internals ------------------------------------------------------------------------------

    def _spawn(self, coro) -> None:  # type: ignore[no-untyped-def]
        self._tasks.append(asyncio.ensure_future(coro))

    def _on_state(self, state: str) -> None:
        if state == "connected" and self.state == "connecting":
            self.state = "connected"
            self.transcript.add("media connected (ICE+DTLS)")
            self._spawn(self._feed())
            self._spawn(self._listen())
        elif state == "failed" and self.state != "ended":
            self.transcript.add("media failed (ICE or DTLS)")

    def _on_audio(self, pcm: bytes) -> None:
        now = self.transcript.now()
        self.received.append((now, pcm))
        if self._audio_waiters and audio.rms_dbfs(pcm) >= audio.SILENCE_DBFS:
            for fut in self._audio_waiters:
                if not fut.done():
                    fut.set_result(now)

    def _on_dtmf(self, digit: str, duration_ms: int) -> None:
        self.dtmf_received.append(digit)
        self.transcript.add(f"phone got DTMF {digit} (RFC 4733, {duration_ms} ms)")

    def _give_up(self, reason: str) -> None:
        self.transcript.add(f"phone gives up: {reason}")
        self.on_give_up(NO_MEDIA_ERROR, reason)

    async def _watch_media(self) -> None:
        start_limit, mid_limit = self.timers.no_media_at_start_s, self.timers.no_media_mid_call_s
        tick = max(0.02, min(0.25, start_limit / 10, mid_limit / 10))
        while self.state != "ended":
            await asyncio.sleep(tick)
            now = time.monotonic()
            if self._last_media is None:
                if now - (self._connecting_since or now) >= start_limit:
                    return self._give_up(f"no media from the business for {start_limit:g} s "
                                         "after the call started connecting")
            elif now - self._last_media >= mid_limit:
                return self._give_up(f"no media from the business for {mid_limit:g} s")

    async def _feed(self) -> None:
        """Keep the sender's queue a few frames ahead with what the user says, or idle audio."""
        t0 = time.monotonic()
        sent = 0
        while True:
            target = int((time.monotonic() - t0) / 0.020) + FEED_LEAD_FRAMES
            while sent < target:
                frame = self._next_frame()
                if frame is not None:
                    self.leg.play(frame)
                    self.sent.append((t0 - self.transcript.t0 + sent * 0.020, frame))
                sent += 1
            await asyncio.sleep(0.020)

    def _next_frame(self) -> bytes | None:
        if self._tx:
            frame = bytes(self._tx[:FRAME_BYTES]).ljust(FRAME_BYTES, b"\0")
            del self._tx[:FRAME_BYTES]
            if not self._tx:
                self._tx_drained.set()
            return frame
        if self.idle_audio:
            loop = self.idle_audio
            frame = bytearray()
            while len(frame) < FRAME_BYTES:
                chunk = loop[self._idle_pos:self._idle_pos + FRAME_BYTES - len(frame)]
                frame += chunk
                self._idle_pos = (self._idle_pos + len(chunk)) % len(loop)
            return bytes(frame)
        return None

    async def _listen(self) -> None:
        """Describe what is heard, window by window, in the transcript; repeats coalesce."""
        window = self.hearing_window_s
        w0 = self.transcript.now()
        seen = len(self.received)
        while True:
            await asyncio.sleep(max(0.0, w0 + window - self.transcript.now()))
            w1 = w0 + window
            frames = self.received[seen:]
            seen = len(self.received)
            heard = audio.describe(b"".join(p for _, p in frames)) if frames else None
            self._extend_segment(w0, w1, heard)
            self._follow_stretch(w0, w1, heard)
            w0 = w1

    def _follow_stretch(self, w0: float, w1: float, heard: audio.Heard | None) -> None:
        """Hand each stretch of sound to prompt recognition once a pause ends it (or it
        has gone on for MAX_STRETCH_S)."""
        if heard is None:
            return  # no packets in this window (a late burst under load), not a pause
        sound = heard.kind != "silence"
        if sound and self._stretch_start is None:
            self._stretch_start = w0
        elif not sound and self._stretch_start is not None:
            self._recognise(self._stretch_start, w0)
            self._stretch_start = None
        elif self._stretch_start is not None and w1 - self._stretch_start >= MAX_STRETCH_S:
            self._recognise(self._stretch_start, w1)
            self._stretch_start = w1

    def _recognise(self, start: float, end: float) -> None:
        """Recognise what was heard in [start, end) in a thread (prompts.recognise is
        CPU-heavy), after any earlier stretch, and write it to the transcript."""
        times = [t for t, _ in self.received]
        first = bisect.bisect_left(times, start - LOOKBACK_S)
        last = bisect.bisect_left(times, end)
        if first >= last:
            return
        previous = self._recognition
        # Back to back, timed by position in the stream: the leg conceals lost packets by
        # sequence number (webrtc.py), so frame i is at i * 20 ms of the stream whatever its
        # arrival jitter, and the same prompt found again in the next look-back has the
        # same time.
        pcm = b"".join(p for _, p in self.received[first:last])
        t0 = times[0] - FRAME_S + first * FRAME_S

        async def run() -> None:
            if previous is not None:
                with contextlib.suppress(Exception):
                    await previous
            try:
                found = await asyncio.to_thread(recognise, pcm, t0, self.prompts)
            except Exception:
                log.exception("prompt recognition failed")
                return
            for item in found:
                if any(same_heard(item, old) for old in self.recognised):
                    continue
                if item.kind == "audio" and item.start + item.duration <= start:
                    continue  # unexplained sound of the look-back was reported before
                self.recognised.append(item)
                self.transcript.add(str(item))

        self._recognition = asyncio.ensure_future(run())

    def _extend_segment(self, w0: float, w1: float, heard: audio.Heard | None) -> None:
        last = self.heard_segments[-1] if self.heard_segments else None
        key = None if heard is None else heard.key
        if last is not None and (None if last.heard is None else last.heard.key) == key:
            last.end = w1
            return
        self.heard_segments.append(audio.HeardSegment(w0, w1, heard))
        # Written now, when it is known, saying since when: the transcript stays in time order.
        text = "hearing " + ("nothing (no media packets)" if heard is None else str(heard)) \
            + f" since +{w0:.3f}"
        if heard is not None and heard.kind != "silence" and not self.answered:
            # §9: audio before accept "may count as answered or be lost"; the caller may or
            # may not hear it on a real phone.
            text += " (before accept: WhatsApp may drop it)"
        self.transcript.add(text)

    def _close_segment(self, now: float) -> None:
        if self.heard_segments:
            self.heard_segments[-1].end = max(self.heard_segments[-1].end, now)
