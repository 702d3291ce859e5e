"""Waits on what the simulator and a business leg report as it happens (a call's story, a
leg's audio and digits): tests wait on these instead of sleeping."""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections.abc import Callable

from gateway.media.codecs import RATE
from gateway.simulator.transcript import Transcript


async def transcript_says(transcript: Transcript, pattern: str, count: int = 1,
                          timeout: float = 10, after: float | None = None) -> list[str]:
    """Until the call's story has ``count`` lines matching ``pattern`` (lines are pushed to
    followers as they are written: no polling), written after ``after`` (seconds since the
    call started) if given; returns them."""
    found: list[str] = []

    async def follow() -> list[str]:
        async with contextlib.aclosing(transcript.follow()) as lines:
            async for line in lines:
                if after is not None and float(line.split(" ", 1)[0]) <= after:
                    continue
                if re.search(pattern, line):
                    found.append(line)
                    if len(found) >= count:
                        return found
        raise AssertionError(f"the story ended with {len(found)} of {count} {pattern!r}")

    try:
        return await asyncio.wait_for(follow(), timeout)
    except TimeoutError:
        raise AssertionError(f"{len(found)} of {count} lines {pattern!r} in {timeout:g} s:\n"
                             f"{transcript}") from None


class Received:
    """What a business's leg got (``leg.on_audio = received.audio``, ``leg.on_dtmf =
    received.dtmf``), with waits on it that wake as it arrives."""

    def __init__(self) -> None:
        self.pcm = bytearray()
        self.digits: list[str] = []
        self._waiters: list[tuple[Callable[[], bool], asyncio.Future[None]]] = []

    def audio(self, pcm: bytes) -> None:
        self.pcm += pcm
        self._check()

    def dtmf(self, digit: str, duration_ms: int) -> None:
        self.digits.append(digit)
        self._check()

    def _check(self) -> None:
        for predicate, fut in self._waiters:
            if not fut.done() and predicate():
                fut.set_result(None)

    async def until(self, predicate: Callable[[], bool], timeout: float = 10) -> None:
        if predicate():
            return
        fut = asyncio.get_running_loop().create_future()
        entry = (predicate, fut)
        self._waiters.append(entry)
        try:
            await asyncio.wait_for(fut, timeout)
        finally:
            self._waiters.remove(entry)

    async def audio_seconds(self, seconds: float, since: int = 0) -> bytes:
        """Until ``seconds`` of audio arrived after byte ``since``; returns that audio."""
        size = int(seconds * 2 * RATE)
        await self.until(lambda: len(self.pcm) - since >= size)
        return bytes(self.pcm[since:since + size])

    async def digit_count(self, n: int) -> list[str]:
        await self.until(lambda: len(self.digits) >= n)
        return self.digits
