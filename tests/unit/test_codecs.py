import numpy as np
import pytest

from gateway.media.codecs import (
    ASTERISK_CODECS,
    FRAME_BYTES,
    AsteriskTranscoder,
    OpusDecoder,
    OpusEncoder,
    trim_backlog,
)


def tone(hz: float, frames: int, amplitude: int = 8000) -> bytes:
    t = np.arange(320 * frames) / 16000
    return (np.sin(2 * np.pi * hz * t) * amplitude).astype(np.int16).tobytes()


def peak_hz(pcm: bytes, rate: int = 16000) -> float:
    samples = np.frombuffer(pcm, dtype=np.int16).astype(float)
    return float(np.argmax(np.abs(np.fft.rfft(samples))) * rate / len(samples))


@pytest.mark.parametrize("name", sorted(ASTERISK_CODECS))
def test_asterisk_codecs_round_trip_a_tone(name):
    codec = ASTERISK_CODECS[name]
    tx, rx = AsteriskTranscoder(codec), AsteriskTranscoder(codec)
    out = b""
    for i in range(25):
        payload = tx.encode(tone(700, 25)[i * FRAME_BYTES:(i + 1) * FRAME_BYTES])
        assert len(payload) == 160  # 20 ms of G.722 or G.711
        out += rx.decode(payload)
    assert abs(peak_hz(out[len(out) // 2:]) - 700) < 20


def test_opus_round_trip_a_tone():
    enc, dec = OpusEncoder(), OpusDecoder()
    pcm = tone(1000, 50)
    out = b"".join(dec.decode(enc.encode(pcm[i:i + FRAME_BYTES]))
                   for i in range(0, len(pcm), FRAME_BYTES))
    assert abs(len(out) - len(pcm)) < FRAME_BYTES  # 16 kHz back (less the resampler's delay)
    assert abs(peak_hz(out[len(out) // 2:]) - 1000) < 20


def test_backlog_trimmed_by_quiet_frames_only():
    speech, quiet = tone(300, 1), bytes(FRAME_BYTES)
    queue = bytearray(quiet * 3 + speech + quiet * 4)
    trim_backlog(queue)  # 8 frames: the 3 quiet ones in front go, speech stops the trim
    assert bytes(queue[:FRAME_BYTES]) == speech and len(queue) == 5 * FRAME_BYTES
    queue = bytearray(speech * 8)
    trim_backlog(queue)
    assert len(queue) == 8 * FRAME_BYTES  # never cut speech
    queue = bytearray(quiet * 3)
    trim_backlog(queue)
    assert len(queue) == 3 * FRAME_BYTES  # a small queue is left alone
