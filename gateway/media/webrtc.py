"""The WhatsApp leg: one aiortc peer connection, audio and RFC 4733 DTMF, both directions.

Used by the gateway (answering Meta's offer, or offering for outbound calls) and by the
simulator's phone, so both sides of a test run the same real WebRTC stack.

Receive: packets are tapped before aiortc's jitter buffer (see aiortc_hooks), Opus-decoded to
16 kHz and handed to ``on_audio`` as they arrive; telephone-events become ``on_dtmf`` digits.
Send: :class:`OutgoingAudio` is paced by aiortc's sender at 20 ms and always returns a packet,
silence when nothing is queued, because WhatsApp hangs up after 20 s without media.

G.711: when the leg may use PCMU/PCMA (``g711``) and the other side's SDP carries it, the leg
answers with it (docs/meta-2026-settings-events.md §1 ``audio.additional_codecs``). With
``passthrough`` its frames are the G.711 payloads themselves (the gateway hands them to
Asterisk's ulaw/alaw channel untouched); without, they are decoded to 16 kHz PCM (the phone).
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription
from aiortc.rtcrtpsender import RTCRtpSender
from aiortc.rtp import RtpPacket

from gateway.errors import BadInput, MediaFailed
from gateway.media import aiortc_hooks, rfc4733
from gateway.media.codecs import (
    ASTERISK_CODECS,
    G711_CODECS,
    PCM16,
    AsteriskTranscoder,
    FrameDecoder,
    FrameFormat,
    G711Passthrough,
    OpusDecoder,
)
from gateway.media.outgoing import OutgoingAudio
from gateway.media.serial import seq_delta

__all__ = ["NoCandidates", "OfferInfo", "OutgoingAudio", "SdpError", "WebRtcLeg",
           "clean_local_sdp", "inspect_offer"]

log = logging.getLogger(__name__)

aiortc_hooks.install()

MAX_CONCEALED = 3
"""Up to 3 lost packets in a row (60 ms) are concealed; a longer gap is left to the pacer's
silence, since repeating sound for longer is worse than a gap."""
STATIC_PTS = {0: "PCMU", 8: "PCMA"}
"""RFC 3551 static payload types, valid even without an rtpmap line."""


class SdpError(BadInput, ValueError):
    """The remote SDP cannot be used (no audio, no Opus, ...); the reason is in the message."""


class NoCandidates(MediaFailed, RuntimeError):
    """No local ICE candidate could be gathered (no usable address, or media.webrtc_ports is
    used up): the leg could never carry media, so it fails now rather than at the ICE timeout."""


@dataclass(frozen=True)
class OfferInfo:
    opus_pt: int | None
    dtmf_pt: int | None
    max_bitrate: int | None = None
    """The peer's ``maxaveragebitrate`` for Opus (WhatsApp asks for 20000): what it wants to
    receive at most, so our encoder never exceeds it (RFC 7587 §6.1)."""
    g711: dict[str, int] = field(default_factory=dict)
    """G.711 codecs of the m-line, by name (``PCMU``/``PCMA``) → payload type."""
    first: str = "opus"
    """The audio codec listed first: what an answerer will send (RFC 3264 §6.1)."""


def inspect_offer(sdp: str, *, require_opus: bool = True) -> OfferInfo:
    """Check an SDP has what a WhatsApp call needs, before touching aiortc. Codecs are found by
    name, never by payload type (docs/meta-2026-settings-events.md §1); an answer
    (``require_opus=False``) may carry G.711 alone."""
    if "m=audio" not in sdp:
        raise SdpError("SDP has no audio section (m=audio)")
    rtpmaps = {int(pt): enc for pt, enc in re.findall(r"a=rtpmap:(\d+) ([^\r\n]+)", sdp)}
    mline = re.search(r"m=audio \S+ \S+((?: \d+)*)", sdp)
    order = [int(pt) for pt in mline.group(1).split()] if mline else []
    order += [pt for pt in rtpmaps if pt not in order]  # aiortc names the m-line mismatch
    names: dict[int, str] = {}
    for pt in order:
        enc = rtpmaps.get(pt, "").lower()
        if enc.startswith("opus/48000"):
            names[pt] = "opus"
        elif enc.startswith("telephone-event/8000"):
            names[pt] = "telephone-event"
        elif enc.startswith(("pcmu/8000", "pcma/8000")) or (not enc and pt in STATIC_PTS):
            names[pt] = enc[:4].upper() if enc else STATIC_PTS[pt]
    opus = [pt for pt, name in names.items() if name == "opus"]
    g711 = {name: pt for pt, name in reversed(names.items()) if name in G711_CODECS}
    if not opus and (require_opus or not g711):
        raise SdpError("SDP audio offers no Opus/48000")
    dtmf = [pt for pt, name in names.items() if name == "telephone-event"]
    fmtp = re.search(rf"a=fmtp:{opus[0]} ([^\r\n]+)", sdp) if opus else None
    limit = re.search(r"maxaveragebitrate=(\d+)", fmtp.group(1)) if fmtp else None
    first = next(name for name in names.values() if name != "telephone-event")
    return OfferInfo(opus_pt=opus[0] if opus else None, dtmf_pt=dtmf[0] if dtmf else None,
                     max_bitrate=int(limit.group(1)) if limit else None, g711=g711, first=first)


def clean_local_sdp(sdp: str, public_ip: str | None = None) -> str:
    """What Meta accepts from aiortc's SDP: one sha-256 fingerprint (aiortc lists three), and the
    public address in place of the local one when the gateway sits behind 1:1 NAT."""
    lines = [ln for ln in sdp.split("\r\n")
             if not ln.startswith("a=fingerprint:") or ln.startswith("a=fingerprint:sha-256")]
    out = "\r\n".join(lines)
    if public_ip:
        out = re.sub(r"(a=candidate:\S+ \d+ udp \d+ )(\d+\.\d+\.\d+\.\d+)( \d+ typ host)",
                     rf"\g<1>{public_ip}\g<3>", out)
        out = re.sub(r"c=IN IP4 \d+\.\d+\.\d+\.\d+", f"c=IN IP4 {public_ip}", out)
    return out


class WebRtcLeg:
    """One WebRTC audio call leg with packet-level receive and RFC 4733 both ways."""

    def __init__(self, *, name: str = "", opus_bitrate: int = 32000, opus_complexity: int = 3,
                 public_ip: str | None = None, addresses: tuple[str, ...] | None = None,
                 ports: tuple[int, int] | None = None, g711: Sequence[str] = (),
                 passthrough: bool = False):
        self.name = name
        self.g711 = tuple(g711)
        """G.711 codecs (``PCMU``/``PCMA``) this leg may use, in preference order. Answering,
        the first one the offer carries is chosen over Opus; offering, they follow Opus."""
        self.passthrough = passthrough
        """With G.711 negotiated, frames are the G.711 payloads themselves (the gateway);
        otherwise 16 kHz PCM (the simulated phone)."""
        self.audio_codec = "opus"
        """The codec negotiated: ``opus``, ``PCMU`` or ``PCMA``."""
        self.public_ip = public_ip
        self.addresses = addresses
        """Local addresses to gather ICE candidates on (None: the process-wide default)."""
        self.ports = ports
        """UDP port range (first, last) for the ICE sockets (None: any free port)."""
        self.pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        self.outgoing = OutgoingAudio(opus_bitrate, opus_complexity)
        self._decoder: FrameDecoder = OpusDecoder()
        self._dtmf = rfc4733.DtmfDetector()
        self._audio_pt = aiortc_hooks.OPUS_PT
        self._dtmf_pt: int | None = aiortc_hooks.TELEPHONE_EVENT_PT
        self._last_seq: int | None = None
        self._last_pcm = b""
        self.concealed_frames = 0
        """20 ms frames made up for lost packets (see _conceal)."""
        self.on_audio: Callable[[bytes], None] = lambda pcm: None
        self.on_dtmf: Callable[[str, int], None] = lambda digit, ms: None
        self.on_state: Callable[[str], None] = lambda state: None
        self.on_media: Callable[[], None] = lambda: None
        """Called for every packet received (RTP of any payload type, and RTCP): the peer is
        alive. Cheap on purpose: it runs for every packet."""
        self.connected = asyncio.Event()
        self.first_audio = asyncio.Event()
        self.packets_received = 0
        self.dtmf_received: list[str] = []
        self._closed = False
        self.transceiver = self.pc.addTransceiver(self.outgoing, direction="sendrecv")
        self.pc.on("connectionstatechange", self._on_connection_state)

    # --- signalling -------------------------------------------------------------------------

    async def answer(self, offer_sdp: str) -> str:
        """Apply a remote offer and return our answer SDP (raises :class:`SdpError`)."""
        info = inspect_offer(offer_sdp)
        g711 = next((name for name in self.g711 if name in info.g711), None)
        self._audio_pt, self._dtmf_pt = info.opus_pt, info.dtmf_pt
        self.outgoing.limit_bitrate(info.max_bitrate)
        # Before the remote description: aiortc settles the answer's codecs there, and without
        # preferences it would echo every codec of the offer (G.711 included) in the answer.
        self._restrict_codecs(g711)
        try:
            await self.pc.setRemoteDescription(RTCSessionDescription(offer_sdp, "offer"))
        except ValueError as exc:
            raise SdpError(f"SDP offer rejected by the WebRTC stack: {exc}") from exc
        if g711 is not None:
            self._use_g711(g711, info.g711[g711])
        with aiortc_hooks.gathering_on(self.addresses, self.ports):
            await self.pc.setLocalDescription(await self.pc.createAnswer())
        self._hook_media()
        return self._local_sdp()

    async def offer(self, *, mid: str | None = None, ice_controlled: bool = False) -> str:
        """Create our offer: Opus (then the leg's G.711 codecs, if any) and
        telephone-event/8000 only, as Meta asks.

        ``mid`` renames the m-section (WhatsApp calls it "audio"); ``ice_controlled`` makes
        this offerer the ICE-controlled side, as an ICE-lite peer would be."""
        self._restrict_codecs(None, offering=True)
        offer = await self.pc.createOffer()
        if mid is not None:  # before setLocalDescription, so aiortc remembers the new name
            sdp = re.sub(r"a=mid:\S+", f"a=mid:{mid}", offer.sdp)
            sdp = re.sub(r"a=group:BUNDLE [^\r\n]+", f"a=group:BUNDLE {mid}", sdp)
            offer = RTCSessionDescription(sdp, "offer")
        with aiortc_hooks.gathering_on(self.addresses, self.ports):
            await self.pc.setLocalDescription(offer)
        if ice_controlled:
            aiortc_hooks.make_ice_controlled(self.pc)
        return self._local_sdp()

    def _local_sdp(self) -> str:
        sdp = self.pc.localDescription.sdp
        if "a=candidate:" not in sdp:
            ports = f" in ports {self.ports[0]}-{self.ports[1]}" if self.ports else ""
            raise NoCandidates(f"no local ICE candidate on {self.addresses or 'any address'}"
                               f"{ports}")
        return clean_local_sdp(sdp, self.public_ip)

    @property
    def dtmf_payload_type(self) -> int | None:
        """The telephone-event payload type negotiated (None when the peer offered none)."""
        return self._dtmf_pt

    @dtmf_payload_type.setter
    def dtmf_payload_type(self, pt: int) -> None:
        self._dtmf_pt = pt
        self.outgoing.dtmf_pt = pt

    async def apply_answer(self, answer_sdp: str) -> None:
        """Apply the answer to our offer (raises :class:`SdpError`). The answer must pick a
        codec we offered: its first audio codec is the one both sides send (RFC 3264 §6.1)."""
        info = inspect_offer(answer_sdp, require_opus=False)
        if info.first != "opus" and info.first not in self.g711:
            raise SdpError(f"SDP answer picks {info.first}, which the offer did not carry")
        self._audio_pt, self._dtmf_pt = info.opus_pt, info.dtmf_pt
        self.outgoing.limit_bitrate(info.max_bitrate)
        try:
            await self.pc.setRemoteDescription(RTCSessionDescription(answer_sdp, "answer"))
        except ValueError as exc:
            raise SdpError(f"SDP answer rejected by the WebRTC stack: {exc}") from exc
        if info.first != "opus":
            self._use_g711(info.first, info.g711[info.first])
        self._hook_media()

    def _restrict_codecs(self, g711: str | None, *, offering: bool = False) -> None:
        """Answering: ``g711`` alone if given, else Opus. Offering: Opus, then every G.711
        codec of the leg. telephone-event/8000 always."""
        audio = ([g711] if g711 else ["opus"]) if not offering else ["opus", *self.g711]
        caps = {c.mimeType.lower(): c for c in RTCRtpSender.getCapabilities("audio").codecs}
        self.transceiver.setCodecPreferences(
            [caps[f"audio/{name.lower()}"] for name in (*audio, "telephone-event")])

    def _use_g711(self, name: str, payload_type: int) -> None:
        """G.711 was negotiated: decode and encode it (or pass its payloads through)."""
        codec = ASTERISK_CODECS[G711_CODECS[name]]
        self.audio_codec, self._audio_pt = name, payload_type
        transcoder = G711Passthrough(codec) if self.passthrough else AsteriskTranscoder(codec)
        self._decoder = transcoder
        self.outgoing.use_encoder(transcoder, codec.rtp_clock)

    @property
    def frame_format(self) -> FrameFormat:
        """What ``on_audio`` hands over and ``play`` takes (PCM16 unless G.711 passes
        through)."""
        return self._decoder.format

    def _hook_media(self) -> None:
        aiortc_hooks.tap_receiver(self.transceiver.receiver, self._on_packet)
        aiortc_hooks.tap_rtcp(self.transceiver.receiver, lambda: self.on_media())
        self.outgoing.attach(aiortc_hooks.PayloadTypeRewriter(self.transceiver.sender.transport))
        if self._dtmf_pt is not None:
            self.outgoing.dtmf_pt = self._dtmf_pt

    # --- media --------------------------------------------------------------------------------

    def _on_packet(self, packet: RtpPacket) -> None:
        self.on_media()
        pt = packet.payload_type
        seq = packet.sequence_number
        # Events and audio share one sequence space: a gap is lost packets of either kind.
        # Sequence numbers wrap at 2**16 (every 22 minutes): compare them the way they wrap.
        gap = seq_delta(seq, self._last_seq) - 1 if self._last_seq is not None else 0
        if pt == self._dtmf_pt:
            if gap >= 0:
                self._last_seq = seq
            for digit, ms in self._dtmf.feed(packet.timestamp, packet.payload):
                self.dtmf_received.append(digit)
                self.on_dtmf(digit, ms)
            return
        if pt != self._audio_pt:
            return
        if gap < 0:
            return  # late or duplicate: its moment has passed
        self._last_seq = seq
        self.packets_received += 1
        if 0 < gap <= MAX_CONCEALED and self._last_pcm and self._decoder.format is PCM16:
            self._conceal(gap)
        pcm = self._decoder.decode(packet.payload)
        if pcm:
            if not self.first_audio.is_set():
                self.first_audio.set()
            self._last_pcm = pcm
            self.on_audio(pcm)

    def _conceal(self, frames: int) -> None:
        """Stand-in for lost packets: the last frame again, fading (-6 dB each). A lost 20 ms
        then sounds like a stretched sound rather than a click of silence; PyAV offers neither
        Opus PLC nor FEC decoding, which would be better still."""
        pcm = np.frombuffer(self._last_pcm, dtype=np.int16)
        for _ in range(frames):
            pcm = (pcm // 2).astype(np.int16)
            self.concealed_frames += 1
            self.on_audio(pcm.tobytes())

    def play(self, pcm: bytes) -> None:
        """Queue frames toward the peer: 16 kHz mono s16 PCM, or G.711 bytes when they pass
        through (``frame_format``)."""
        self.outgoing.queue_pcm(pcm)

    def send_dtmf(self, digits: str, duration_ms: int = 100) -> None:
        self.outgoing.queue_dtmf(digits, duration_ms)

    def _on_connection_state(self) -> None:
        state = self.pc.connectionState
        log.debug("webrtc %s: connection %s", self.name, state)
        if state == "connected":
            self.connected.set()
        self.on_state(state)

    async def stats(self) -> dict[str, float]:
        """Packets, loss, jitter and RTT as aiortc's RTCP machinery sees them."""
        out: dict[str, float] = {"packets_received": self.packets_received,
                                 "frames_sent": self.outgoing.frames_sent}
        for s in aiortc_hooks.receiver_statistics(self.transceiver.receiver).values():
            out["packets_lost"] = max(0, s.packets_lost)
            out["jitter_seconds"] = s.jitter / 48000
        try:
            report = await self.transceiver.sender.getStats()
            for stat in report.values():
                if stat.type == "remote-inbound-rtp" and stat.roundTripTime is not None:
                    out["rtt_seconds"] = stat.roundTripTime
        except Exception:  # stats are best effort; never fail a call over them
            pass
        return out

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self.outgoing.stop()
        await self.pc.close()
