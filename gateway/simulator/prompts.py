"""Which Asterisk prompt the simulated phone heard: the received audio matched against the sound
files Asterisk plays, so a transcript says ``heard prompt "vm-enter-num-to-call"``.

No speech model: a prompt played by ``Playback()``/``Background()`` reaches the phone as the
same recording, only band-limited and coded twice (GSM file → G.722 or µ-law toward the
gateway → Opus toward the phone). Its *spectral envelope over time* survives that: per 10 ms
frame, the log energy in 16 bands between 200 and 3600 Hz. Each sound file's envelope, trimmed of
its leading and trailing silence and normalised per band (which also cancels a codec's fixed
colouring), is slid over the heard audio's envelope; the normalised cross-correlation peaks
near 1.0 where that file was played (0.97-0.99 through the whole chain, against at most about
0.89 for the best wrong file, measured on the sample IVR). Matches are taken best first, never
overlapping, so back-to-back prompts (``Background(hello&vm-enter-num-to-call)``,
``SayDigits``) come out one by one.

Steady tones carry no envelope to correlate; they are found by frequency instead (100 ms
windows with one stable spectral peak), and a tone at the frequency and length of Asterisk's
``beep`` file (measured from the file itself when a library is loaded: 700 Hz, 0.42 s in
Asterisk 22's en sounds) is called a beep.

Matching costs 15-20 ms of CPU per second of heard audio against the 558 files of Asterisk's
core English sounds (``benchmarks/prompt_matching.py``; up to 120 ms on a contended 2-core
machine), and decoding those files about 2 s once (up to 14 s contended; then cached on disk,
20 ms to load), so the phone runs both in a thread, never on the event loop.
"""

from __future__ import annotations

import hashlib
import logging
import os
import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from gateway.simulator import audio

log = logging.getLogger(__name__)

RATE = 8000
"""Asterisk's sound files are 8 kHz; heard audio (16 kHz) is brought down to this rate."""
HOP = 80
"""10 ms between envelope frames."""
WIN = 160
"""20 ms per envelope frame."""
BAND_EDGES = np.geomspace(200.0, 3600.0, 17)
"""16 log-spaced bands: the telephone band that G.722, µ-law and Opus all carry."""
ENERGY_FLOOR = 1e4
"""Added to every band energy before the log, so digital silence and codec noise read alike."""
ACTIVE_DBFS = -45.0
"""Frames above this level are a prompt's content (its silent ends are trimmed)."""
MIN_ACTIVE_S = 0.15
"""Files with less sound than this (``silence/1``) cannot be told apart: left out."""
MATCH_THRESHOLD = 0.92
"""Correlation a match needs (right files score 0.97-0.99, the best wrong one about 0.89)."""
MAX_OVERLAP = 0.2
"""Share of a match that may overlap a better one (prompts abut, they do not overlap)."""
SOUND_SUFFIXES = (".gsm", ".wav", ".sln", ".ulaw", ".alaw")
"""What Asterisk's ``Playback`` finds; one file per name is used, in this order of preference."""
BEEP_HZ = 700.0
"""Asterisk's beep.gsm (en): a 700 Hz tone of 0.42 s, measured from the file."""
BEEP_S = 0.42
CACHE_VERSION = 1
"""Bump when the envelope changes: cached envelopes of another version are not read."""
TONE_WINDOW_S = 0.1
TONE_STABLE_HZ = 12.0


@dataclass(frozen=True)
class Heard:
    """One thing recognised in the heard audio, with its time since the call started."""

    kind: str
    """``prompt``, ``beep``, ``tone`` or ``audio`` (sound that matched no prompt)."""
    start: float
    duration: float
    name: str = ""
    """The prompt's name as the dialplan spells it, e.g. ``digits/1`` (prompts only)."""
    score: float = 0.0
    frequency: float | None = None

    def __str__(self) -> str:
        at = f"at +{self.start:.3f}"
        if self.kind == "prompt":
            return (f'heard prompt "{self.name}" {at} ({self.duration:.2f} s, '
                    f"match {self.score:.2f})")
        if self.kind == "beep":
            return f"heard beep {at} ({self.frequency:.0f} Hz, {self.duration:.2f} s)"
        if self.kind == "tone":
            return f"heard tone {self.frequency:.0f} Hz {at} for {self.duration:.2f} s"
        return f"heard sound {at} for {self.duration:.2f} s that matches no Asterisk prompt"


@dataclass(frozen=True)
class _Template:
    name: str
    features: np.ndarray
    """Frames × bands, zero mean per band, unit norm overall."""


def _band_matrix() -> np.ndarray:
    freqs = np.fft.rfftfreq(2 * WIN, 1 / RATE)
    return np.stack([((freqs >= lo) & (freqs < hi)).astype(np.float64)
                     for lo, hi in zip(BAND_EDGES[:-1], BAND_EDGES[1:], strict=True)])


_BANDS = _band_matrix()
_WINDOW = np.hanning(WIN)


def _frames(x: np.ndarray) -> np.ndarray:
    n = max(0, (len(x) - WIN) // HOP + 1)
    if n == 0:
        return np.zeros((0, WIN))
    return np.lib.stride_tricks.sliding_window_view(x, WIN)[::HOP][:n]


def envelope(x: np.ndarray) -> np.ndarray:
    """Log band energies per 10 ms frame of 8 kHz samples: frames × 16."""
    frames = _frames(x.astype(np.float64)) * _WINDOW
    power = np.abs(np.fft.rfft(frames, n=2 * WIN, axis=1)) ** 2
    return np.log10(power @ _BANDS.T + ENERGY_FLOOR)


def frame_dbfs(x: np.ndarray) -> np.ndarray:
    frames = _frames(x.astype(np.float64))
    return 10 * np.log10(np.mean(frames ** 2, axis=1) / audio.FULL_SCALE ** 2 + 1e-12)


def to_8k(pcm16k: bytes) -> np.ndarray:
    """16 kHz PCM (the phone's) as 8 kHz samples: pairs averaged, enough of a low-pass for
    band energies below 3.6 kHz."""
    x = np.frombuffer(pcm16k[:len(pcm16k) - len(pcm16k) % 4], dtype="<i2").astype(np.float64)
    return (x[0::2] + x[1::2]) / 2


def decode_sound(path: Path) -> np.ndarray:
    """An Asterisk sound file as 8 kHz samples (GSM and WAV through PyAV, raw ones by hand)."""
    suffix = path.suffix.lower()
    if suffix == ".sln":
        return np.frombuffer(path.read_bytes(), dtype="<i2").astype(np.float64)
    if suffix in (".ulaw", ".alaw"):
        return _g711(np.frombuffer(path.read_bytes(), dtype=np.uint8), suffix == ".ulaw")
    import av

    with av.open(str(path), format="gsm" if suffix == ".gsm" else None) as container:
        stream = container.streams.audio[0]
        if stream.rate == RATE and stream.channels == 1:
            # bytes() of each frame's plane: far cheaper than to_ndarray on 160-sample frames
            raw = b"".join(bytes(f.planes[0])[:f.samples * 2] for f in container.decode(stream)
                           if f.format.name == "s16")
            if raw:
                return np.frombuffer(raw, dtype=np.int16).astype(np.float64)
            container.seek(0)
        resampler = av.AudioResampler(format="s16", layout="mono", rate=RATE)
        chunks = [out.to_ndarray().reshape(-1) for frame in container.decode(stream)
                  for out in resampler.resample(frame)]
    return np.concatenate(chunks).astype(np.float64) if chunks else np.zeros(0)


def _g711(data: np.ndarray, ulaw: bool) -> np.ndarray:
    if ulaw:
        u = ~data.astype(np.int32) & 0xFF
        t = (((u & 0x0F) << 3) + 0x84) << ((u & 0x70) >> 4)
        return np.where(u & 0x80, 0x84 - t, t - 0x84).astype(np.float64)
    a = data.astype(np.int32) ^ 0x55
    seg = (a & 0x70) >> 4
    t = ((a & 0x0F) << 4) + 8
    t = np.where(seg == 0, t, (t + 0x100) << np.maximum(seg - 1, 0))
    return np.where(a & 0x80, t, -t).astype(np.float64)


def stable_tones(x8k: np.ndarray, t0: float) -> list[tuple[float, float, float]]:
    """(start, duration, Hz) of steady tones at least 0.3 s long in 8 kHz samples (a voiced
    syllable can hold its pitch for 0.2 s)."""
    step = int(TONE_WINDOW_S * RATE)
    runs: list[list[float]] = []  # [start, end, sum of Hz, windows]
    for i in range(0, len(x8k) - step + 1, step):
        pcm = audio.to_pcm(x8k[i:i + step])
        heard = audio.describe(pcm, rate=RATE)
        start = t0 + i / RATE
        if heard.kind == "tone" and heard.frequency2 is None and heard.frequency:
            last = runs[-1] if runs else None
            if last and abs(last[1] - start) < 1e-6 \
                    and abs(last[2] / last[3] - heard.frequency) <= TONE_STABLE_HZ:
                last[1], last[2], last[3] = start + TONE_WINDOW_S, last[2] + heard.frequency, \
                    last[3] + 1
                continue
            runs.append([start, start + TONE_WINDOW_S, heard.frequency, 1])
    return [(a, b - a, hz / n) for a, b, hz, n in runs if n >= 3]


class PromptLibrary:
    """Envelopes of every sound file under ``directory`` (e.g. Asterisk's
    ``/usr/share/asterisk/sounds/en``), loaded once, on first use or by :meth:`load`."""

    def __init__(self, directory: str | Path):
        self.directory = Path(directory)
        self.templates: list[_Template] = []
        self.beep_hz = BEEP_HZ
        self.beep_s = BEEP_S
        self._loaded = False
        self._lock = threading.Lock()

    def load(self) -> PromptLibrary:
        """Decode every sound file (seconds of CPU for Asterisk's 568 core files, so the
        envelopes are cached on disk per set of files); blocking: call it in a thread.
        Idempotent."""
        with self._lock:
            if self._loaded:
                return self
            chosen: dict[str, Path] = {}
            for suffix in SOUND_SUFFIXES:
                for path in sorted(self.directory.rglob(f"*{suffix}")):
                    chosen.setdefault(str(path.relative_to(self.directory))[:-len(suffix)],
                                      path)
            cache = self._cache_path(chosen)
            if not self._read_cache(cache):
                self._decode(chosen)
                self._write_cache(cache)
            self._loaded = True
            log.info("prompt library %s: %d sound files", self.directory, len(self.templates))
        return self

    def _cache_path(self, chosen: dict[str, Path]) -> Path:
        digest = hashlib.sha256(str(self.directory).encode())
        for name, path in sorted(chosen.items()):
            st = path.stat()
            digest.update(f"{name}\0{path.suffix}\0{st.st_size}\0{st.st_mtime_ns}\0".encode())
        base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
        return base / "whatsapp-asterisk-gateway" / f"prompts-{CACHE_VERSION}-" \
            f"{digest.hexdigest()[:16]}.npz"

    def _read_cache(self, cache: Path) -> bool:
        try:
            with np.load(cache) as data:
                names = [str(n) for n in data["names"]]
                bounds = data["bounds"]
                feats = data["features"].astype(np.float64)
                self.beep_hz, self.beep_s = float(data["beep"][0]), float(data["beep"][1])
        except (OSError, KeyError, ValueError):
            return False
        self.templates = [_Template(n, feats[a:b])
                          for n, (a, b) in zip(names, bounds, strict=True)]
        return True

    def _write_cache(self, cache: Path) -> None:
        if not self.templates:
            return
        lengths = np.array([len(t.features) for t in self.templates])
        ends = np.cumsum(lengths)
        try:
            cache.parent.mkdir(parents=True, exist_ok=True)
            tmp = cache.with_name(cache.name + f".{os.getpid()}.tmp.npz")
            np.savez(tmp, names=np.array([t.name for t in self.templates]),
                     bounds=np.stack([ends - lengths, ends], axis=1),
                     features=np.concatenate([t.features for t in self.templates])
                     .astype(np.float32),
                     beep=np.array([self.beep_hz, self.beep_s]))
            tmp.replace(cache)
        except OSError as exc:  # a read-only home only costs the next start some seconds
            log.debug("prompt library: cannot write %s: %s", cache, exc)

    def _decode(self, chosen: dict[str, Path]) -> None:
        for name, path in sorted(chosen.items()):
            try:
                samples = decode_sound(path)
            except Exception as exc:  # a broken file must not stop the others
                log.debug("prompt library: skipping %s: %s", path, exc)
                continue
            if name == "beep":
                self._measure_beep(samples)
            template = _template(name, samples)
            if template is not None:
                self.templates.append(template)

    def _measure_beep(self, samples: np.ndarray) -> None:
        level = frame_dbfs(samples)
        active = np.where(level > ACTIVE_DBFS)[0]
        if active.size:
            body = samples[active[0] * HOP:(active[-1] + 1) * HOP]
            freq = audio.dominant_frequency(audio.to_pcm(body), rate=RATE)
            if freq:
                self.beep_hz, self.beep_s = freq, len(body) / RATE

    def match(self, x8k: np.ndarray, t0: float = 0.0) -> list[Heard]:
        """Prompts heard in 8 kHz samples that start ``t0`` s into the call, in time order."""
        self.load()
        # A prompt right at an edge (the stretch was cut by a hang-up) still fits whole.
        edge = int(0.1 * RATE)
        x8k = np.concatenate([np.zeros(edge), x8k, np.zeros(edge)])
        t0 -= edge / RATE
        feats = envelope(x8k)
        n, bands = feats.shape
        if n == 0:
            return []
        zero = np.zeros((1, bands))
        cum = np.cumsum(np.vstack([zero, feats]), axis=0)
        cum2 = np.cumsum(np.vstack([zero, feats ** 2]), axis=0)
        size = 1 << int(np.ceil(np.log2(2 * n)))
        spectrum = np.fft.rfft(feats, n=size, axis=0)
        candidates: list[tuple[float, int, int, str]] = []
        for t in self.templates:
            length = len(t.features)
            if length > n:
                continue
            corr = np.fft.irfft((spectrum * np.fft.rfft(t.features[::-1], n=size, axis=0))
                                .sum(axis=1), n=size)[length - 1:n]
            k = n - length + 1
            s1, s2 = cum[length:length + k] - cum[:k], cum2[length:length + k] - cum2[:k]
            spread = np.sqrt(np.maximum((s2 - s1 ** 2 / length).sum(axis=1), 1e-9))
            ncc = corr / spread
            for offset in _peaks(ncc, MATCH_THRESHOLD, max(1, length // 2)):
                candidates.append((float(ncc[offset]), int(offset), length, t.name))
        taken: list[tuple[int, int]] = []
        found: list[Heard] = []
        for score, offset, length, name in sorted(candidates, key=lambda c: (-c[0], -c[2])):
            end = offset + length
            overlap = sum(max(0, min(end, b) - max(offset, a)) for a, b in taken)
            if overlap > MAX_OVERLAP * length:
                continue
            taken.append((offset, end))
            found.append(Heard("prompt", t0 + offset * HOP / RATE, length * HOP / RATE, name,
                               score))
        return sorted(found, key=lambda h: h.start)


def _peaks(curve: np.ndarray, threshold: float, spacing: int) -> list[int]:
    """Offsets of the local maxima above ``threshold``, at least ``spacing`` apart."""
    above = np.where(curve >= threshold)[0]
    peaks: list[int] = []
    for i in above[np.argsort(-curve[above])]:
        if all(abs(int(i) - p) >= spacing for p in peaks):
            peaks.append(int(i))
    return peaks


def _template(name: str, samples: np.ndarray) -> _Template | None:
    level = frame_dbfs(samples)
    active = np.where(level > ACTIVE_DBFS)[0]
    if active.size < MIN_ACTIVE_S * RATE / HOP:
        return None
    feats = envelope(samples)[active[0]:active[-1] + 1]
    feats = feats - feats.mean(axis=0)
    norm = float(np.sqrt((feats ** 2).sum()))
    if norm == 0:
        return None
    return _Template(name, feats / norm)


def recognise(pcm16k: bytes, t0: float, library: PromptLibrary | None) -> list[Heard]:
    """Everything recognisable in a stretch of heard audio (16 kHz PCM starting ``t0`` s into
    the call): prompts (with a library), beeps and other steady tones outside them, and
    sound that matched nothing. CPU-bound: run it in a thread."""
    x = to_8k(pcm16k)
    prompts = library.match(x, t0) if library is not None else []
    # The beep file itself may match (a clean one does): it is still a beep, with its tone.
    prompts = [_as_beep(p, x, t0) if p.name == "beep" else p for p in prompts]
    beep_hz = library.beep_hz if library is not None else BEEP_HZ
    beep_s = library.beep_s if library is not None else BEEP_S
    out = list(prompts)
    spans = [(p.start, p.start + p.duration) for p in prompts]

    def inside(a: float, b: float) -> bool:
        return any(min(b, e) - max(a, s) > 0.5 * (b - a) for s, e in spans)

    tones = [(s, d, hz) for s, d, hz in stable_tones(x, t0) if not inside(s, s + d)]
    for start, duration, hz in tones:
        if abs(hz - beep_hz) <= 15 and 0.6 * beep_s <= duration <= 1.6 * beep_s:
            out.append(Heard("beep", start, duration, "beep", frequency=hz))
        else:
            out.append(Heard("tone", start, duration, frequency=hz))
    spans += [(s, s + d) for s, d, _ in tones]
    # Sound left unexplained: report stretches of 0.3 s or more that matched nothing.
    level = frame_dbfs(x)
    loud = level > ACTIVE_DBFS
    i = 0
    while i < len(loud):
        if not loud[i]:
            i += 1
            continue
        j = i
        while j < len(loud) and (loud[j] or (j + 5 < len(loud) and loud[j:j + 5].any())):
            j += 1
        a, b = t0 + i * HOP / RATE, t0 + j * HOP / RATE
        covered = sum(max(0.0, min(b, e) - max(a, s)) for s, e in spans)
        if b - a >= 0.3 and covered < 0.5 * (b - a):
            out.append(Heard("audio", a, b - a))
        i = j
    return sorted(out, key=lambda h: h.start)


def _as_beep(match: Heard, x8k: np.ndarray, t0: float) -> Heard:
    a = max(0, int((match.start - t0) * RATE))
    b = int((match.start - t0 + match.duration) * RATE)
    freq = audio.dominant_frequency(audio.to_pcm(x8k[a:b]), rate=RATE)
    return Heard("beep", match.start, match.duration, "beep", match.score, freq or BEEP_HZ)


_LIBRARIES: dict[Path, PromptLibrary] = {}


def library_for(directory: str | Path) -> PromptLibrary:
    """One library per directory in this process (it is read-only once loaded)."""
    path = Path(directory).resolve()
    if path not in _LIBRARIES:
        _LIBRARIES[path] = PromptLibrary(path)
    return _LIBRARIES[path]


def same_heard(a: Heard, b: Heard) -> bool:
    """The same thing heard twice (found again in the next stretch's look-back)."""
    return a.kind == b.kind and a.name == b.name and abs(a.start - b.start) < 0.15
