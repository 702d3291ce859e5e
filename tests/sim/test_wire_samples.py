"""The simulator against the hand-written wire samples (tests/fixtures/rtp/, tests/fixtures/sdp/):
its phone writes WhatsApp's offer and Meta's answer in the samples' shape and takes a
business's SDPs, its Meta refuses broken ones, and the phone's key presses are the sample's
RFC 4733 packets on the wire. The gateway's side is tests/unit/test_wire_samples.py."""

from __future__ import annotations

import asyncio

import pytest
from aiortc.rtp import RtpPacket

from gateway.media import aiortc_hooks
from gateway.media.webrtc import WebRtcLeg
from gateway.simulator.meta import GraphError, session_sdp
from gateway.simulator.phone import SimulatedPhone
from tests.wire_samples import rtp_packets, sdp, sdp_shape


def test_the_shape_check_sees_a_difference() -> None:
    """The comparison below masks per-call values only: a changed attribute still shows."""
    offer = sdp("whatsapp-offer.sdp")
    assert sdp_shape(offer) == sdp_shape(sdp("whatsapp-offer-older.sdp").replace(
        "minptime=10;useinbandfec=1", "maxaveragebitrate=20000;maxplaybackrate=16000;"
        "minptime=20;sprop-maxcapturerate=16000;useinbandfec=1"))
    assert sdp_shape(offer) != sdp_shape(offer.replace("a=ptime:20", "a=ptime:30"))


async def test_the_phones_offer_has_the_samples_shape() -> None:
    phone = SimulatedPhone(name="golden offer")
    try:
        offer = await phone.make_offer()
    finally:
        await phone.hangup()
    assert sdp_shape(offer) == sdp_shape(sdp("whatsapp-offer.sdp"))


async def test_the_phone_answers_a_business_offer_in_metas_shape() -> None:
    phone = SimulatedPhone(name="golden answer")
    try:
        answer = await phone.answer_offer(sdp("business-offer.sdp"))
    finally:
        await phone.hangup()
    assert sdp_shape(answer) == sdp_shape(sdp("meta-answer.sdp"))


async def test_the_phone_takes_a_business_answer() -> None:
    phone = SimulatedPhone(name="golden business answer")
    try:
        await phone.make_offer()
        await phone.apply_answer(sdp("business-answer.sdp"))
        assert phone.answer_sdp == sdp("business-answer.sdp") and phone.state == "connecting"
    finally:
        await phone.hangup()


@pytest.mark.parametrize(("name", "action", "sdp_type"), [
    ("business-answer.sdp", "pre_accept", "answer"),
    ("business-answer.sdp", "accept", "answer"),
    ("business-offer.sdp", "connect", "offer")])
def test_metas_checks_take_the_business_samples(name: str, action: str, sdp_type: str) -> None:
    body = {"session": {"sdp_type": sdp_type, "sdp": sdp(name)}}
    assert session_sdp(body, action, sdp_type) == sdp(name)


@pytest.mark.parametrize("name", ["broken-no-audio.sdp", "broken-no-opus.sdp",
                                  "broken-no-fingerprint.sdp", "broken-sha1-fingerprint.sdp"])
def test_metas_checks_refuse_broken_sdps_with_error_100(name: str) -> None:
    for action, sdp_type in (("accept", "answer"), ("connect", "offer")):
        if name == "broken-no-opus.sdp" and sdp_type == "answer":
            # An answer may pick the PCMU the sample carries, when the user's offer had it
            # (audio.additional_codecs, docs/meta-2026-settings-events.md §7): the phone,
            # which knows its offer, refuses one it did not offer. An offer must have Opus.
            session_sdp({"session": {"sdp_type": sdp_type, "sdp": sdp(name)}}, action,
                        sdp_type)
            continue
        with pytest.raises(GraphError) as refused:
            session_sdp({"session": {"sdp_type": sdp_type, "sdp": sdp(name)}}, action, sdp_type)
        assert refused.value.code == 100


async def test_the_phones_key_press_is_the_samples_packets_on_the_wire() -> None:
    """A press of 1 (100 ms, the phone's default) arrives at a business leg as the sample's
    seven packets: payloads byte for byte, the marker on the first, one timestamp, sequence
    numbers in a row. A press of 2 after it is the sentinel: no fourth end packet of 1."""
    phone = SimulatedPhone(name="golden dtmf")
    business = WebRtcLeg(name="business")
    events: list[RtpPacket] = []
    arrived = asyncio.Event()

    def capture(packet: RtpPacket) -> None:
        if packet.payload_type == 126:
            events.append(packet)
            if packet.payload[:1] == b"\x02":  # the sentinel press
                arrived.set()

    try:
        answer = await business.answer(await phone.make_offer())
        await phone.apply_answer(answer)
        await asyncio.wait_for(asyncio.gather(phone.connected.wait(),
                                              business.connected.wait()), 10)
        aiortc_hooks.tap_receiver(business.transceiver.receiver, capture)
        await phone.press("1")
        await phone.press("2")
        await asyncio.wait_for(arrived.wait(), 10)
    finally:
        await phone.hangup()
        await business.close()
    sample = [RtpPacket.parse(p) for p in rtp_packets("dtmf-1-100ms.hex")]
    ones = [p for p in events if p.payload[:1] == b"\x01"]
    assert [p.payload for p in ones] == [p.payload for p in sample]
    assert [bool(p.marker) for p in ones] == [bool(p.marker) for p in sample]
    assert len({p.timestamp for p in ones}) == 1
    seqs = [p.sequence_number for p in ones]
    assert all((b - a) & 0xFFFF == 1 for a, b in zip(seqs, seqs[1:], strict=False))
