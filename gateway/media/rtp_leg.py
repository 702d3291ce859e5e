"""The Asterisk leg: plain RTP between one UDP socket of ours and a UnicastRTP channel.

Asterisk's strict RTP accepts packets at once only from the address written in the dial string
(docs/asterisk-handoff.md), so every packet leaves from the socket whose port that string names.

Audio toward Asterisk is paced here, one 20 ms frame every 20 ms, silence when WhatsApp sent
nothing: measured on Asterisk 22, a UnicastRTP channel that receives no RTP does not advance
its prompts (Playback/Background/Read's beep stall), so a gap in WhatsApp's stream must never
become a gap toward Asterisk. A short queue (at most MAX_QUEUED_FRAMES) absorbs network jitter.
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

from gateway.media.codecs import (
    AsteriskCodec,
    AsteriskTranscoder,
    G711Passthrough,
    trim_backlog,
)

log = logging.getLogger(__name__)

PTIME = 0.020
MAX_QUEUED_FRAMES = 5
"""100 ms of WhatsApp audio waiting for its slot; beyond that the oldest is dropped."""


class _Protocol(asyncio.DatagramProtocol):
    def __init__(self, leg: AsteriskRtpLeg):
        self.leg = leg

    def datagram_received(self, data: bytes, addr: tuple) -> None:
        self.leg._on_datagram(data, addr)

    def error_received(self, exc: Exception) -> None:
        log.debug("rtp leg %s: socket error %s", self.leg.name, exc)


class AsteriskRtpLeg:
    """One UDP socket toward Asterisk; 20 ms frames in and out: 16 kHz PCM, or with
    ``passthrough`` the G.711 payloads themselves (WhatsApp's PCMU/PCMA is Asterisk's
    ulaw/alaw: only the RTP header is rewritten)."""

    def __init__(self, sock: socket.socket, codec: AsteriskCodec, *, name: str = "",
                 passthrough: bool = False):
        self.name = name
        self.sock = sock
        self.local = sock.getsockname()[:2]
        self.codec = codec
        self._transcoder: AsteriskTranscoder | G711Passthrough = \
            G711Passthrough(codec) if passthrough else AsteriskTranscoder(codec)
        self.format = self._transcoder.format
        """What a frame of ``send()`` and ``on_audio`` holds."""
        self.remote: tuple[str, int] | None = None
        self.on_audio: Callable[[bytes], None] = lambda pcm: None
        self._transport: asyncio.DatagramTransport | None = None
        self._seq = random.randrange(1 << 16)
        self._ts = random.randrange(1 << 32)
        self._ssrc = random.randrange(1 << 32)
        self.packets_sent = 0
        self.packets_received = 0
        self.first_packet = asyncio.Event()
        self._queue = bytearray()
        self._pacer: asyncio.Task | None = None

    @property
    def port(self) -> int:
        return self.local[1]

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._transport, _ = await loop.create_datagram_endpoint(
            lambda: _Protocol(self), sock=self.sock)

    def set_remote(self, host: str, port: int, *, paced_outside: bool = False) -> None:
        """Where Asterisk listens (``UNICASTRTP_LOCAL_ADDRESS``/``_PORT`` from Getvar); starts
        the paced stream toward it, on its own timer unless ``paced_outside``: then the
        caller calls :meth:`tick` every 20 ms (the WhatsApp leg's sender does, so a call runs
        one timer where it ran two)."""
        self.remote = (host, port)
        if self._pacer is None and not paced_outside:
            self._pacer = asyncio.ensure_future(self._pace())

    def send(self, frames: bytes) -> None:
        """Queue audio (of ``self.format``) toward Asterisk; the pacer sends it in 20 ms
        frames."""
        self._queue += frames
        excess = len(self._queue) - MAX_QUEUED_FRAMES * self.format.frame_bytes
        if excess > 0:
            del self._queue[:excess]

    def tick(self) -> None:
        """Send the next 20 ms frame toward Asterisk: queued audio, or silence."""
        size = self.format.frame_bytes
        trim_backlog(self._queue, fmt=self.format)
        if len(self._queue) >= size:
            frame = bytes(self._queue[:size])
            del self._queue[:size]
        else:
            frame = self.format.silence
        self._send_frame(frame)

    async def _pace(self) -> None:
        loop = asyncio.get_running_loop()
        start = loop.time()
        n = 0
        while self._transport is not None:
            self.tick()
            n += 1
            delay = start + n * PTIME - loop.time()
            if delay < -0.2:  # the loop stalled: resynchronise instead of bursting
                start, n, delay = loop.time(), 0, 0.0
            await asyncio.sleep(max(0.0, delay))

    def _send_frame(self, frame: bytes) -> None:
        if self._transport is None or self.remote is None:
            return
        payload = self._transcoder.encode(frame)
        if not payload:
            return
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
        if self._pacer is not None:
            self._pacer.cancel()
            self._pacer = None
        if self._transport is not None:
            self._transport.close()
            self._transport = None
        else:
            self.sock.close()
