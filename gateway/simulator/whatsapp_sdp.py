"""The SDPs a WhatsApp client and Meta write, made from a local aiortc SDP: what the simulated
phone offers (WhatsApp's fmtp, ice-lite, actpass, v4 and v6 candidates, Opus first and G.711
when the number has ``audio.additional_codecs``) and how Meta answers a business's offer.

The shapes follow Meta's samples (tests/fixtures/payloads/, docs/meta-calling.md §9) and the
golden SDPs in tests/fixtures/sdp/, against which tests check them.
"""

from __future__ import annotations

import re
import time
import uuid
from collections.abc import Sequence

WHATSAPP_OPUS_FMTP = ("maxaveragebitrate=20000;maxplaybackrate=16000;minptime=20;"
                      "sprop-maxcapturerate=16000;useinbandfec=1")
META_ANSWER_OPUS_FMTP = "minptime=10;useinbandfec=1"
"""Opus fmtp of Meta's answer to a business's offer
(tests/fixtures/payloads/webhook-connect-business-initiated.json)."""
G711_STATIC_PTS = {"PCMU": 0, "PCMA": 8}
"""RFC 3551 static payload types, as Meta's SDP samples write G.711."""
META_DTMF_PT = 126
"""§9: without telephone-event/8000 in the business's offer Meta still uses PT 126 at 8 kHz."""


class _LocalSdp:
    """What the simulator keeps of aiortc's own SDP when it re-dresses it as WhatsApp's or
    Meta's: the real ICE credentials, fingerprint, DTLS role, mid, SSRC and host candidates
    (one IPv4, one IPv6), so the other side's answer or offer still works against the phone."""

    def __init__(self, sdp: str, what: str):
        self.sdp, self.what = sdp, what
        self.ufrag = self.one(r"a=ice-ufrag:(\S+)")
        self.pwd = self.one(r"a=ice-pwd:(\S+)")
        self.fingerprint = self.one(r"a=fingerprint:sha-256 (\S+)")
        self.ssrc = self.one(r"a=ssrc:(\d+) ")
        self.v4 = self.v6 = None
        for m in re.finditer(r"a=candidate:(\S+) 1 udp (\d+) (\S+) (\d+) typ host", sdp):
            foundation, priority, addr, port = m.groups()
            if ":" in addr and self.v6 is None:
                self.v6 = (foundation, priority, addr, port)
            elif ":" not in addr and self.v4 is None:
                self.v4 = (foundation, priority, addr, port)
        if self.v4 is None and self.v6 is None:
            raise ValueError(f"aiortc {what} has no host candidate")

    def one(self, pattern: str) -> str:
        m = re.search(pattern, self.sdp)
        if not m:
            raise ValueError(f"aiortc {self.what} lacks {pattern!r}")
        return m.group(1)

    def head(self, mid: str, payload_types: str, stream: str | None = None) -> list[str]:
        """Session lines, the m-line and the host candidates, in WhatsApp's style."""
        default = self.v4 or self.v6
        assert default is not None
        lines = [
            "v=0",
            f"o=- {int(time.time() * 1000)} 2 IN IP4 127.0.0.1",
            "s=-",
            "t=0 0",
            f"a=group:BUNDLE {mid}",
            f"a=msid-semantic: WMS {stream or uuid.uuid4()}",
            "a=ice-lite",
            f"m=audio {default[3]} UDP/TLS/RTP/SAVPF {payload_types}",
            f"c=IN IP4 {self.v4[2]}" if self.v4 else f"c=IN IP6 {default[2]}",
            "a=rtcp:9 IN IP4 0.0.0.0",
        ]
        for cand in (self.v4, self.v6):
            if cand:
                foundation, priority, addr, port = cand
                # WhatsApp's foundations are decimal; the value only groups our candidates.
                numeric = int(foundation, 16) % 10**10 \
                    if re.fullmatch(r"[0-9a-f]+", foundation) else foundation
                lines.append(f"a=candidate:{numeric} 1 udp {priority} {addr} {port} typ host "
                             "generation 0 network-cost 50")
        return lines


def whatsapp_offer(local_sdp: str, g711: Sequence[str] = ()) -> str:
    """Rewrite aiortc's offer into the shape WhatsApp's relay offers (see module docstring).

    Only presentation changes: ICE credentials, fingerprint, candidates and SSRC are the real
    ones of the phone's peer connection, so the business's answer works against it.

    ``g711``: the number's ``audio.additional_codecs``. ASSUMPTION (no captured user-initiated
    offer with G.711 exists, docs/meta-2026-settings-events.md §1): they follow Opus as static
    PCMU/0 and PCMA/8 with rtpmap lines, in the order and shape of Meta's business-initiated
    answer sample (``111 9 0 8 110 126``).
    """
    local = _LocalSdp(local_sdp, "offer")
    stream = str(uuid.uuid4())
    g711_pts = [(G711_STATIC_PTS[c], c) for c in G711_STATIC_PTS if c in g711]
    fmts = " ".join(["111", *(str(pt) for pt, _ in g711_pts), "126"])
    lines = local.head("audio", fmts, stream) + [
        f"a=ice-ufrag:{local.ufrag}",
        f"a=ice-pwd:{local.pwd}",
        f"a=fingerprint:sha-256 {local.fingerprint}",
        "a=setup:actpass",
        "a=mid:audio",
        "a=sendrecv",
        f"a=msid:{stream} WhatsAppTrack1",
        "a=rtcp-mux",
        "a=rtpmap:111 opus/48000/2",
        "a=rtcp-fb:111 transport-cc",
        f"a=fmtp:111 {WHATSAPP_OPUS_FMTP}",
        *(f"a=rtpmap:{pt} {name}/8000" for pt, name in g711_pts),
        "a=rtpmap:126 telephone-event/8000",
        "a=maxptime:20",
        "a=ptime:20",
        f"a=ssrc:{local.ssrc} cname:WhatsAppAudioStream1",
    ]
    return "\r\n".join(lines) + "\r\n"


def meta_answer(local_sdp: str) -> str:
    """Rewrite aiortc's answer to a business's offer into the shape of Meta's answer
    (tests/fixtures/payloads/webhook-connect-business-initiated.json, §9 ⚠): session-level
    ``a=ice-lite``,
    ``a=ice-options:trickle``, one sha-256 fingerprint, the DTLS role aiortc chose (``active``
    against an ``actpass`` offer, as in Meta's sample), mid and payload types mirrored from the
    offer, Meta's Opus fmtp, host candidates of one IPv4 and one IPv6 address, one SSRC.

    Only presentation changes: ICE credentials, fingerprint, DTLS role, candidates and SSRC are
    the phone's real ones.
    """
    local = _LocalSdp(local_sdp, "answer")
    setup = local.one(r"a=setup:(\S+)")
    mid = local.one(r"a=mid:(\S+)")
    direction = re.search(r"a=(sendrecv|sendonly|recvonly|inactive)", local_sdp)
    rtpmaps = dict(re.findall(r"a=rtpmap:(\d+) ([^\r\n]+)", local_sdp))
    opus = next((pt for pt, enc in rtpmaps.items() if enc.lower().startswith("opus/48000")),
                None)
    if opus is None:
        raise ValueError("aiortc answer has no Opus")
    dtmf = next((pt for pt, enc in rtpmaps.items()
                 if enc.lower().startswith("telephone-event/8000")), None)
    lines = local.head(mid, " ".join(pt for pt in (opus, dtmf) if pt)) + [
        f"a=ice-ufrag:{local.ufrag}",
        f"a=ice-pwd:{local.pwd}",
        "a=ice-options:trickle",
        f"a=fingerprint:sha-256 {local.fingerprint}",
        f"a=setup:{setup}",
        f"a=mid:{mid}",
        f"a={direction.group(1) if direction else 'sendrecv'}",
        "a=rtcp-mux",
        f"a=rtpmap:{opus} opus/48000/2",
        f"a=rtcp-fb:{opus} transport-cc",
        f"a=fmtp:{opus} {META_ANSWER_OPUS_FMTP}",
    ]
    if dtmf:
        lines.append(f"a=rtpmap:{dtmf} telephone-event/8000")
    lines += [
        "a=ptime:20",
        f"a=ssrc:{local.ssrc} cname:WhatsAppAudioStream1",
    ]
    return "\r\n".join(lines) + "\r\n"
