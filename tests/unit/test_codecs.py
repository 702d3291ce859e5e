import numpy as np
import pytest

from gateway.asterisk.ami import AmiClient
from gateway.config import AmiSettings, ConfigError, Secret, parse_config
from gateway.media.codecs import (
    ASTERISK_CODECS,
    FRAME_BYTES,
    AsteriskTranscoder,
    OpusDecoder,
    OpusEncoder,
    trim_backlog,
)
from tests.unit.test_config import ENV, GOOD


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



async def test_one_registry_decides_the_codec_everywhere(monkeypatch):
    """asterisk.codec in the YAML and the AMI client's Originate accept exactly the codecs of
    ASTERISK_CODECS: a codec added there is accepted by both, one removed by neither."""

    def config_with(codec: str):
        return parse_config({**GOOD, "asterisk": {**GOOD["asterisk"], "codec": codec}}, env=ENV)

    for name in ASTERISK_CODECS:
        assert config_with(name.upper()).asterisk.codec == name
    with pytest.raises(ConfigError, match="asterisk.codec: must be one of g722, ulaw, alaw"):
        config_with("opus")

    monkeypatch.setitem(ASTERISK_CODECS, "slin16", ASTERISK_CODECS["g722"])
    assert config_with("slin16").asterisk.codec == "slin16"
    monkeypatch.delitem(ASTERISK_CODECS, "ulaw")
    with pytest.raises(ConfigError, match="must be one of g722, alaw, slin16, got 'ulaw'"):
        config_with("ulaw")

    ami = AmiClient(AmiSettings(host="127.0.0.1", port=1, username="u", secret=Secret("s")))
    with pytest.raises(ValueError, match="codec must be one of g722, alaw, slin16, got 'ulaw'"):
        await ami.originate_unicast(channel_id="wa-1", rtp_host="127.0.0.1", rtp_port=40000,
                                    codec="ulaw", caller_id="", variables={}, context="c",
                                    exten="s")
