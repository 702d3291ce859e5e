"""What every part of the simulated Meta shares: its clock, its background tasks, and how fast
it acts.

The clock is the seam for Meta's time rules (the ``call_permissions`` rate per second, 5-minute
media URLs, 7-day permissions, 24 h limits): the simulator reads time only through it, so a
test moves it forward instead of waiting on the real one.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable
from dataclasses import dataclass
from typing import Any, Protocol


class Clock(Protocol):
    """Where the simulated Meta reads the time."""

    def now(self) -> float:
        """Wall-clock seconds since the epoch (``time.time()``): timestamps in webhooks, the
        24 h / 7-day rules."""
        ...

    def monotonic(self) -> float:
        """Seconds for intervals (``time.monotonic()``): rate limits, URL lifetimes."""
        ...


class SystemClock:
    """The real time."""

    def now(self) -> float:
        return time.time()

    def monotonic(self) -> float:
        return time.monotonic()


class Background:
    """The simulator's tasks that run beside the requests (Meta's webhooks after an answer,
    timers): kept so closing the simulator cancels every one."""

    def __init__(self) -> None:
        self._tasks: set[asyncio.Task[Any]] = set()

    def spawn(self, coro: Awaitable[Any]) -> asyncio.Task[Any]:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)


@dataclass
class MetaTimings:
    """How fast the simulated Meta acts; the admin control API changes them while it runs
    (``/_sim/settings``)."""

    ring_timeout_s: float = 60.0
    """How long a phone rings unanswered before giving up (§8: about 30-60 s)."""
    connect_webhook_delay_s: float = 0.2
    """After a business's connect: until Meta's connect webhook with the answer."""
    ringing_delay_s: float = 0.3
    """After that webhook: until the user's phone rings (RINGING)."""
    callback_grant_delay_s: float = 5.0
    """After a user's call starts: until the automatic callback permission arrives (the
    samples' timestamps are 5 s apart)."""
    accept_latency_s: float = 0.0
    """How long Meta takes to answer an ``accept`` (the call is answered when the 200 goes
    out). Real ones take from tens of ms to over a second; a business must hold the PBX's
    first prompt that long (docs/meta-calling.md §9) and still play it whole."""
