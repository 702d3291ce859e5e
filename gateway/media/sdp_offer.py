"""The SDP offer of a WhatsApp call, checked before aiortc ever sees it.

aiortc's parser trusts its input: random bytes, a megabyte of text, fifty audio sections or a
fingerprint with a missing colon end in AttributeError, AssertionError or KeyError deep inside
``setRemoteDescription``, and the call is recorded as a gateway error with a traceback. What a
WhatsApp offer carries is small and known (docs/meta-calling.md §8, docs/media.md): one audio
section offering Opus/48000, ICE credentials, a SHA-256 DTLS fingerprint and a setup role. So
:func:`validate_offer` checks exactly that, and anything else is refused with
:class:`~gateway.media.webrtc.SdpError` naming what is wrong: the call is rejected as
``bad_sdp`` with that reason in its record.
"""

from __future__ import annotations

import re

from aiortc.sdp import SessionDescription

from gateway.media.webrtc import OfferInfo, SdpError, inspect_offer

MAX_SDP_BYTES = 16 * 1024
"""A WhatsApp offer is about 1.5 KB; a few dozen candidates still fit many times over."""
MAX_LINES = 200

_LINE = re.compile(r"[a-z]=[\x20-\x7e\t]*")
_ICE_CHARS = re.compile(r"[A-Za-z0-9+/]+")  # RFC 8839 ice-char
_FINGERPRINT = re.compile(r"sha-256 (?:[0-9A-Fa-f]{2}:){31}[0-9A-Fa-f]{2}")
_SETUP = {"actpass", "active", "passive"}
_MEDIA = re.compile(r"m=(\w+) (\d{1,5}) ([A-Za-z0-9/]+)((?: \d{1,3})+)")


def validate_offer(sdp: str) -> OfferInfo:
    """Raise :class:`SdpError` unless ``sdp`` is an offer a WhatsApp call can use."""
    if not sdp:
        raise SdpError("no SDP offer in the connect webhook")
    if len(sdp.encode("utf-8", "surrogatepass")) > MAX_SDP_BYTES:
        raise SdpError(f"SDP offer larger than {MAX_SDP_BYTES} bytes")
    lines = [ln for ln in re.split(r"\r?\n", sdp) if ln]
    if len(lines) > MAX_LINES:
        raise SdpError(f"SDP offer has more than {MAX_LINES} lines")
    for number, line in enumerate(lines, start=1):
        if not _LINE.fullmatch(line):
            raise SdpError(f"SDP line {number} is not '<letter>=<printable text>': "
                           f"{line[:40]!r}")
    if lines[0] != "v=0":
        raise SdpError("SDP does not start with v=0")
    session, sections = _split(lines)
    audio = [s for s in sections if s[0].startswith("m=audio ")]
    if len(audio) != 1 or len(sections) != 1:
        raise SdpError(f"SDP must have exactly one media section, audio; it has "
                       f"{len(sections)} ({len(audio)} audio)")
    media = audio[0]
    m_line = _MEDIA.fullmatch(media[0])
    if m_line is None:
        raise SdpError(f"SDP media line is malformed: {media[0][:60]!r}")
    formats = set(m_line.group(4).split())
    attrs = _attributes(session) | _attributes(media)

    ufrag, pwd = attrs.get("ice-ufrag"), attrs.get("ice-pwd")
    if ufrag is None or not 4 <= len(ufrag) <= 256 or not _ICE_CHARS.fullmatch(ufrag):
        raise SdpError("SDP has no usable a=ice-ufrag (4-256 ICE characters)")
    if pwd is None or not 22 <= len(pwd) <= 256 or not _ICE_CHARS.fullmatch(pwd):
        raise SdpError("SDP has no usable a=ice-pwd (22-256 ICE characters)")
    fingerprint = attrs.get("fingerprint")
    if fingerprint is None:
        raise SdpError("SDP has no a=fingerprint (DTLS needs one)")
    if not _FINGERPRINT.fullmatch(fingerprint):
        raise SdpError("SDP a=fingerprint is not a well-formed sha-256 fingerprint")
    if attrs.get("setup") not in _SETUP:
        raise SdpError("SDP has no a=setup of actpass, active or passive")
    if not any(ln.startswith("c=IN IP") for ln in session + media):
        raise SdpError("SDP has no connection line (c=IN IP4/IP6)")

    info = inspect_offer("\r\n".join(media))
    if str(info.opus_pt) not in formats:
        raise SdpError(f"SDP Opus payload type {info.opus_pt} is not in the m=audio line")
    try:  # the parser setRemoteDescription runs: whatever still trips it is refused here
        SessionDescription.parse(sdp)
    except Exception as exc:
        raise SdpError(f"SDP offer not parseable: {type(exc).__name__}: {exc}") from None
    return info


def _split(lines: list[str]) -> tuple[list[str], list[list[str]]]:
    session: list[str] = []
    sections: list[list[str]] = []
    for line in lines:
        if line.startswith("m="):
            sections.append([line])
        elif sections:
            sections[-1].append(line)
        else:
            session.append(line)
    return session, sections


def _attributes(lines: list[str]) -> dict[str, str]:
    """``a=name:value`` (and flag ``a=name``) lines; the first of each name wins."""
    attrs: dict[str, str] = {}
    for line in lines:
        if line.startswith("a="):
            name, _, value = line[2:].partition(":")
            attrs.setdefault(name, value)
    return attrs
