"""Prompt, beep and tone recognition (gateway/simulator/prompts.py) on synthetic sound files:
a library directory written here, "played" back to back through a level change and noise."""

from __future__ import annotations

import numpy as np
import pytest

from gateway.simulator import audio
from gateway.simulator.prompts import PromptLibrary, recognise


def word(seed: int, seconds: float) -> np.ndarray:
    """A speech-like 8 kHz sound: noise through a few formant-ish resonances that move, with a
    syllable envelope; each seed sounds different."""
    rng = np.random.default_rng(seed)
    n = int(seconds * 8000)
    t = np.arange(n) / 8000
    out = np.zeros(n)
    for _ in range(3):
        f0, f1 = rng.uniform(300, 3000, 2)
        freq = np.linspace(f0, f1, n)
        out += np.sin(2 * np.pi * np.cumsum(freq) / 8000) * rng.uniform(0.3, 1)
    out += rng.normal(0, 0.3, n)
    syllables = np.abs(np.sin(np.pi * t * rng.uniform(3, 6))) ** 0.5
    return out * syllables * 6000


def pad(x: np.ndarray, before: float = 0.2, after: float = 0.2) -> np.ndarray:
    return np.concatenate([np.zeros(int(before * 8000)), x, np.zeros(int(after * 8000))])


@pytest.fixture
def library(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    sounds = tmp_path / "sounds"
    (sounds / "digits").mkdir(parents=True)
    files = {"hello": word(1, 0.6), "vm-enter-num-to-call": word(2, 1.8),
             "digits/1": word(3, 0.5), "digits/2": word(4, 0.5), "goodbye": word(5, 0.9)}
    for name, x in files.items():
        (sounds / f"{name}.sln").write_bytes(pad(x).astype("<i2").tobytes())
    beep = np.sin(2 * np.pi * 700 * np.arange(int(0.42 * 8000)) / 8000) * 8000
    (sounds / "beep.sln").write_bytes(pad(beep).astype("<i2").tobytes())
    (sounds / "silence").mkdir()
    (sounds / "silence" / "1.sln").write_bytes(bytes(16000))
    return PromptLibrary(sounds), files


def heard_16k(*parts: np.ndarray, gain: float = 0.7, noise_dbfs: float = -60) -> bytes:
    """What a phone would hear: the parts back to back, quieter, at 16 kHz, over a noise floor."""
    x8 = np.concatenate(parts) * gain
    x16 = np.repeat(x8, 2)
    rng = np.random.default_rng(99)
    x16 = x16 + rng.normal(0, audio.FULL_SCALE * 10 ** (noise_dbfs / 20), x16.size)
    return audio.to_pcm(x16)


def test_back_to_back_prompts_are_named_in_order_with_their_times(library):
    lib, files = library
    pcm = heard_16k(np.zeros(4000), files["hello"], files["vm-enter-num-to-call"],
                    np.zeros(2000), files["digits/2"], files["digits/1"])
    found = [h for h in recognise(pcm, 10.0, lib) if h.kind == "prompt"]
    assert [h.name for h in found] == ["hello", "vm-enter-num-to-call", "digits/2", "digits/1"]
    assert found[0].start == pytest.approx(10.5, abs=0.05)
    assert found[1].start == pytest.approx(10.5 + 0.6, abs=0.05)
    assert all(h.score > 0.93 for h in found), found
    assert str(found[0]).startswith('heard prompt "hello" at +10.')
    assert "silence/1" not in {t.name for t in lib.templates}  # nothing to match in it


def test_sound_that_is_no_prompt_is_reported_as_such(library):
    lib, _ = library
    (other,) = recognise(heard_16k(word(42, 1.0)), 0.0, lib)
    assert other.kind == "audio" and other.duration == pytest.approx(1.0, abs=0.15)
    assert "matches no Asterisk prompt" in str(other)


def test_the_beep_is_measured_from_the_file_and_recognised(library):
    lib, _ = library
    lib.load()
    assert lib.beep_hz == pytest.approx(700, abs=2) and lib.beep_s == pytest.approx(0.42, abs=0.03)
    beep = audio.tone(700, 0.42, -20)
    found = recognise(audio.silence(0.3) + beep + audio.silence(0.3), 1.0, lib)
    (b,) = [h for h in found if h.kind != "audio"]
    assert b.kind == "beep" and b.frequency == pytest.approx(700, abs=5)
    assert b.start == pytest.approx(1.3, abs=0.11)
    assert str(b).startswith("heard beep at +1.")


def test_tones_without_a_library_keep_their_frequency():
    found = recognise(audio.tone(425, 1.0, -20) + audio.silence(0.5) + audio.tone(700, 0.4),
                      0.0, None)
    kinds = [(h.kind, round(h.frequency or 0, -1)) for h in found if h.kind != "audio"]
    assert kinds == [("tone", 430.0), ("beep", 700.0)] or kinds == [("tone", 420.0),
                                                                     ("beep", 700.0)]
    assert str(found[0]).startswith("heard tone 42") and "for 1.00 s" in str(found[0])


def test_the_library_is_cached_on_disk(library):
    lib, _ = library
    lib.load()
    again = PromptLibrary(lib.directory).load()
    assert [t.name for t in again.templates] == [t.name for t in lib.templates]
    assert again.beep_hz == pytest.approx(lib.beep_hz)


def test_a_gliding_pitch_is_no_tone_but_a_steady_one_is():
    t = np.arange(8000) / 16000  # 0.5 s
    glide = audio.to_pcm(8000 * np.sin(2 * np.pi * np.cumsum(np.linspace(300, 380, t.size))
                                     / 16000))
    assert audio.describe(glide).kind == "audio"  # like a voiced "hello": most energy near
    steady = audio.tone(354, 0.5)                 # one pitch, but the pitch moves
    assert audio.describe(steady).kind == "tone"
    fading = audio.tone(1000, 0.35) + audio.silence(0.15)
    heard = audio.describe(fading)
    assert heard.kind == "tone" and heard.frequency == pytest.approx(1000, abs=5)
