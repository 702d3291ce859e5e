"""libopus complexity: CPU per 20 ms frame against quality, on real speech.

The speech is Asterisk's own prompts (the sandbox's sound files, 8 kHz GSM, played at 16 kHz as
the gateway would carry them). Each complexity encodes it at WhatsApp's 20 kb/s
(``maxaveragebitrate``) with the gateway's encoder, the gateway's decoder decodes it back, and
the result is compared with the input: segmental SNR and log-spectral distance (lower is
better). CPU is process time per frame, best of ``--repeat`` runs (the machine is shared).
Digital silence is timed too: what the cached silence packet saves.

    .venv/bin/python benchmarks/opus_complexity.py
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import av
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from gateway.media.codecs import FRAME_BYTES, RATE, SILENCE, OpusDecoder, OpusEncoder  # noqa: E402

SOUNDS = Path.home() / ".cache/whatsapp-asterisk-gateway/asterisk-sid/usr/share/asterisk/sounds"
PROMPTS = ("vm-intro", "vm-enter-num-to-call", "vm-goodbye", "conf-onlyperson",
           "agent-loginok", "vm-password", "vm-savedto", "queue-thankyou")


def speech(directory: Path) -> bytes:
    pcm = bytearray()
    resampler = av.AudioResampler(format="s16", layout="mono", rate=RATE)
    for name in PROMPTS:
        found = sorted(directory.rglob(f"{name}.gsm")) + sorted(directory.rglob(f"{name}.wav"))
        if not found:
            continue
        with av.open(str(found[0])) as container:
            for frame in container.decode(audio=0):
                for out in resampler.resample(frame):
                    pcm += bytes(out.planes[0])[: out.samples * 2]
    return bytes(pcm[: len(pcm) // FRAME_BYTES * FRAME_BYTES])


def frames(pcm: bytes) -> list[bytes]:
    return [pcm[i:i + FRAME_BYTES] for i in range(0, len(pcm), FRAME_BYTES)]


def quality(ref: bytes, out: bytes) -> tuple[float, float]:
    """(segmental SNR dB, log-spectral distance dB) after aligning the codec's delay."""
    a = np.frombuffer(ref, np.int16).astype(float)
    b = np.frombuffer(out, np.int16).astype(float)
    n = min(len(a), len(b))
    lags = range(0, 800)
    lag = max(lags, key=lambda k: float(np.dot(a[: n - 800], b[k: k + n - 800])))
    b = b[lag: lag + n - 800]
    a = a[: len(b)]
    snrs, lsds = [], []
    for i in range(0, len(a) - 320, 320):
        x, y = a[i:i + 320], b[i:i + 320]
        if np.sqrt(np.mean(x ** 2)) < 100:
            continue  # pauses say nothing about the codec
        snrs.append(10 * np.log10(np.sum(x ** 2) / max(np.sum((x - y) ** 2), 1e-9)))
        # 0-4 kHz only: the prompts are 8 kHz recordings, nothing lives above
        sx = np.abs(np.fft.rfft(x * np.hanning(320)))[:81] + 1.0
        sy = np.abs(np.fft.rfft(y * np.hanning(320)))[:81] + 1.0
        lsds.append(np.sqrt(np.mean((20 * np.log10(sx / sy)) ** 2)))
    return float(np.mean(np.clip(snrs, -10, 35))), float(np.mean(lsds))


def cost_us(complexity: int, bitrate: int, pcm: list[bytes], repeat: int) -> float:
    best = float("inf")
    for _ in range(repeat):
        enc = OpusEncoder(bitrate, complexity)
        t0 = time.process_time()
        for f in pcm:
            enc.encode(f)
        best = min(best, (time.process_time() - t0) / len(pcm))
    return best * 1e6


def main(bitrate: int, repeat: int) -> None:
    pcm = speech(SOUNDS)
    if not pcm:
        raise SystemExit(f"no prompts under {SOUNDS}: run scripts/setup.sh --test first")
    speech_frames = frames(pcm)
    print(f"{len(speech_frames) * 20 / 1000:.1f} s of speech, {bitrate} b/s")
    print("complexity  us/frame speech  us/frame silence  seg.SNR dB  LSD dB")
    for c in (0, 1, 2, 3, 5, 7, 10):
        enc, dec = OpusEncoder(bitrate, c), OpusDecoder()
        out = b"".join(dec.decode(enc.encode(f)) for f in speech_frames)
        snr, lsd = quality(pcm, out)
        silence = cost_us(c, bitrate, [SILENCE] * 500, repeat)
        print(f"{c:>10}  {cost_us(c, bitrate, speech_frames, repeat):>15.0f}  {silence:>16.0f}"
              f"  {snr:>10.2f}  {lsd:>6.2f}")
    cached = OpusEncoder(bitrate, 5).encode(SILENCE)
    t0 = time.process_time()
    for _ in range(10000):
        bytes(cached)
    print(f"cached silence packet: {(time.process_time() - t0) / 10000 * 1e6:.2f} us/frame")


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--bitrate", type=int, default=20000)
    p.add_argument("--repeat", type=int, default=3)
    a = p.parse_args()
    main(a.bitrate, a.repeat)
