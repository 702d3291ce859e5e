"""The story of one simulated call, one timestamped line per step, readable by an admin.

Times are seconds since the call started (the connect webhook), e.g.
``+0.420 media connected (ICE+DTLS)``. Lines can be followed live (the control API streams them
to ``whatsapp-gateway sim call``) and read back whole after the call.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator


class Transcript:
    def __init__(self, t0: float | None = None):
        self.t0 = time.monotonic() if t0 is None else t0
        """Call start on the ``time.monotonic()`` clock."""
        self.entries: list[tuple[float, str]] = []
        self._followers: list[asyncio.Queue[str | None]] = []
        self._closed = False

    def now(self) -> float:
        """Seconds since the call started."""
        return time.monotonic() - self.t0

    def add(self, text: str, at: float | None = None) -> str:
        """Record a step; ``at`` (seconds since start) backdates it, e.g. to a window's start."""
        at = self.now() if at is None else at
        self.entries.append((at, text))
        line = self.format(at, text)
        for q in self._followers:
            q.put_nowait(line)
        return line

    @staticmethod
    def format(at: float, text: str) -> str:
        return f"+{at:.3f} {text}"

    @property
    def lines(self) -> list[str]:
        return [self.format(at, text) for at, text in self.entries]

    def close(self) -> None:
        """No more lines will come: followers stop after the last one."""
        self._closed = True
        for q in self._followers:
            q.put_nowait(None)

    async def follow(self) -> AsyncIterator[str]:
        """Every line so far, then each new one as it is added, until :meth:`close`."""
        q: asyncio.Queue[str | None] = asyncio.Queue()
        for line in self.lines:
            q.put_nowait(line)
        if self._closed:
            q.put_nowait(None)
        self._followers.append(q)
        try:
            while (line := await q.get()) is not None:
                yield line
        finally:
            self._followers.remove(q)

    def __str__(self) -> str:
        return "\n".join(self.lines)
