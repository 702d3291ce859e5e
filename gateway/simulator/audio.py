"""Test audio for the simulated phone: tones to send, and what was heard, in plain words.

Everything works on the gateway's internal format (gateway/media/codecs.py): 16 kHz mono signed
16-bit little-endian PCM, so a 20 ms frame is 640 bytes. Pure functions over ``bytes``; numpy does
the arithmetic. No DTMF here on purpose: the phone presses keys with RFC 4733 events, the way the
WhatsApp client does (docs/meta-calling.md §9), never with in-band tones.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

RATE = 16000
FULL_SCALE = 32768.0
FLOOR_DBFS = -120.0
"""Level reported for digital silence (log of zero)."""
SILENCE_DBFS = -50.0
"""Below this a window counts as silence: Opus-decoded digital silence sits far below it, a
quiet room on a phone around -60..-50 dBFS, announcements and speech well above -40 dBFS."""
TONAL_RATIO = 0.6
"""Share of a window's energy within a few Hz of its peak for it to be called a tone; speech and
music spread their energy over many harmonics and stay well below this."""


def _samples(pcm: bytes) -> np.ndarray:
    usable = len(pcm) - len(pcm) % 2
    return np.frombuffer(pcm[:usable], dtype="<i2").astype(np.float64)


def to_pcm(samples: np.ndarray) -> bytes:
    """Samples (any float scale of 16-bit) as clipped 16-bit little-endian PCM."""
    return np.clip(np.round(samples), -32768, 32767).astype("<i2").tobytes()


_pcm = to_pcm


def dbfs_to_amplitude(dbfs: float) -> float:
    """Peak amplitude of a sine whose RMS level is ``dbfs`` (0 dBFS = full-scale square wave)."""
    return FULL_SCALE * math.sqrt(2) * 10 ** (dbfs / 20)


def tone(freq: float, seconds: float, dbfs: float = -18.0, rate: int = RATE,
         phase: float = 0.0) -> bytes:
    """A sine tone at ``dbfs`` RMS, as 16-bit mono PCM."""
    n = int(round(seconds * rate))
    t = np.arange(n) / rate
    return _pcm(dbfs_to_amplitude(dbfs) * np.sin(2 * math.pi * freq * t + phase))


def dual_tone(f1: float, f2: float, seconds: float, dbfs: float = -18.0,
              rate: int = RATE) -> bytes:
    """Two sines of equal level whose sum has RMS ``dbfs`` (a ringback-like sound)."""
    n = int(round(seconds * rate))
    t = np.arange(n) / rate
    amp = dbfs_to_amplitude(dbfs) / math.sqrt(2)
    return _pcm(amp * (np.sin(2 * math.pi * f1 * t) + np.sin(2 * math.pi * f2 * t)))


def silence(seconds: float, rate: int = RATE) -> bytes:
    return bytes(2 * int(round(seconds * rate)))


def noise(seconds: float, dbfs: float = -40.0, rate: int = RATE, seed: int = 0) -> bytes:
    """White noise at ``dbfs`` RMS: stands in for speech-like, non-tonal audio."""
    rng = np.random.default_rng(seed)
    n = int(round(seconds * rate))
    return _pcm(rng.normal(0.0, FULL_SCALE * 10 ** (dbfs / 20), n))


def rms_dbfs(pcm: bytes) -> float:
    """RMS level in dBFS (0 dBFS = full-scale square wave; a full-scale sine is -3 dBFS)."""
    x = _samples(pcm)
    if x.size == 0:
        return FLOOR_DBFS
    rms = math.sqrt(float(np.mean(x * x)))
    if rms <= 0:
        return FLOOR_DBFS
    return max(FLOOR_DBFS, 20 * math.log10(rms / FULL_SCALE))


def levels(pcm: bytes, window_s: float = 0.02, rate: int = RATE) -> list[float]:
    """RMS level in dBFS of each consecutive window (the last, partial window included)."""
    step = max(1, int(round(window_s * rate))) * 2
    return [rms_dbfs(pcm[i:i + step]) for i in range(0, len(pcm), step)]


def _spectrum(pcm: bytes, rate: int) -> tuple[np.ndarray, np.ndarray] | None:
    x = _samples(pcm)
    if x.size < 32:
        return None
    x = (x - x.mean()) * np.hanning(x.size)
    power = np.abs(np.fft.rfft(x)) ** 2
    freqs = np.fft.rfftfreq(x.size, 1 / rate)
    return freqs, power


def dominant_frequency(pcm: bytes, rate: int = RATE) -> float | None:
    """Frequency in Hz of the strongest spectral peak, refined by parabolic interpolation;
    None for silence or a window too short to tell."""
    spec = _spectrum(pcm, rate)
    if spec is None or rms_dbfs(pcm) <= FLOOR_DBFS:
        return None
    freqs, power = spec
    power = power.copy()
    power[0] = 0.0
    k = int(np.argmax(power))
    if power[k] <= 0:
        return None
    if 0 < k < power.size - 1:
        a, b, c = np.log(power[k - 1:k + 2] + 1e-12)
        denom = a - 2 * b + c
        offset = 0.5 * (a - c) / denom if denom != 0 else 0.0
    else:
        offset = 0.0
    return float((k + offset) * (freqs[1] - freqs[0]))


def _peak_shares(pcm: bytes, rate: int, bandwidth_hz: float,
                 count: int) -> list[tuple[float, float]]:
    """The ``count`` strongest peaks as (frequency, share of the window's energy near it)."""
    spec = _spectrum(pcm, rate)
    if spec is None:
        return []
    freqs, power = spec
    power = power.copy()
    power[0] = 0.0
    total = float(power.sum())
    if total <= 0:
        return []
    # A Hann window spreads a pure tone over about three bins: never look narrower than that.
    bw = max(bandwidth_hz, 3 * float(freqs[1] - freqs[0]))
    out = []
    for _ in range(count):
        peak = freqs[int(np.argmax(power))]
        near = np.abs(freqs - peak) <= bw
        out.append((float(peak), float(power[near].sum()) / total))
        power[near] = 0.0
    return out


def tonality(pcm: bytes, rate: int = RATE, bandwidth_hz: float = 25.0) -> float:
    """Share (0..1) of the window's energy within ``bandwidth_hz`` of its strongest peak."""
    peaks = _peak_shares(pcm, rate, bandwidth_hz, 1)
    return peaks[0][1] if peaks else 0.0


def segments_with_energy(pcm: bytes, threshold_dbfs: float = SILENCE_DBFS,
                         window_s: float = 0.02, min_gap_s: float = 0.1,
                         rate: int = RATE) -> list[tuple[float, float]]:
    """When audio was heard: (start_s, end_s) spans whose 20 ms windows are above the threshold,
    merging spans separated by less than ``min_gap_s`` of quiet."""
    spans: list[tuple[float, float]] = []
    for i, level in enumerate(levels(pcm, window_s, rate)):
        if level < threshold_dbfs:
            continue
        start = i * window_s
        end = min((i + 1) * window_s, len(pcm) / 2 / rate)
        if spans and start - spans[-1][1] < min_gap_s - 1e-9:
            spans[-1] = (spans[-1][0], end)
        else:
            spans.append((start, end))
    return [(round(a, 3), round(b, 3)) for a, b in spans]


@dataclass(frozen=True)
class Heard:
    """What a stretch of audio sounds like: ``silence``, ``tone`` or ``audio`` (non-tonal,
    speech-like), with its level and, for tones, the frequency."""

    kind: str
    dbfs: float
    frequency: float | None = None
    frequency2: float | None = None
    """Second frequency of a two-tone sound (ringback, busy tone), else None."""

    @property
    def key(self) -> tuple[str, int | None, int | None]:
        """Equal for two windows a listener would describe the same way (tones within ~10 Hz)."""
        def bucket(f: float | None) -> int | None:
            return None if f is None else int(round(f / 10))
        return self.kind, bucket(self.frequency), bucket(self.frequency2)

    def __str__(self) -> str:
        if self.kind == "silence":
            return "silence"
        if self.kind == "tone":
            if self.frequency2 is not None:
                return (f"tones {self.frequency:.0f}+{self.frequency2:.0f} Hz "
                        f"at {self.dbfs:.0f} dBFS")
            return f"tone {self.frequency:.0f} Hz at {self.dbfs:.0f} dBFS"
        return f"speech-like audio at {self.dbfs:.0f} dBFS"


def _steady(pcm: bytes, rate: int, freq: float) -> bool:
    """A tone holds its frequency: each quarter of a window of 0.2 s or more (but those
    10 dB below the loudest, where it starts or ends) peaks within 15 Hz of the whole.
    Voiced speech (a prompt's "hello") can put most of a window's energy near one pitch,
    but its pitch glides."""
    n = len(pcm) // 2
    if n < 0.2 * rate:
        return True
    quarter = n // 4 * 2
    parts = [pcm[i * quarter:(i + 1) * quarter] for i in range(4)]
    loudest = max(rms_dbfs(p) for p in parts)
    for part in parts:
        if rms_dbfs(part) < loudest - 10:
            continue  # the tone had not started yet, or was ending: nothing to compare
        f = dominant_frequency(part, rate)
        if f is None or abs(f - freq) > 15:
            return False
    return True


def describe(pcm: bytes, rate: int = RATE, silence_dbfs: float = SILENCE_DBFS) -> Heard:
    level = rms_dbfs(pcm)
    if level < silence_dbfs:
        return Heard("silence", level)
    peaks = _peak_shares(pcm, rate, 25.0, 2)
    freq = dominant_frequency(pcm, rate)
    if freq is None or not _steady(pcm, rate, freq):
        return Heard("audio", level)
    if peaks and peaks[0][1] >= TONAL_RATIO:
        return Heard("tone", level, freq)
    if len(peaks) == 2 and peaks[1][1] >= 0.2 and peaks[0][1] + peaks[1][1] >= TONAL_RATIO:
        low, high = sorted(f for f, _ in peaks)
        return Heard("tone", level, low, high)
    return Heard("audio", level)


@dataclass
class HeardSegment:
    """A stretch of the call that sounded the same to the phone (times since call start)."""

    start: float
    end: float
    heard: Heard | None
    """None when no packet arrived at all in that stretch."""

    def __str__(self) -> str:
        what = "no media" if self.heard is None else str(self.heard)
        return f"{self.start:.1f}-{self.end:.1f} s {what}"


def timeline(frames: list[tuple[float, bytes]], rate: int = RATE) -> bytes:
    """Frames laid out on the call's clock: gaps without packets become silence."""
    out = bytearray()
    for t, pcm in frames:
        gap = int((t - len(out) / 2 / rate) * rate) * 2
        if gap > 3 * (rate // 50) * 2:  # over 3 frames of 20 ms: a gap, not arrival jitter
            out += bytes(gap)
        out += pcm
    return bytes(out)
