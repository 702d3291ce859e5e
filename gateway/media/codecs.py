"""Audio codecs of both legs over PyAV, around one internal format: 16 kHz mono s16, 20 ms.

16 kHz is what WhatsApp plays (its offer says maxplaybackrate=16000) and what G.722 carries, so
the wideband path needs no resampling at all; ulaw/alaw resample to 8 kHz at the Asterisk edge.
Own Opus encoder rather than aiortc's: aiortc's is fixed at 96 kb/s stereo without FEC and costs
twice the CPU (docs/media.md); ours is mono, ``application=voip``, in-band FEC on.
"""

from __future__ import annotations

import fractions
from dataclasses import dataclass, field
from typing import Protocol

import av
import numpy as np

RATE = 16000
FRAME_SAMPLES = 320  # 20 ms at 16 kHz
FRAME_BYTES = FRAME_SAMPLES * 2
SILENCE = bytes(FRAME_BYTES)
OPUS_CLOCK = 48000


DIGITAL_SILENCE_PEAK = 40
"""A frame whose samples all stay within this (-58 dBFS) is digital silence: what Asterisk sends
when it plays nothing (G.722's idle code decodes to +-32, G.711's to 0)."""
QUIET_PEAK = 300
"""A 20 ms frame whose samples all stay below this (about -40 dBFS) carries nothing a listener
would miss: it may be dropped to work off a backlog (latency) without cutting speech."""


@dataclass(frozen=True)
class FrameFormat:
    """What a 20 ms frame in a queue holds: 16 kHz s16 PCM (transcoding), or G.711 bytes
    passed through untouched between WhatsApp and Asterisk (``media.mode: passthrough``)."""

    name: str
    frame_bytes: int
    silence: bytes
    """One frame of digital silence in this format."""
    linear: np.ndarray | None = field(default=None, compare=False)
    """G.711 byte value → s16 sample (None: the frame is PCM already)."""

    def peak(self, queue: bytearray | bytes) -> int:
        """Loudest sample of the frame at the head of ``queue``."""
        if self.linear is None:
            head = np.frombuffer(queue, dtype=np.int16, count=self.frame_bytes // 2)
            return int(np.abs(head).max())
        return int(self.linear[np.frombuffer(queue, dtype=np.uint8,
                                             count=self.frame_bytes)].max())


def _g711_peaks(ffmpeg: str) -> np.ndarray:
    """|s16| of each of the 256 G.711 byte values, decoded once by PyAV."""
    dec = av.CodecContext.create(ffmpeg, "r")
    dec.sample_rate, dec.layout = 8000, "mono"
    frames = dec.decode(av.Packet(bytes(range(256))))
    samples = np.frombuffer(b"".join(bytes(f.planes[0])[: f.samples * 2] for f in frames),
                            dtype=np.int16)
    return np.abs(samples.astype(np.int32))


PCM16 = FrameFormat("pcm16", FRAME_BYTES, SILENCE)
G711_FORMATS = {
    # G.711 silence is the code of the smallest level: 0xFF in mu-law, 0xD5 in A-law.
    "ulaw": FrameFormat("ulaw", 160, b"\xff" * 160, _g711_peaks("pcm_mulaw")),
    "alaw": FrameFormat("alaw", 160, b"\xd5" * 160, _g711_peaks("pcm_alaw")),
}
G711_CODECS = {"PCMU": "ulaw", "PCMA": "alaw"}
"""WhatsApp's (SDP) name of a G.711 codec → Asterisk's."""


def trim_backlog(queue: bytearray, keep_frames: int = 3, fmt: FrameFormat = PCM16) -> None:
    """Drop quiet frames from the head of a queue holding more than ``keep_frames`` + 1
    frames. Audio that arrived in a burst (network jitter, or held until Meta's accept) would
    otherwise stay as extra delay for the rest of the call."""
    size = fmt.frame_bytes
    while len(queue) >= (keep_frames + 1) * size:
        if fmt.peak(queue) >= QUIET_PEAK:
            return
        del queue[:size]


class FrameEncoder(Protocol):
    """One 20 ms frame of ``format`` in, one RTP payload out."""

    format: FrameFormat

    def encode(self, frame: bytes) -> bytes: ...


class FrameDecoder(Protocol):
    """One RTP payload in, 20 ms of ``format`` out (empty when undecodable)."""

    format: FrameFormat

    def decode(self, payload: bytes) -> bytes: ...


def _frame(pcm: bytes, rate: int, pts: int | None = None) -> av.AudioFrame:
    # Filling the plane directly costs a third of AudioFrame.from_ndarray (measured: 4 vs 11 us).
    frame = av.AudioFrame(format="s16", layout="mono", samples=len(pcm) // 2)
    frame.planes[0].update(pcm)
    frame.sample_rate = rate
    if pts is not None:
        frame.pts = pts
        frame.time_base = fractions.Fraction(1, rate)
    return frame


def _pcm(frames: list[av.AudioFrame]) -> bytes:
    """Packed s16 mono frames to bytes (the plane may be padded past the samples)."""
    return b"".join(bytes(f.planes[0])[: f.samples * 2] for f in frames)


class OpusEncoder:
    """16 kHz mono PCM frames in, one Opus packet per 20 ms out.

    ``complexity`` (libopus 0-10) is the main CPU knob of the whole gateway. Measured by
    benchmarks/opus_complexity.py (Asterisk's spoken prompts at WhatsApp's 20 kb/s, process
    time per 20 ms frame, 2-core machine, shared): 0: 44 us, 1: 48, 2: 89, 3: 92, 5: 115,
    7: 132, 10: 146. Quality (log-spectral distance to the input, 0-4 kHz; lower is better):
    0-1: 5.6 dB, 2-3: 5.0, 5: 4.9, 7-10: 4.7. The default, 3, keeps 5's quality within
    0.15 dB at 80 % of its cost; 0-1 halve the cost but are clearly worse. The prompts are
    8 kHz recordings: wideband speech may gain a little more from higher complexities."""

    format = PCM16

    def __init__(self, bitrate: int = 32000, complexity: int = 3):
        ctx = av.CodecContext.create("libopus", "w")
        ctx.sample_rate = RATE
        ctx.layout = "mono"
        ctx.format = "s16"
        ctx.bit_rate = bitrate
        ctx.options = {"application": "voip", "fec": "1", "packet_loss": "5",
                       "frame_duration": "20", "compression_level": str(complexity)}
        ctx.open()
        self._ctx = ctx
        self._pts = 0

    def encode(self, pcm: bytes) -> bytes:
        frame = _frame(pcm, RATE, self._pts)
        self._pts += FRAME_SAMPLES
        packets = self._ctx.encode(frame)
        return bytes(packets[0]) if packets else b""


_silence_packets: dict[tuple[int, int], bytes] = {}


def opus_silence_packet(bitrate: int, complexity: int) -> bytes:
    """The packet our encoder settles on for digital silence, encoded once per process.
    Sending it costs nothing where encoding silence costs 50-80 us a frame (measured by
    benchmarks/opus_complexity.py): most of a call's frames toward WhatsApp are silence."""
    key = (bitrate, complexity)
    if key not in _silence_packets:
        enc = OpusEncoder(bitrate, complexity)
        for _ in range(10):  # past the encoder's start-up and its FEC of the frame before
            packet = enc.encode(SILENCE)
        _silence_packets[key] = packet
    return _silence_packets[key]


class OpusDecoder:
    """Opus packets in, 16 kHz mono PCM out (libopus always decodes at 48 kHz in PyAV)."""

    format = PCM16

    def __init__(self) -> None:
        self._ctx = av.CodecContext.create("libopus", "r")
        self._ctx.sample_rate = OPUS_CLOCK
        self._resampler = av.AudioResampler(format="s16", layout="mono", rate=RATE)

    def decode(self, payload: bytes) -> bytes:
        try:
            frames = self._ctx.decode(av.Packet(payload))
        except av.error.FFmpegError:
            return b""
        out: list[av.AudioFrame] = []
        for f in frames:
            out += self._resampler.resample(f)
        return _pcm(out)


@dataclass(frozen=True)
class AsteriskCodec:
    """A codec of the Asterisk leg: static payload types only, since a UnicastRTP channel has
    no SDP (docs/asterisk-handoff.md)."""

    name: str
    ffmpeg: str
    payload_type: int
    rate: int
    """Sample rate of the PCM the codec carries (G.722: 16 kHz, though its RTP clock is 8 kHz)."""
    rtp_clock: int = 8000

    @property
    def timestamp_step(self) -> int:
        return self.rtp_clock // 50


ASTERISK_CODECS = {
    "g722": AsteriskCodec("g722", "g722", 9, 16000),
    "ulaw": AsteriskCodec("ulaw", "pcm_mulaw", 0, 8000),
    "alaw": AsteriskCodec("alaw", "pcm_alaw", 8, 8000),
}
"""The one registry of the Asterisk leg's codecs, by the name Asterisk gives them (the
``c(<codec>)`` of a UnicastRTP channel): ``asterisk.codec`` is validated against it
(gateway/config.py), the AMI client refuses an Originate with any other
(gateway/asterisk/ami.py), and a call's RTP leg encodes with the entry it names."""


class AsteriskTranscoder:
    """Encodes internal 16 kHz frames for Asterisk and decodes Asterisk's payloads back (also
    the simulated phone's G.711 codec: the same PCMU/PCMA payloads)."""

    format = PCM16

    def __init__(self, codec: AsteriskCodec):
        self.codec = codec
        self._enc = av.CodecContext.create(codec.ffmpeg, "w")
        self._enc.sample_rate = codec.rate
        self._enc.layout = "mono"
        self._enc.format = "s16"
        self._enc.open()
        self._dec = av.CodecContext.create(codec.ffmpeg, "r")
        self._dec.sample_rate = codec.rate
        self._dec.layout = "mono"
        narrow = codec.rate != RATE
        self._down = av.AudioResampler(format="s16", layout="mono", rate=codec.rate) \
            if narrow else None
        self._up = av.AudioResampler(format="s16", layout="mono", rate=RATE) if narrow else None
        self._narrow = bytearray()

    def encode(self, pcm16k: bytes) -> bytes:
        """One 20 ms frame in, one 20 ms payload out (160 bytes for all three codecs)."""
        frame = _frame(pcm16k, RATE)
        if self._down is None:
            return b"".join(bytes(p) for p in self._enc.encode(frame))
        # The resampler holds back a few samples at first: keep whole 20 ms frames toward
        # Asterisk by paying that once, as 2 ms of silence in front of the first frame.
        self._narrow += _pcm(self._down.resample(frame))
        size = self.codec.rate // 50 * 2
        if len(self._narrow) < size:
            self._narrow[:0] = bytes(size - len(self._narrow))
        out = _frame(bytes(self._narrow[:size]), self.codec.rate)
        del self._narrow[:size]
        return b"".join(bytes(p) for p in self._enc.encode(out))

    def decode(self, payload: bytes) -> bytes:
        try:
            frames = self._dec.decode(av.Packet(payload))
        except av.error.FFmpegError:
            return b""
        if self._up:
            frames = [g for f in frames for g in self._up.resample(f)]
        return _pcm(frames)


class G711Passthrough:
    """WhatsApp's PCMU/PCMA payload is Asterisk's ulaw/alaw payload: nothing is decoded or
    encoded, frames stay G.711 bytes from one leg to the other (``media.mode: passthrough``)."""

    def __init__(self, codec: AsteriskCodec):
        self.codec = codec
        self.format = G711_FORMATS[codec.name]

    def encode(self, frame: bytes) -> bytes:
        return frame

    def decode(self, payload: bytes) -> bytes:
        return payload
