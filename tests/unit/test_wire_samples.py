"""The gateway's RFC 4733 and SDP code against hand-written wire samples
(tests/fixtures/rtp/, tests/fixtures/sdp/): packets and SDPs written from the RFCs and Meta's
examples, not by the gateway, so a mistake shared by the gateway and the simulator's phone
(which runs the gateway's WebRtcLeg) cannot pass."""

from __future__ import annotations

import pytest
from aiortc.rtp import RtpPacket

from gateway.media.rfc4733 import DtmfDetector, TelephoneEvent, event_payloads
from gateway.media.sdp_offer import validate_offer
from gateway.media.webrtc import SdpError, WebRtcLeg, inspect_offer
from tests.wire_samples import BROKEN_OFFERS, DIGITS, rtp_packets, sdp


def parsed(name: str) -> list[RtpPacket]:
    """aiortc's RTP parser reads the samples' headers: an independent check of the hex."""
    return [RtpPacket.parse(p) for p in rtp_packets(name)]


@pytest.mark.parametrize("name", sorted(DIGITS))
def test_the_samples_are_rtp_with_pt_126(name: str) -> None:
    packets = parsed(name)
    assert packets and all(p.version == 2 and p.payload_type == 126 for p in packets)
    seqs = [p.sequence_number for p in packets]
    # consecutive (modulo 2^16), except where the sample says packets were lost
    assert all(0 < (b - a) & 0xFFFF < 8 for a, b in zip(seqs, seqs[1:], strict=False))


@pytest.mark.parametrize("name", sorted(DIGITS))
def test_the_detector_reports_each_key_press_once(name: str) -> None:
    detector = DtmfDetector()
    got = [digit for p in parsed(name) for digit, _ms in detector.feed(p.timestamp, p.payload)]
    assert got == DIGITS[name]


def test_a_long_call_across_the_timestamp_wrap_reports_every_press_once() -> None:
    """70 presses whose RTP timestamps wrap past 2^32 midway, each written as in the wrap
    sample (three end packets): the detector's memory of reported events must forget the
    oldest, not the numerically smallest (after a wrap those are the newest)."""
    detector = DtmfDetector()
    ts, got = 0xFFFFFF60 - 40 * 880, []
    for _ in range(70):
        for payload, _marker in event_payloads("5", 60):
            got += detector.feed(ts % 2**32, payload)
        ts += 880
    assert len(got) == 70


def test_durations_are_read_in_8_khz_units() -> None:
    detector = DtmfDetector()
    got = [hit for p in parsed("dtmf-7-end-lost.hex") for hit in detector.feed(p.timestamp,
                                                                                 p.payload)]
    assert got == [("7", 40), ("8", 40)]  # 7: its last duration seen, 320 units = 40 ms
    detector = DtmfDetector()
    (one,) = [hit for p in parsed("dtmf-1-100ms.hex")
              for hit in detector.feed(p.timestamp, p.payload)]
    assert one == ("1", 100)


def test_the_writer_produces_the_sample_byte_for_byte() -> None:
    """digit 1 for 100 ms: the four growing packets, the end packet three times, the marker on
    the first only."""
    sample = parsed("dtmf-1-100ms.hex")
    written = list(event_payloads("1", 100))
    assert [payload for payload, _ in written] == [p.payload for p in sample]
    assert [marker for _, marker in written] == [bool(p.marker) for p in sample]
    assert len({p.timestamp for p in sample}) == 1  # one event: one timestamp


def test_event_fields_read_as_the_sample_comments_say() -> None:
    first, *_, last = parsed("dtmf-hash-9-timestamp-wrap.hex")
    assert TelephoneEvent.parse(first.payload) == TelephoneEvent(11, False, 10, 160)
    assert TelephoneEvent.parse(last.payload) == TelephoneEvent(9, True, 10, 480)
    assert (first.timestamp, last.timestamp) == (0xFFFFFF60, 0x2D0)


def test_broken_payloads_are_refused_by_the_parser() -> None:
    (truncated,) = parsed("broken-truncated-payload.hex")
    (empty,) = parsed("broken-header-only.hex")
    for packet in (truncated, empty):
        with pytest.raises(ValueError):
            TelephoneEvent.parse(packet.payload)
    (unknown, *_) = parsed("broken-unknown-event.hex")
    assert TelephoneEvent.parse(unknown.payload).digit is None


def test_a_packet_shorter_than_an_rtp_header_never_reaches_the_detector() -> None:
    (short,) = rtp_packets("broken-short-rtp.hex")
    with pytest.raises(ValueError):
        RtpPacket.parse(short)


# --- SDP -------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["whatsapp-offer.sdp", "whatsapp-offer-older.sdp"])
def test_whatsapp_offers_are_accepted(name: str) -> None:
    info = validate_offer(sdp(name))
    assert (info.opus_pt, info.dtmf_pt) == (111, 126)
    assert info.max_bitrate == (20000 if name == "whatsapp-offer.sdp" else None)


@pytest.mark.parametrize("name", sorted(BROKEN_OFFERS))
def test_broken_offers_are_refused_naming_the_problem(name: str) -> None:
    with pytest.raises(SdpError, match=BROKEN_OFFERS[name]):
        validate_offer(sdp(name))


def test_metas_answer_is_read_like_an_offer() -> None:
    info = inspect_offer(sdp("meta-answer.sdp"))
    assert (info.opus_pt, info.dtmf_pt, info.max_bitrate) == (111, 126, None)


async def test_a_leg_answers_the_sample_offer_and_takes_metas_sample_answer() -> None:
    """aiortc itself (through WebRtcLeg) takes the samples: the inbound leg answers Meta's
    offer the way §9 asks; the outbound leg applies Meta's answer to its own offer."""
    inbound = WebRtcLeg(name="in", addresses=("127.0.0.1",))
    outbound = WebRtcLeg(name="out", addresses=("127.0.0.1",))
    try:
        answer = await inbound.answer(sdp("whatsapp-offer.sdp"))
        lines = answer.split("\r\n")
        assert "a=setup:active" in lines and "a=ice-lite" not in lines
        assert [ln.split()[0] for ln in lines if ln.startswith("a=fingerprint:")] == [
            "a=fingerprint:sha-256"]
        assert "a=rtpmap:111 opus/48000/2" in lines
        assert "a=rtpmap:126 telephone-event/8000" in lines
        assert len({ln.split()[0] for ln in lines if ln.startswith("a=ssrc:")}) == 1
        await outbound.offer()
        await outbound.apply_answer(sdp("meta-answer.sdp"))
        assert outbound.dtmf_payload_type == 126
    finally:
        await inbound.close()
        await outbound.close()
