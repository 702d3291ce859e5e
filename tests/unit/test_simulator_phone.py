"""The phone's offer, rewritten from aiortc's into WhatsApp's shape (pure text, no network)."""

from gateway.simulator.phone import WHATSAPP_OPUS_FMTP, whatsapp_offer

AIORTC_OFFER = "\r\n".join([
    "v=0", "o=- 4004627807 4004627807 IN IP4 0.0.0.0", "s=-", "t=0 0",
    "a=group:BUNDLE audio", "a=msid-semantic:WMS *",
    "m=audio 58931 UDP/TLS/RTP/SAVPF 111 126", "c=IN IP4 127.0.0.1", "a=sendrecv",
    "a=extmap:1 urn:ietf:params:rtp-hdrext:sdes:mid", "a=mid:audio",
    "a=msid:7acc22c3 a5126f0d", "a=rtcp:9 IN IP4 0.0.0.0", "a=rtcp-mux",
    "a=ssrc:2853758264 cname:8c86bced", "a=rtpmap:111 opus/48000/2",
    "a=rtpmap:126 telephone-event/8000",
    "a=candidate:16572de626da4e5384a0ce2d0d93678a 1 udp 2130706431 127.0.0.1 58931 typ host",
    "a=candidate:22222de626da4e5384a0ce2d0d93678a 1 udp 2130706431 10.0.0.5 58932 typ host",
    "a=candidate:365cbcb59afe9901aaa0f5cc9c9b5eea 1 udp 2130706431 ::1 46652 typ host",
    "a=end-of-candidates", "a=ice-ufrag:5RqQ", "a=ice-pwd:hSP24U6Ku99gmXMtq305PR",
    "a=fingerprint:sha-256 EE:44:9D", "a=fingerprint:sha-384 AA:BB", "a=setup:actpass", ""])


def test_offer_has_whatsapps_shape_and_keeps_the_real_transport():
    sdp = whatsapp_offer(AIORTC_OFFER)
    lines = sdp.split("\r\n")
    assert sdp.endswith("\r\n") and lines[0] == "v=0"
    assert lines.index("a=ice-lite") < lines.index("m=audio 58931 UDP/TLS/RTP/SAVPF 111 126")
    assert "c=IN IP4 127.0.0.1" in lines
    cands = [ln for ln in lines if ln.startswith("a=candidate:")]
    assert len(cands) == 2  # one IPv4 (the first), one IPv6
    assert cands[0].endswith("127.0.0.1 58931 typ host generation 0 network-cost 50")
    assert " ::1 46652 typ host" in cands[1]
    assert all(ln.split()[0].split(":")[1].isdigit() for ln in cands)
    assert "a=end-of-candidates" not in lines
    assert [ln for ln in lines if ln.startswith("a=fingerprint")] == [
        "a=fingerprint:sha-256 EE:44:9D"]
    for needed in ("a=ice-ufrag:5RqQ", "a=ice-pwd:hSP24U6Ku99gmXMtq305PR", "a=setup:actpass",
                   "a=mid:audio", "a=group:BUNDLE audio", "a=rtcp-mux",
                   f"a=fmtp:111 {WHATSAPP_OPUS_FMTP}", "a=rtcp-fb:111 transport-cc",
                   "a=rtpmap:126 telephone-event/8000", "a=ptime:20", "a=maxptime:20",
                   "a=ssrc:2853758264 cname:WhatsAppAudioStream1"):
        assert needed in lines, needed
    assert not any(ln.startswith("a=extmap") for ln in lines)


def test_ipv4_only_hosts_give_one_candidate():
    v4_only = "\r\n".join(ln for ln in AIORTC_OFFER.split("\r\n") if "::1" not in ln)
    cands = [ln for ln in whatsapp_offer(v4_only).split("\r\n") if ln.startswith("a=candidate")]
    assert len(cands) == 1
