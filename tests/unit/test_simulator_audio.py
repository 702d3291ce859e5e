"""The simulator's audio helpers: generated tones measure as what they are."""

import math

import pytest

from gateway.simulator import audio


def test_tone_level_and_length():
    pcm = audio.tone(440, 0.5, dbfs=-18)
    assert len(pcm) == 16000  # 0.5 s of 16 kHz s16
    assert audio.rms_dbfs(pcm) == pytest.approx(-18, abs=0.1)
    assert audio.rms_dbfs(audio.tone(1000, 0.2, dbfs=-6)) == pytest.approx(-6, abs=0.1)


def test_silence_is_at_the_floor():
    assert audio.rms_dbfs(audio.silence(0.1)) == audio.FLOOR_DBFS
    assert audio.rms_dbfs(b"") == audio.FLOOR_DBFS
    assert audio.dominant_frequency(audio.silence(0.1)) is None


@pytest.mark.parametrize("freq", [300, 440, 1000, 1633, 3400])
def test_dominant_frequency_is_accurate(freq):
    assert audio.dominant_frequency(audio.tone(freq, 0.25)) == pytest.approx(freq, abs=2)
    # Even over one 20 ms frame, interpolation keeps it within a few Hz.
    assert audio.dominant_frequency(audio.tone(freq, 0.02)) == pytest.approx(freq, abs=10)


def test_levels_per_window():
    pcm = audio.silence(0.04) + audio.tone(440, 0.04, dbfs=-20)
    lv = audio.levels(pcm, 0.02)
    assert len(lv) == 4
    assert lv[:2] == [audio.FLOOR_DBFS] * 2
    assert all(math.isclose(v, -20, abs_tol=0.5) for v in lv[2:])


def test_segments_with_energy_finds_when_audio_was_heard():
    pcm = (audio.silence(1) + audio.tone(1000, 0.5) + audio.silence(0.06)
           + audio.tone(1000, 0.3) + audio.silence(1) + audio.noise(0.2, -30))
    assert audio.segments_with_energy(pcm) == [(1.0, 1.86), (2.86, 3.06)]
    assert audio.segments_with_energy(pcm, min_gap_s=0.02) == [
        (1.0, 1.5), (1.56, 1.86), (2.86, 3.06)]
    assert audio.segments_with_energy(audio.silence(1)) == []
    assert audio.segments_with_energy(audio.tone(440, 0.2, dbfs=-60)) == []


def test_describe_tells_tone_from_speech_and_silence():
    assert str(audio.describe(audio.silence(0.5))) == "silence"
    assert audio.describe(audio.tone(440, 0.5, dbfs=-60)).kind == "silence"
    tone = audio.describe(audio.tone(440, 0.5))
    assert tone.kind == "tone" and str(tone) == "tone 440 Hz at -18 dBFS"
    ringback = audio.describe(audio.dual_tone(440, 480, 0.5))
    assert (ringback.kind, round(ringback.frequency), round(ringback.frequency2)) == (
        "tone", 440, 480)
    assert str(ringback) == "tones 440+480 Hz at -18 dBFS"
    speech = audio.describe(audio.noise(0.5, -30))
    assert speech.kind == "audio" and str(speech) == "speech-like audio at -30 dBFS"


def test_heard_keys_coalesce_close_frequencies():
    a = audio.describe(audio.tone(440, 0.5))
    b = audio.describe(audio.tone(441, 0.5, dbfs=-25))
    c = audio.describe(audio.tone(480, 0.5))
    assert a.key == b.key != c.key
