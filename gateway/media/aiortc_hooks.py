"""The few places where the gateway reaches into aiortc, kept in one module.

aiortc is pinned exactly in pyproject.toml because of this file; tests/unit/test_aiortc_hooks.py
and the end-to-end tests cover every hook, so an upgrade that breaks one fails loudly.

Why each hook exists (measurements in docs/media.md):
- Codec table: WhatsApp offers Opus as PT 111 and telephone-event/8000 as PT 126; aiortc knows
  no telephone-event, so without registering it the answer drops DTMF altogether.
- Host addresses: aioice gathers on every interface but loopback; a gateway must gather on the
  addresses the admin configured (and tests on loopback only).
- Packet tap on the receiver: aiortc's audio jitter buffer adds ~300 ms after one lost packet and
  its decoder would choke on telephone-event packets. The gateway takes every RTP packet before
  that buffer, still feeding aiortc's statistics so RTCP receiver reports stay right.
- Port range: aioice binds its sockets to port 0 (any); a firewall in front of the gateway
  needs a known range, so while a leg gathers, the event loop's datagram endpoints asked for
  port 0 take a free port of the configured range instead.
- Payload-type rewrite on send: aiortc sends every packet of a track with the codec's PT; an
  RFC 4733 event must go out with PT 126 in the same SSRC and sequence space as audio.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Iterator, Sequence
from contextvars import ContextVar

import aioice.ice
from aiortc import RTCPeerConnection
from aiortc.codecs import CODECS
from aiortc.rtcdtlstransport import RTCDtlsTransport
from aiortc.rtcrtpparameters import RTCRtpCodecParameters
from aiortc.rtcrtpreceiver import RTCRtpReceiver, StreamStatistics
from aiortc.rtp import RtpPacket, is_rtcp

log = logging.getLogger(__name__)

OPUS_PT = 111
TELEPHONE_EVENT_PT = 126

_host_addresses: list[str] | None = None
_leg_addresses: ContextVar[list[str] | None] = ContextVar("leg_addresses", default=None)
_original_get_host_addresses = aioice.ice.get_host_addresses
_installed = False


def install() -> None:
    """Register Opus/111 and telephone-event/8000/126 and the host-address hook (idempotent)."""
    global _installed
    if _installed:
        return
    audio = [c for c in CODECS["audio"] if c.mimeType.lower() not in
             ("audio/opus", "audio/telephone-event")]
    CODECS["audio"][:] = [
        RTCRtpCodecParameters(mimeType="audio/opus", clockRate=48000, channels=2,
                              payloadType=OPUS_PT),
        RTCRtpCodecParameters(mimeType="audio/telephone-event", clockRate=8000, channels=1,
                              payloadType=TELEPHONE_EVENT_PT),
        *audio,
    ]
    aioice.ice.get_host_addresses = _get_host_addresses
    _installed = True


def set_host_addresses(addresses: Sequence[str] | None) -> None:
    """Gather ICE host candidates on exactly these addresses (None: aioice's own choice)."""
    global _host_addresses
    _host_addresses = list(addresses) if addresses else None


@contextlib.contextmanager
def gathering_on(addresses: Sequence[str] | None,
                 ports: tuple[int, int] | None = None) -> Iterator[None]:
    """Within this block (aiortc gathers inside setLocalDescription), gather on these
    addresses, and bind to a port of ``ports`` (first, last) when given: one process can hold
    legs bound to different interfaces (the gateway and the simulator's phones in one test)."""
    token = _leg_addresses.set(list(addresses) if addresses else None)
    port_token = _leg_ports.set(ports)
    if ports is not None:
        _bind_in_range(asyncio.get_running_loop())
    try:
        yield
    finally:
        _leg_addresses.reset(token)
        _leg_ports.reset(port_token)


_leg_ports: ContextVar[tuple[int, int] | None] = ContextVar("leg_ports", default=None)
_next_port: dict[tuple[int, int], int] = {}


def _bind_in_range(loop: asyncio.AbstractEventLoop) -> None:
    """Wrap this loop's create_datagram_endpoint once: a port-0 bind made while a leg with a
    port range gathers gets the next free port of that range (rotating, so a port just freed
    by an ended call is not reused at once)."""
    if getattr(loop, "_gateway_port_range_hook", False):
        return
    original = loop.create_datagram_endpoint

    async def create_datagram_endpoint(protocol_factory, local_addr=None, **kwargs):  # type: ignore[no-untyped-def]
        ports = _leg_ports.get()
        if ports is None or local_addr is None or local_addr[1] != 0:
            return await original(protocol_factory, local_addr=local_addr, **kwargs)
        first, last = ports
        size = last - first + 1
        start = _next_port.get(ports, first)
        for i in range(size):
            port = first + (start - first + i) % size
            try:
                result = await original(protocol_factory, local_addr=(local_addr[0], port),
                                        **kwargs)
            except OSError:
                continue
            _next_port[ports] = first + (port - first + 1) % size
            return result
        raise OSError(f"no free UDP port in media.webrtc_ports {first}-{last} on "
                      f"{local_addr[0]}")

    loop.create_datagram_endpoint = create_datagram_endpoint  # type: ignore[method-assign]
    loop._gateway_port_range_hook = True  # type: ignore[attr-defined]


def _get_host_addresses(use_ipv4: bool, use_ipv6: bool) -> list[str]:
    chosen = _leg_addresses.get() or _host_addresses
    if chosen is None:
        return _original_get_host_addresses(use_ipv4, use_ipv6)
    return [a for a in chosen if (":" in a and use_ipv6) or (":" not in a and use_ipv4)]


PacketHandler = Callable[[RtpPacket], None]


def tap_receiver(receiver: RTCRtpReceiver, on_packet: PacketHandler) -> None:
    """Deliver every incoming RTP packet of ``receiver`` to ``on_packet`` instead of aiortc's
    jitter buffer and decoder, keeping aiortc's per-SSRC statistics for RTCP."""
    streams: dict[int, StreamStatistics] = receiver._RTCRtpReceiver__remote_streams  # type: ignore[attr-defined]

    async def handle(packet: RtpPacket, arrival_time_ms: int) -> None:
        if not receiver._enabled:
            return
        # Events share the audio's sequence space: leaving them out would count them as lost.
        stats = streams.get(packet.ssrc)
        if stats is None:
            stats = streams[packet.ssrc] = StreamStatistics(48000)
        stats.add(packet)
        try:
            on_packet(packet)
        except Exception:  # one bad packet must not stop the transport's receive loop
            log.exception("media: error handling an RTP packet (PT %d)", packet.payload_type)

    receiver._handle_rtp_packet = handle  # type: ignore[method-assign]


def tap_rtcp(receiver: RTCRtpReceiver, on_rtcp: Callable[[], None]) -> None:
    """Call ``on_rtcp()`` for every RTCP packet the receiver gets (then aiortc handles it)."""
    handle = receiver._handle_rtcp_packet

    async def tapped(packet) -> None:  # type: ignore[no-untyped-def]
        on_rtcp()
        await handle(packet)

    receiver._handle_rtcp_packet = tapped  # type: ignore[method-assign]


def make_ice_controlled(pc: RTCPeerConnection) -> None:
    """Turn an offerer's ICE agents into the controlled side. aiortc makes the offerer
    controlling; an ICE-lite peer (what WhatsApp's offer says it is) is always controlled, so
    a full agent standing in for one must be too, or both sides would try to control."""
    for transport in pc._RTCPeerConnection__iceTransports:  # type: ignore[attr-defined]
        transport._connection.ice_controlling = False


def receiver_statistics(receiver: RTCRtpReceiver) -> dict[int, StreamStatistics]:
    return receiver._RTCRtpReceiver__remote_streams  # type: ignore[attr-defined]


class PayloadTypeRewriter:
    """Rewrites the payload type and marker of chosen outgoing RTP packets on one transport.

    The sending track announces, just before it hands aiortc a packet, what the next RTP
    packet's PT and marker must be; aiortc's sender then serialises that packet and calls the
    transport's ``_send_rtp`` with no await point in between (rtcrtpsender.py ``_run_rtp``),
    so the very next RTP packet on this transport is the one announced.
    """

    def __init__(self, transport: RTCDtlsTransport):
        self._pending: tuple[int, bool] | None = None
        self._send: Callable[[bytes], Awaitable[None]] = transport._send_rtp
        transport._send_rtp = self._send_rtp  # type: ignore[method-assign]

    def rewrite_next(self, payload_type: int, marker: bool) -> None:
        self._pending = (payload_type, marker)

    async def _send_rtp(self, data: bytes) -> None:
        if self._pending is not None and not is_rtcp(data):
            payload_type, marker = self._pending
            self._pending = None
            data = data[:1] + bytes([(0x80 if marker else 0) | payload_type]) + data[2:]
        await self._send(data)
