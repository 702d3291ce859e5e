"""The Asterisk leg: plain RTP between one UDP socket of ours and a UnicastRTP channel.

Asterisk's strict RTP accepts packets at once only from the address written in the dial string
(asterisk-handoff.md), so every packet leaves from the socket whose port that string names.
Packets use aiortc's RtpPacket (parse/serialize) and PyAV codecs; nothing here is hand-rolled
beyond sequence/timestamp bookkeeping.
"""

from __future__ import annotations

import asyncio
import logging
import random
import socket
from collections.abc import Callable

from aiortc.rtp import RtpPacket

from gateway.media.codecs import AsteriskCodec, AsteriskTranscoder

log = logging.getLogger(__name__)


class _Protocol(asyncio.DatagramProtocol):
    def __init__(self, leg: AsteriskRtpLeg):
        self.leg = leg

    def datagram_received(self, data: bytes, addr: tuple) -> None:
        self.leg._on_datagram(data, addr)

    def error_received(self, exc: Exception) -> None:
        log.debug("rtp leg %s: socket error %s", self.leg.name, exc)


class AsteriskRtpLeg:
    """One UDP socket toward Asterisk; 20 ms frames of 16 kHz PCM in and out."""

    def __init__(self, sock: socket.socket, codec: AsteriskCodec, *, name: str = ""):
        self.name = name
        self.sock = sock
        self.local = sock.getsockname()[:2]
        self.codec = codec
        self._transcoder = AsteriskTranscoder(codec)
        self.remote: tuple[str, int] | None = None
        self.on_audio: Callable[[bytes], None] = lambda pcm: None
        self._transport: asyncio.DatagramTransport | None = None
        self._seq = random.randrange(1 << 16)
        self._ts = random.randrange(1 << 32)
        self._ssrc = random.randrange(1 << 32)
        self.packets_sent = 0
        self.packets_received = 0
        self.first_packet = asyncio.Event()

    @property
    def port(self) -> int:
        return self.local[1]

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._transport, _ = await loop.create_datagram_endpoint(
            lambda: _Protocol(self), sock=self.sock)

    def set_remote(self, host: str, port: int) -> None:
        """Where Asterisk listens (``UNICASTRTP_LOCAL_ADDRESS``/``_PORT`` from Getvar)."""
        self.remote = (host, port)

    def send(self, pcm16k: bytes, *, lost_frames: int = 0) -> None:
        """Encode one 20 ms frame and send it; ``lost_frames`` advances the timestamp over a gap
        so Asterisk's jitter handling sees the real timing."""
        if self._transport is None or self.remote is None:
            return
        payload = self._transcoder.encode(pcm16k)
        if not payload:
            return
        self._ts = (self._ts + lost_frames * self.codec.timestamp_step) & 0xFFFFFFFF
        packet = RtpPacket(payload_type=self.codec.payload_type, sequence_number=self._seq,
                           timestamp=self._ts, ssrc=self._ssrc, payload=payload)
        self._seq = (self._seq + 1) & 0xFFFF
        self._ts = (self._ts + self.codec.timestamp_step) & 0xFFFFFFFF
        self._transport.sendto(packet.serialize(), self.remote)
        self.packets_sent += 1

    def _on_datagram(self, data: bytes, addr: tuple) -> None:
        if self.remote is not None and (addr[0], addr[1]) != self.remote:
            return  # only Asterisk's channel may talk to this socket
        try:
            packet = RtpPacket.parse(data)
        except ValueError:
            return
        if packet.payload_type != self.codec.payload_type:
            return
        self.packets_received += 1
        self.first_packet.set()
        pcm = self._transcoder.decode(packet.payload)
        if pcm:
            self.on_audio(pcm)

    def close(self) -> None:
        if self._transport is not None:
            self._transport.close()
            self._transport = None
        else:
            self.sock.close()
