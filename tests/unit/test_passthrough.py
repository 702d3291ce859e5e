"""G.711 passthrough pieces: the offer WhatsApp sends with ``additional_codecs`` on, the answer
the gateway gives, the phone refusing a codec it did not offer, payloads crossing the Asterisk leg
byte for byte, and the ``media.mode`` key."""

from __future__ import annotations

import asyncio
import socket

import numpy as np
import pytest

from gateway.config import ConfigError, parse_config
from gateway.media import aiortc_hooks
from gateway.media.codecs import ASTERISK_CODECS, G711_FORMATS, trim_backlog
from gateway.media.rtp_leg import AsteriskRtpLeg
from gateway.media.webrtc import SdpError, WebRtcLeg, inspect_offer
from gateway.simulator.phone import SimulatedPhone, whatsapp_offer
from tests.unit.test_simulator_phone import AIORTC_OFFER


def test_whatsapps_offer_lists_g711_after_opus_when_the_setting_is_on():
    sdp = whatsapp_offer(AIORTC_OFFER, ("PCMA", "PCMU"))
    lines = sdp.split("\r\n")
    assert "m=audio 58931 UDP/TLS/RTP/SAVPF 111 0 8 126" in lines
    assert lines.index("a=rtpmap:0 PCMU/8000") < lines.index("a=rtpmap:8 PCMA/8000") \
        < lines.index("a=rtpmap:126 telephone-event/8000")
    info = inspect_offer(sdp)
    assert (info.opus_pt, info.g711, info.first) == (111, {"PCMU": 0, "PCMA": 8}, "opus")
    assert "UDP/TLS/RTP/SAVPF 111 126" in whatsapp_offer(AIORTC_OFFER)


def test_codecs_are_found_by_name_and_static_payload_type():
    answer = "v=0\r\nm=audio 9 UDP/TLS/RTP/SAVPF 8 126\r\na=rtpmap:126 telephone-event/8000\r\n"
    info = inspect_offer(answer, require_opus=False)
    assert (info.opus_pt, info.g711, info.first, info.dtmf_pt) == (None, {"PCMA": 8}, "PCMA", 126)
    with pytest.raises(SdpError, match="Opus"):
        inspect_offer(answer)  # an offer from WhatsApp always carries Opus


async def legs(phone_g711: tuple[str, ...], gateway_g711: tuple[str, ...]):
    aiortc_hooks.install()
    phone = SimulatedPhone(name="phone", g711=phone_g711)
    phone.leg.addresses = ("127.0.0.1",)
    gateway = WebRtcLeg(name="gw", addresses=("127.0.0.1",), g711=gateway_g711,
                        passthrough=True)
    return phone, gateway


async def test_gateway_answers_g711_and_the_phone_hears_it_decoded():
    phone, gateway = await legs(("PCMU", "PCMA"), ("PCMA", "PCMU"))
    heard: list[bytes] = []
    gateway.on_audio = heard.append
    try:
        answer = await gateway.answer(await phone.make_offer())
        assert "UDP/TLS/RTP/SAVPF 8 126\r\n" in answer and "opus" not in answer
        assert gateway.audio_codec == "PCMA" and gateway.frame_format is G711_FORMATS["alaw"]
        await phone.apply_answer(answer)
        assert phone.leg.audio_codec == "PCMA" and phone.leg.frame_format.name == "pcm16"
        await asyncio.wait_for(gateway.connected.wait(), 10)
        t = np.arange(3200) / 16000
        phone.leg.play((np.sin(2 * np.pi * 500 * t) * 8000).astype(np.int16).tobytes())
        await asyncio.wait_for(gateway.first_audio.wait(), 5)
        assert {len(frame) for frame in heard} == {160}  # A-law bytes, as Asterisk takes them
    finally:
        await phone.leg.close()
        await gateway.close()


async def test_the_phone_refuses_a_g711_answer_it_did_not_offer():
    """Meta refuses an answer whose codec its offer did not carry (error 100 in the sim)."""
    phone, gateway = await legs(("PCMU",), ("PCMU",))
    opus_only = SimulatedPhone(name="opus only")
    try:
        answer = await gateway.answer(await phone.make_offer())
        await opus_only.make_offer()
        with pytest.raises(SdpError, match="picks PCMU, which the offer did not carry"):
            await opus_only.apply_answer(answer)
    finally:
        for leg in (phone.leg, gateway, opus_only.leg):
            await leg.close()


async def test_g711_payloads_cross_the_asterisk_leg_untouched():
    asterisk = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    asterisk.bind(("127.0.0.1", 0))
    asterisk.setblocking(False)
    ours = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    ours.bind(("127.0.0.1", 0))
    leg = AsteriskRtpLeg(ours, ASTERISK_CODECS["ulaw"], passthrough=True)
    got: list[bytes] = []
    leg.on_audio = got.append
    await leg.start()
    try:
        frame = bytes(range(60, 220))
        leg.set_remote(*asterisk.getsockname())
        leg.send(frame)
        loop = asyncio.get_running_loop()
        while True:  # the pacer sends silence around our frame
            packet = await asyncio.wait_for(loop.sock_recv(asterisk, 2048), 2)
            assert packet[1] & 0x7F == 0  # PCMU
            if packet[12:] != G711_FORMATS["ulaw"].silence:
                break
        assert packet[12:] == frame
        reply = packet[:12] + bytes(range(10, 170))
        await loop.sock_sendto(asterisk, reply, leg.local)
        await asyncio.wait_for(leg.first_packet.wait(), 2)
        assert got == [bytes(range(10, 170))]
    finally:
        leg.close()
        asterisk.close()


def test_quiet_g711_frames_trim_a_backlog_and_speech_stays():
    ulaw = G711_FORMATS["ulaw"]
    loud = bytes([0x10]) * 160  # a large mu-law level
    queue = bytearray(ulaw.silence * 3 + loud + ulaw.silence * 4)
    trim_backlog(queue, fmt=ulaw)
    assert bytes(queue[:160]) == loud and len(queue) == 5 * 160


BASE = {
    "whatsapp": {"graph_url": "https://graph.facebook.com/v25.0", "access_token": "t",
                 "app_secret": "s", "verify_token": "v"},
    "asterisk": {"ami": {"username": "gateway", "secret": "x"}},
}


def number(**extra):
    return {**BASE, "numbers": [{"phone_number_id": "1", "context": "c", **extra}]}


def test_media_mode_per_number():
    assert parse_config(number(), env={}).numbers[0].g711 == ()
    cfg = parse_config(number(media={"mode": "auto"}), env={})
    assert cfg.numbers[0].media_mode == "auto" and cfg.numbers[0].g711 == ("PCMU", "PCMA")
    cfg = parse_config(number(media={"mode": "passthrough"},
                              calling={"audio": {"additional_codecs": ["PCMU"]}}), env={})
    assert cfg.numbers[0].media_mode == "passthrough"


@pytest.mark.parametrize(("media", "calling", "problem"), [
    ({"mode": "g711"}, None, "numbers[0].media.mode: must be one of opus, passthrough, auto"),
    ({"mod": "auto"}, None, "numbers[0].media.mod: unknown key"),
    ("passthrough", None, "numbers[0].media: must be a mapping with mode"),
    ({"mode": "passthrough"}, {"status": "ENABLED"},
     "numbers[0].media.mode: passthrough needs numbers[0].calling.audio.additional_codecs"),
])
def test_media_mode_errors_name_the_key(media, calling, problem):
    extra = {"media": media, **({"calling": calling} if calling else {})}
    with pytest.raises(ConfigError) as info:
        parse_config(number(**extra), env={})
    assert any(p.startswith(problem) for p in info.value.problems), info.value.problems
