"""Audio held until Meta's accept returns is played whole afterwards, then live audio behind it;
the extra latency is worked off only in quiet frames."""

from __future__ import annotations

import numpy as np
import pytest

from gateway.media.codecs import FRAME_SAMPLES, QUIET_PEAK
from gateway.media.webrtc import OutgoingAudio


def frame(n: int, level: int | None = None) -> bytes:
    """A 20 ms frame tagged with ``n`` (loud unless ``level`` says otherwise)."""
    return np.full(FRAME_SAMPLES, QUIET_PEAK + n if level is None else level, "<i2").tobytes()


def tag(pcm: bytes) -> int:
    return int(np.frombuffer(pcm, "<i2")[0]) - QUIET_PEAK


@pytest.mark.parametrize("held_frames", [15, 35, 75, 500])  # 0.3, 0.7, 1.5 and 10 s
def test_held_speech_is_played_whole_then_live_audio(held_frames):
    out = OutgoingAudio(32000)
    out.gate_open = False
    for n in range(held_frames):
        out.queue_pcm(frame(n))
    out.gate_open = True
    played = []
    for n in range(held_frames, held_frames + 200):  # live audio keeps arriving at 20 ms
        out.queue_pcm(frame(n))
        played.append(tag(out._next_pcm()))
    assert played == list(range(200))  # nothing dropped, nothing reordered


def test_the_backlog_is_worked_off_in_quiet_frames():
    out = OutgoingAudio(32000)
    out.gate_open = False
    for n in range(50):
        out.queue_pcm(frame(n))
    out.gate_open = True
    sent = []
    for n in range(50, 300):  # then the far side goes quiet: the 1 s of latency goes away
        out.queue_pcm(frame(n, level=0) if 60 <= n < 150 else frame(n))
        sent.append(out._next_pcm())
    loud = [tag(p) for p in sent if np.abs(np.frombuffer(p, "<i2")).max() >= QUIET_PEAK]
    assert loud == [*range(60), *range(150, 150 + len(loud) - 60)]
    assert len(out._pcm) <= 4 * len(frame(0))  # the latency is gone
