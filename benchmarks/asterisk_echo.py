"""Asterisk's own echo time: what benchmarks/concurrent_calls.py takes off its latency.

A UnicastRTP channel (ulaw) into the same ``test-echo`` dialplan the calls use, driven straight
from a UDP socket with no gateway in between: paced 20 ms frames of silence, then a loud frame;
the time until the loud frame comes back is Asterisk's echo round trip (its scheduling and
Echo(), plus loopback).
"""

from __future__ import annotations

import asyncio
import socket
import statistics
import time

from gateway.asterisk.ami import AmiClient
from gateway.config import AmiSettings, Secret

SILENT, LOUD = b"\xff" * 160, b"\x00" * 160
"""mu-law: 0xFF is the quietest level, 0x00 the loudest."""


class _Echo(asyncio.DatagramProtocol):
    def __init__(self) -> None:
        self.loud_at: asyncio.Future[float] | None = None

    def datagram_received(self, data: bytes, addr: tuple) -> None:
        if data[12:] == LOUD and self.loud_at is not None and not self.loud_at.done():
            self.loud_at.set_result(time.monotonic())


async def asterisk_echo_rtt(ami_port: int, rounds: int = 5) -> float | None:
    """Median round trip of a loud frame through Asterisk's Echo() (None: not measured)."""
    ami = AmiClient(AmiSettings(host="127.0.0.1", port=ami_port, username="gateway",
                                secret=Secret("gateway-secret")))
    loop = asyncio.get_running_loop()
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    transport, echo = await loop.create_datagram_endpoint(_Echo, sock=sock)
    channel = "wa-bench-asterisk-echo"
    try:
        await ami.connect()
        result = await ami.originate_unicast(
            channel_id=channel, rtp_host="127.0.0.1", rtp_port=sock.getsockname()[1],
            codec="ulaw", context="test-echo", exten="s", caller_id="bench", variables={})
        if not result.success:
            return None
        port = int(await ami.getvar(channel, "UNICASTRTP_LOCAL_PORT") or 0)
        seq, rtts = 0, []

        async def frame(payload: bytes) -> None:
            nonlocal seq
            header = bytes([0x80, 0]) + seq.to_bytes(2, "big") + (seq * 160).to_bytes(4, "big")
            transport.sendto(header + b"\x12\x34\x56\x78" + payload, ("127.0.0.1", port))
            seq = (seq + 1) & 0xFFFF
            await asyncio.sleep(0.02)

        for _ in range(rounds):
            for _ in range(25):
                await frame(SILENT)
            echo.loud_at = loop.create_future()
            sent = time.monotonic()
            await frame(LOUD)
            try:
                rtts.append(await asyncio.wait_for(echo.loud_at, 1.0) - sent)
            except TimeoutError:
                pass
        await ami.hangup(channel)
        return statistics.median(rtts) if rtts else None
    finally:
        transport.close()
        await ami.close()
