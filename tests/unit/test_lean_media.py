"""Per-frame work the send path saves: the cached Opus silence packet, one 20 ms clock per call,
no time-base arithmetic in aiortc's ``pack()``."""

from __future__ import annotations

import fractions

import numpy as np

from gateway.media.codecs import (
    ASTERISK_CODECS,
    FRAME_BYTES,
    G711Passthrough,
    opus_silence_packet,
)
from gateway.media.webrtc import OutgoingAudio


class CountingEncoder:
    def __init__(self, inner):
        self.inner, self.format, self.frames = inner, inner.format, []

    def encode(self, frame: bytes) -> bytes:
        self.frames.append(frame)
        return self.inner.encode(frame)


def tone(frames: int) -> bytes:
    t = np.arange(320 * frames) / 16000
    return (np.sin(2 * np.pi * 500 * t) * 8000).astype(np.int16).tobytes()


async def test_digital_silence_is_sent_as_the_cached_packet_without_encoding():
    out = OutgoingAudio(20000, 3)
    enc = out._encoder = CountingEncoder(out._encoder)
    cached = opus_silence_packet(20000, 3)
    idle = [bytes(await out.recv()) for _ in range(3)]  # nothing queued
    g722_idle = np.full(320, 32, np.int16).tobytes()  # what G.722's idle code decodes to
    out.queue_pcm(g722_idle)
    idle.append(bytes(await out.recv()))
    assert idle == [cached] * 4 and enc.frames == []
    out.queue_pcm(tone(2))
    sound = [bytes(await out.recv()) for _ in range(2)]
    assert cached not in sound
    # sound after silence: one silent frame primes the encoder (FEC), then the two frames
    assert enc.frames == [bytes(FRAME_BYTES), *(tone(2)[i:i + FRAME_BYTES]
                                                for i in (0, FRAME_BYTES))]


async def test_the_sender_clock_ticks_the_other_leg_once_a_frame():
    out = OutgoingAudio(20000, 3)
    ticks: list[int] = []
    out.on_tick = lambda: ticks.append(out.frames_sent)
    for _ in range(3):
        await out.recv()
    assert ticks == [0, 1, 2]

    def broken() -> None:
        raise RuntimeError("boom")

    out.on_tick = broken
    await out.recv()  # a failing tick never stops the WhatsApp sender
    assert out.frames_sent == 4


async def test_g711_packets_carry_the_codecs_own_clock():
    out = OutgoingAudio(20000, 3)
    out.use_encoder(G711Passthrough(ASTERISK_CODECS["ulaw"]), 8000)
    first, second = await out.recv(), await out.recv()
    assert first.time_base == second.time_base == fractions.Fraction(1, 8000)
    assert second.pts - first.pts == 160 and bytes(first) == b"\xff" * 160
