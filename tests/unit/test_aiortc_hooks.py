"""The places the gateway reaches into aiortc (pinned exactly in pyproject.toml), exercised with
two real aiortc peers on loopback: if an aiortc upgrade moves what a hook touches, this fails."""

from __future__ import annotations

import asyncio
import re

import numpy as np
import pytest
from aiortc.codecs import CODECS

from gateway.media import aiortc_hooks
from gateway.media.webrtc import (
    NoCandidates,
    SdpError,
    WebRtcLeg,
    clean_local_sdp,
    inspect_offer,
)


def test_codec_table_has_whatsapps_payload_types():
    aiortc_hooks.install()
    audio = {c.mimeType.lower(): c.payloadType for c in CODECS["audio"]}
    assert audio["audio/opus"] == 111
    assert audio["audio/telephone-event"] == 126


def test_gathering_addresses_follow_the_context():
    aiortc_hooks.install()
    with aiortc_hooks.gathering_on(["127.0.0.1", "::1"]):
        assert aiortc_hooks._get_host_addresses(True, True) == ["127.0.0.1", "::1"]
        assert aiortc_hooks._get_host_addresses(True, False) == ["127.0.0.1"]


def test_sdp_checks_and_cleaning():
    with pytest.raises(SdpError, match="no audio"):
        inspect_offer("v=0\r\ns=-\r\n")
    with pytest.raises(SdpError, match="Opus"):
        inspect_offer("v=0\r\nm=audio 9 UDP/TLS/RTP/SAVPF 0\r\na=rtpmap:0 PCMU/8000\r\n")
    sdp = ("a=fingerprint:sha-256 AA\r\na=fingerprint:sha-384 BB\r\na=fingerprint:sha-512 CC\r\n"
           "c=IN IP4 10.0.0.5\r\na=candidate:1 1 udp 2130706431 10.0.0.5 5000 typ host\r\n")
    out = clean_local_sdp(sdp, public_ip="198.51.100.7")
    assert out.count("a=fingerprint") == 1 and "sha-256" in out
    assert "198.51.100.7 5000 typ host" in out and "c=IN IP4 198.51.100.7" in out


async def test_two_legs_carry_audio_and_dtmf_both_ways():
    aiortc_hooks.install()
    a = WebRtcLeg(name="a", addresses=("127.0.0.1",))
    b = WebRtcLeg(name="b", addresses=("127.0.0.1",))
    heard_a: list[bytes] = []
    heard_b: list[bytes] = []
    digits_a: asyncio.Queue = asyncio.Queue()
    digits_b: asyncio.Queue = asyncio.Queue()
    a.on_audio, b.on_audio = heard_a.append, heard_b.append
    a.on_dtmf = lambda d, ms: digits_a.put_nowait((d, ms))
    b.on_dtmf = lambda d, ms: digits_b.put_nowait((d, ms))
    try:
        answer = await b.answer(await a.offer())
        assert "a=rtpmap:126 telephone-event/8000" in answer
        assert answer.count("a=fingerprint") == 1
        await a.apply_answer(answer)
        await asyncio.wait_for(asyncio.gather(a.connected.wait(), b.connected.wait()), 10)
        t = np.arange(3200) / 16000  # 200 ms: what the outgoing queue holds at most
        a.play((np.sin(2 * np.pi * 1000 * t) * 8000).astype(np.int16).tobytes())
        a.send_dtmf("12#", 100)
        b.send_dtmf("9", 200)
        got_b = [await asyncio.wait_for(digits_b.get(), 5) for _ in range(3)]
        got_a = await asyncio.wait_for(digits_a.get(), 5)
        assert [d for d, _ in got_b] == ["1", "2", "#"]
        assert all(ms == 100 for _, ms in got_b)
        assert got_a == ("9", 200)
        await asyncio.wait_for(b.first_audio.wait(), 5)
        pcm = np.frombuffer(b"".join(heard_b), dtype=np.int16).astype(float)
        spectrum = np.abs(np.fft.rfft(pcm))
        assert abs(np.argmax(spectrum) * 16000 / len(pcm) - 1000) < 10
        stats = await b.stats()
        assert stats["packets_received"] > 0 and stats["packets_lost"] == 0
        assert digits_b.empty()  # the end packet is sent three times: still one digit each
    finally:
        await a.close()
        await b.close()


async def test_an_offerer_can_stand_in_for_an_ice_lite_peer():
    """The simulator's phone offers like WhatsApp (mid "audio", ICE controlled): the answerer
    must become the controlling side and media must still flow."""
    aiortc_hooks.install()
    phone = WebRtcLeg(name="phone", addresses=("127.0.0.1",))
    gateway = WebRtcLeg(name="gateway", addresses=("127.0.0.1",))
    seen = []
    gateway.on_media = lambda: seen.append(1)
    try:
        offer = await phone.offer(mid="audio", ice_controlled=True)
        assert "a=mid:audio" in offer and "a=group:BUNDLE audio" in offer
        answer = await gateway.answer(offer.replace("a=group:BUNDLE audio",
                                                    "a=ice-lite\r\na=group:BUNDLE audio"))
        await phone.apply_answer(answer)
        await asyncio.wait_for(asyncio.gather(phone.connected.wait(),
                                              gateway.connected.wait()), 10)
        await asyncio.wait_for(gateway.first_audio.wait(), 5)
        assert seen
    finally:
        await phone.close()
        await gateway.close()


async def test_ice_sockets_bind_within_the_configured_port_range():
    aiortc_hooks.install()
    legs = [WebRtcLeg(name=f"leg{i}", addresses=("127.0.0.1",), ports=(49170, 49172))
            for i in range(3)]
    try:
        ports = []
        for leg in legs:
            offer = await leg.offer()
            (port,) = {int(line.split()[5]) for line in offer.split("\r\n")
                       if line.startswith("a=candidate:")}
            ports.append(port)
        assert sorted(ports) == [49170, 49171, 49172]  # each leg its own port of the range
        extra = WebRtcLeg(name="extra", addresses=("127.0.0.1",), ports=(49170, 49172))
        with pytest.raises(NoCandidates, match="49170-49172"):
            await extra.offer()  # the range is used up: a clear error, not a random port
        await extra.close()
    finally:
        for leg in legs:
            await leg.close()
    free = WebRtcLeg(name="free", addresses=("127.0.0.1",))
    try:  # without a range, any port: the hook leaves other legs alone
        offer = await free.offer()
        assert all(not 49170 <= int(line.split()[5]) <= 49172
                   for line in offer.split("\r\n") if line.startswith("a=candidate:"))
    finally:
        await free.close()


async def test_lost_packets_are_concealed_and_late_ones_dropped():
    from aiortc.rtp import RtpPacket

    from gateway.media.codecs import FRAME_BYTES, OpusEncoder

    aiortc_hooks.install()
    leg = WebRtcLeg(name="rx")
    heard: list[bytes] = []
    leg.on_audio = heard.append
    enc = OpusEncoder()
    t = np.arange(320) / 16000
    frame = (np.sin(2 * np.pi * 500 * t) * 8000).astype(np.int16).tobytes()

    def packet(seq: int, pt: int = 111) -> RtpPacket:
        payload = enc.encode(frame) if pt == 111 else b"\x01\x0a\x00\xa0"
        return RtpPacket(payload_type=pt, sequence_number=seq, timestamp=seq * 960,
                         ssrc=1, payload=payload)

    for seq in (10, 11):
        leg._on_packet(packet(seq))
    leg._on_packet(packet(14))  # 12 and 13 lost: two frames made up before 14's audio
    assert leg.concealed_frames == 2 and len(heard) == 5
    assert all(len(pcm) == FRAME_BYTES for pcm in heard[2:4])
    louder, softer = (np.abs(np.frombuffer(p, dtype=np.int16)).max() for p in heard[2:4])
    assert softer < louder  # fading, not a loop
    leg._on_packet(packet(13))  # late: its moment has passed
    assert len(heard) == 5
    leg._on_packet(packet(15, pt=126))  # a DTMF packet is not a loss in the audio
    leg._on_packet(packet(16))
    assert leg.concealed_frames == 2
    leg._on_packet(packet(30))  # a long gap is left to silence, not made up
    assert leg.concealed_frames == 2
    await leg.close()


async def test_our_opus_respects_the_peers_maxaveragebitrate():
    aiortc_hooks.install()
    phone = WebRtcLeg(name="phone", addresses=("127.0.0.1",))
    gateway = WebRtcLeg(name="gateway", addresses=("127.0.0.1",), opus_bitrate=32000)
    try:
        offer = await phone.offer()
        offer = re.sub(r"a=rtpmap:111 opus/48000/2\r\n",
                       "a=rtpmap:111 opus/48000/2\r\na=fmtp:111 maxaveragebitrate=20000;"
                       "maxplaybackrate=16000;minptime=20;useinbandfec=1\r\n", offer)
        assert inspect_offer(offer).max_bitrate == 20000
        await gateway.answer(offer)
        assert gateway.outgoing.bitrate == 20000  # what WhatsApp asks for, not our 32000
    finally:
        await phone.close()
        await gateway.close()


async def test_an_ice_connection_closed_as_connect_finishes_leaves_no_task_behind():
    """close() while connect() wakes up from a completed check list (a call hung up just as
    ICE succeeded): aioice alone would start consent checks on the closed connection."""
    import aioice

    aiortc_hooks.install()
    aiortc_hooks.set_host_addresses(["127.0.0.1"])

    class HeldQueue(asyncio.Queue):
        """connect()'s check-list result, held until the test has closed the connection."""

        def __init__(self) -> None:
            super().__init__()
            self.got, self.release = asyncio.Event(), asyncio.Event()

        async def get(self):
            item = await super().get()
            self.got.set()
            await self.release.wait()
            return item

    a = aioice.Connection(ice_controlling=True, components=1)
    b = aioice.Connection(ice_controlling=False, components=1)
    for one in (a, b):
        await one.gather_candidates()
    for one, other in ((a, b), (b, a)):
        for candidate in other.local_candidates:
            await one.add_remote_candidate(candidate)
        await one.add_remote_candidate(None)
        one.remote_username, one.remote_password = other.local_username, other.local_password
    held = HeldQueue()
    a._check_list_state = held
    connecting = asyncio.gather(a.connect(), b.connect())
    await asyncio.wait_for(held.got.wait(), 10)  # ICE succeeded; connect() not yet resumed
    await a.close()
    held.release.set()
    await asyncio.wait_for(connecting, 10)
    assert a._query_consent_task is None
    assert not [t for t in asyncio.all_tasks()
                if t.get_coro().cr_frame and t.get_coro().cr_frame.f_locals.get("self") is a]
    await b.close()
