"""Ports and names for one test suite, so two suites can run side by side on one machine.

Every port a test binds comes from here: TCP ports are taken free from the kernel at the
moment they are needed, and the fixed UDP ranges the gateway's config asks for (RTP toward
Asterisk, the WebRTC leg) are blocks offset from ``$WA_TEST_AMI_PORT``, so a second suite
started with another AMI port (and ``$WA_TEST_ASTERISK_NAME``) never shares one.
"""

from __future__ import annotations

import os
import socket


def ami_port() -> int:
    return int(os.environ.get("WA_TEST_AMI_PORT", "5038"))


def suite_name() -> str:
    return os.environ.get("WA_TEST_ASTERISK_NAME", "pytest")


def instance_name(what: str) -> str:
    """A LocalAsterisk name of this suite's own (its run dir and pid file)."""
    return f"{suite_name()}-{what}"


BLOCK = 2500
"""UDP ports per suite: 42000.. for the first, 44500.. for the next, up to eight suites."""


def udp_range(offset: int, size: int) -> str:
    """``FIRST-LAST`` inside this suite's block; ``offset + size`` stays under BLOCK."""
    if offset + size > BLOCK:
        raise ValueError("a test range must fit in the suite's block")
    first = 42000 + (ami_port() - 5038) % 8 * BLOCK + offset
    return f"{first}-{first + size - 1}"


def free_tcp_port() -> int:
    """A TCP port free on 127.0.0.1 right now (the kernel's choice)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
