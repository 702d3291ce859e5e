"""The Asterisk leg's UDP ports, handed out from the configured range.

A port is only given back after the call that held it is over, and the pool rotates through
the range instead of reusing the lowest free port at once, so a late RTP packet of an ended call
never lands in a new call.
"""

from __future__ import annotations

import socket

from gateway.config import PortRange
from gateway.errors import CapacityExhausted


class PortsExhausted(CapacityExhausted, RuntimeError):
    """Every port of the range is in use: the gateway is at capacity for media."""


class PortPool:
    def __init__(self, ports: PortRange):
        self.range = ports
        self._next = ports.first
        self._used: set[int] = set()

    @property
    def free(self) -> int:
        return len(self.range) - len(self._used)

    def bind(self, host: str) -> socket.socket:
        """A non-blocking UDP socket bound to a free port of the range on ``host``."""
        for _ in range(len(self.range)):
            port = self._next
            self._next = port + 1 if port < self.range.last else self.range.first
            if port in self._used:
                continue
            sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET,
                                 socket.SOCK_DGRAM)
            try:
                sock.bind((host, port))
            except OSError:  # taken by another process: try the next one
                sock.close()
                continue
            sock.setblocking(False)
            self._used.add(port)
            return sock
        raise PortsExhausted(f"no free UDP port in media.rtp_ports {self.range.first}-"
                             f"{self.range.last} on {host}")

    def release(self, port: int) -> None:
        self._used.discard(port)


