"""The send path toward WhatsApp: one encoded packet every 20 ms, whatever happens.

aiortc's sender pulls :meth:`OutgoingAudio.recv` in a loop and sends what it returns; an
exception inside ``recv()`` stops that sender for good with only a WARNING, and WhatsApp hangs
up after 20 s (start) or 30 s (mid-call) without media (docs/media.md). So ``recv()`` always
returns a packet: queued audio, silence, or an RFC 4733 event in place of an audio frame.
"""

from __future__ import annotations

import asyncio
import fractions
import logging
import time
from collections import deque
from collections.abc import Callable

import av
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack

from gateway.media import aiortc_hooks, rfc4733
from gateway.media.codecs import (
    DIGITAL_SILENCE_PEAK,
    FrameEncoder,
    OpusEncoder,
    opus_silence_packet,
    trim_backlog,
)

log = logging.getLogger(__name__)

PTIME = 0.020
OPUS_TIME_BASE = fractions.Fraction(1, 48000)
MAX_QUEUED_FRAMES = 10
"""200 ms of jitter allowed on top of the held backlog: beyond that the far side sends faster
than real time and the oldest audio is dropped."""
MAX_GATED_FRAMES = 50 * 60
"""Up to 60 s of audio is held while the gate is closed (between the dialplan's start and
accept's 200): Meta's whole answer budget (docs/meta-calling.md §8, 30-60 s), so however slow
accept is, the first prompt is delayed, never clipped (§9). 1.9 MB at most, during set-up."""


class OutgoingAudio(MediaStreamTrack):
    """Audio toward the peer: queued PCM or silence every 20 ms, and RFC 4733 events in between.

    Returns pre-encoded ``av.Packet`` s so aiortc's own encoder never runs (aiortc's sender
    accepts packets in place of frames).
    """

    kind = "audio"

    def __init__(self, bitrate: int, complexity: int = 3):
        super().__init__()
        self.bitrate = bitrate
        self._complexity = complexity
        self._encoder: FrameEncoder = OpusEncoder(bitrate, complexity)
        self._format = self._encoder.format
        self._silence_packet: bytes | None = opus_silence_packet(bitrate, complexity)
        """Sent in place of encoding digital silence (None: the codec is cheap, G.711)."""
        self._silent = False
        self._clock = 48000
        self._time_base = OPUS_TIME_BASE
        """RTP clock of the codec: aiortc's ``pack()`` skips its Fraction arithmetic when the
        packet's time base is the codec's own."""
        self.on_tick: Callable[[], None] | None = None
        """Called every 20 ms by the sender's clock: the Asterisk leg paces itself on it, so a
        call runs one timer, not two."""
        self._pcm = bytearray()
        """Queued frames of ``self._format`` (16 kHz PCM, or G.711 bytes in passthrough)."""
        self._dtmf_queue: deque[tuple[bytes, bool, bool]] = deque()  # payload, marker, last
        self._event_pts: int | None = None
        self._pts = 0
        self._start: float | None = None
        self._rewriter: aiortc_hooks.PayloadTypeRewriter | None = None
        self.dtmf_pt = aiortc_hooks.TELEPHONE_EVENT_PT
        self._gate_open = True
        self._backlog = 0
        """Bytes of held audio still owed as extra latency once the gate opened. It shrinks
        only when the queue really gets shorter (quiet frames dropped, or the far side
        pausing), never by cutting what is heard; new audio cannot grow it."""
        self.frames_sent = 0
        self.events_sent: list[str] = []

    def limit_bitrate(self, peer_max: int | None) -> None:
        """Honour the peer's maxaveragebitrate; called before any frame is sent, when the
        remote description arrives (a new encoder then costs nothing audible)."""
        if peer_max and 6000 <= peer_max < self.bitrate and isinstance(self._encoder,
                                                                       OpusEncoder):
            self.bitrate = peer_max
            self._encoder = OpusEncoder(peer_max, self._complexity)
            self._silence_packet = opus_silence_packet(peer_max, self._complexity)

    def use_encoder(self, encoder: FrameEncoder, rtp_clock: int = 8000) -> None:
        """Send with this codec (G.711 negotiated), before any frame is sent."""
        self._encoder, self._format = encoder, encoder.format
        self._silence_packet = None
        self._clock, self._time_base = rtp_clock, fractions.Fraction(1, rtp_clock)
        self._pcm.clear()

    def attach(self, rewriter: aiortc_hooks.PayloadTypeRewriter) -> None:
        self._rewriter = rewriter

    def queue_pcm(self, pcm: bytes) -> None:
        """Queue frames of the leg's format (16 kHz PCM, or G.711 bytes in passthrough)."""
        self._pcm += pcm
        size = self._format.frame_bytes
        limit = MAX_GATED_FRAMES * size if not self.gate_open \
            else self._backlog + MAX_QUEUED_FRAMES * size
        if len(self._pcm) > limit:
            del self._pcm[: len(self._pcm) - limit]

    @property
    def gate_open(self) -> bool:
        """While False, silence is sent and audio held (before Meta's accept returns). Set
        True when accept returns: what was held is played whole, live audio behind it."""
        return self._gate_open

    @gate_open.setter
    def gate_open(self, value: bool) -> None:
        if value and not self._gate_open:
            self._backlog = len(self._pcm)
        self._gate_open = value

    def _next_pcm(self) -> bytes:
        """The next 20 ms to send. Held audio after the gate opens is a backlog (latency): it is
        worked off by skipping quiet frames, never by cutting speech."""
        size = self._format.frame_bytes
        if not self.gate_open or len(self._pcm) < size:
            return self._format.silence
        trim_backlog(self._pcm, fmt=self._format)
        self._backlog = min(self._backlog, len(self._pcm) - size)
        pcm = bytes(self._pcm[:size])
        del self._pcm[:size]
        return pcm

    def clear(self) -> None:
        self._pcm.clear()

    def queue_dtmf(self, digits: str, duration_ms: int = 100, gap_ms: int = 60) -> None:
        for d in digits:
            payloads = list(rfc4733.event_payloads(d, duration_ms))
            for i, (payload, marker) in enumerate(payloads):
                self._dtmf_queue.append((payload, marker, i == len(payloads) - 1))
            self.events_sent.append(d)
            for _ in range(max(1, gap_ms // 20)):
                self._dtmf_queue.append((b"", False, False))  # silence between digits

    async def recv(self) -> av.Packet:
        if self.readyState != "live":
            raise MediaStreamError
        now = time.monotonic()
        if self._start is None:
            self._start = now
        else:
            wait = self._start + self.frames_sent * PTIME - now
            if wait > 0:
                await asyncio.sleep(wait)
            elif wait < -0.2:  # the loop stalled: do not burst to catch up
                self._start = now - self.frames_sent * PTIME
        if self.on_tick is not None:
            try:
                self.on_tick()
            except Exception:  # an exception here would stop this sender for good
                log.exception("media: the 20 ms tick of the other leg failed")
        self.frames_sent += 1
        pts = self._pts
        self._pts += self._clock // 50
        if self._dtmf_queue and self._rewriter is not None:
            payload, marker, last = self._dtmf_queue.popleft()
            if payload:
                if marker or self._event_pts is None:
                    self._event_pts = pts
                self._rewriter.rewrite_next(self.dtmf_pt, marker)
                if last:
                    self._event_pts, pts = None, self._event_pts
                else:
                    pts = self._event_pts
                return self._packet(payload, pts)
        return self._packet(self._encode(self._next_pcm()), pts)

    def _encode(self, frame: bytes) -> bytes:
        if self._silence_packet is not None and (
                frame is self._format.silence
                or self._format.peak(frame) <= DIGITAL_SILENCE_PEAK):
            self._silent = True
            return self._silence_packet
        if self._silent:
            # Sound again: the encoder's frame before this one must be silence as well, or
            # this packet's FEC would carry the sound from before the silence.
            self._encoder.encode(self._format.silence)
            self._silent = False
        return self._encoder.encode(frame)

    def _packet(self, payload: bytes, pts: int) -> av.Packet:
        packet = av.Packet(payload)
        packet.pts = pts
        packet.time_base = self._time_base
        return packet
