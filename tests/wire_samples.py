"""The hand-written wire samples of tests/fixtures/rtp/ and tests/fixtures/sdp/, loaded, and
the expectations their READMEs state."""

from __future__ import annotations

import re
from pathlib import Path

FIXTURES = Path(__file__).parent / "fixtures"
RTP = FIXTURES / "rtp"
SDP = FIXTURES / "sdp"

DIGITS = {
    "dtmf-1-100ms.hex": ["1"],
    "dtmf-hash-9-timestamp-wrap.hex": ["#", "9"],
    "dtmf-7-end-lost.hex": ["7", "8"],
    "dtmf-4-start-lost.hex": ["4"],
    "broken-truncated-payload.hex": [],
    "broken-header-only.hex": [],
    "broken-odd-length.hex": ["5"],
    "broken-unknown-event.hex": [],
}
"""What a receiver reports for each stream (tests/fixtures/rtp/README.md)."""

BROKEN_OFFERS = {
    "broken-no-audio.sdp": "audio",
    "broken-no-opus.sdp": "Opus",
    "broken-no-fingerprint.sdp": "fingerprint",
    "broken-sha1-fingerprint.sdp": "fingerprint",
    "broken-fingerprint-too-short.sdp": "fingerprint",
    "broken-no-setup.sdp": "setup",
    "broken-short-ice-pwd.sdp": "ice-pwd",
    "broken-no-ice-ufrag.sdp": "ice-ufrag",
    "broken-no-connection-line.sdp": "connection",
    "broken-two-audio-sections.sdp": "one media section",
    "broken-truncated.sdp": "fingerprint",
    "broken-not-a-sdp-line.sdp": "not '<letter>=",
    "broken-no-version-line.sdp": "v=0",
}
"""Each broken WhatsApp offer, and a word the refusal must name."""


def rtp_packets(name: str) -> list[bytes]:
    """The packets of one .hex file, in order (comments dropped)."""
    packets = []
    for line in (RTP / name).read_text().splitlines():
        data = line.split("#", 1)[0].strip()
        if data:
            packets.append(bytes.fromhex(data))
    return packets


def sdp(name: str) -> str:
    """One SDP file with the CRLF line ends of the wire."""
    return "\r\n".join((SDP / name).read_text().splitlines()) + "\r\n"


VOLATILE = [
    (r"o=- \d+ ", "o=- <session> "),
    (r"m=audio \d+ ", "m=audio <port> "),
    (r"c=IN IP[46] \S+", "c=IN <address>"),
    (r"a=candidate:.*", "a=candidate:<host candidate>"),
    (r"a=ice-ufrag:\S+", "a=ice-ufrag:<ufrag>"),
    (r"a=ice-pwd:\S+", "a=ice-pwd:<pwd>"),
    (r"a=fingerprint:sha-256 (?:[0-9A-F]{2}:){31}[0-9A-F]{2}", "a=fingerprint:sha-256 <hash>"),
    (r"a=msid-semantic: WMS \S+", "a=msid-semantic: WMS <stream>"),
    (r"a=msid:\S+ ", "a=msid:<stream> "),
    (r"a=ssrc:\d+ cname:\S+", "a=ssrc:<ssrc> cname:<cname>"),
]
"""What differs from one call to the next: credentials, addresses, ids."""


def sdp_shape(text: str) -> list[str]:
    """The SDP's lines with the per-call values masked, and a run of host candidates as one
    line (a phone without IPv6 lists one, Meta two): what must match a sample line by line."""
    out: list[str] = []
    for line in text.split("\r\n"):
        if not line:
            continue
        for pattern, mask in VOLATILE:
            if re.match(pattern, line):
                line = re.sub(pattern, mask, line, count=1)
                break
        if not (out and out[-1] == line == "a=candidate:<host candidate>"):
            out.append(line)
    return out
