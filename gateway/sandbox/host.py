"""What the host says about itself, for the local Asterisk and the demo: whether a TCP port is
free, a process alive, a directory a mount point. Plain OS questions, kept apart from the
chroot runner so each reads on its own."""

from __future__ import annotations

import errno
import os
import socket
from pathlib import Path


def port_is_free(port: int) -> bool:
    """Whether a TCP listener could bind 127.0.0.1:``port`` now (the demo and AMI checks)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError as exc:
            if exc.errno != errno.EADDRINUSE:
                raise
            return False
    return True


def pid_alive(pid: int) -> bool:
    return Path(f"/proc/{pid}").exists()


def is_mount(path: Path) -> bool:
    return os.path.ismount(path)
