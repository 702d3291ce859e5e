"""RFC 4733 telephone-events (DTMF) on the wire, both directions.

Written by hand because aiortc has no telephone-event support (its issue #30 was closed as
wontfix) and the payload is four bytes: a library would add more than it saves.

Receive rule (RFC 4733 §2.5.1.3-4): one event is several packets sharing an RTP timestamp with a
growing duration, the last three flagged "end". A digit is reported once per timestamp, on the
first end packet; an event whose end packets were all lost is reported when the next event
starts, so a lost packet never loses a key press.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from dataclasses import dataclass

EVENTS = "0123456789*#ABCD"
CLOCK_RATE = 8000
"""WhatsApp only does telephone-event/8000 (docs/meta-calling.md §9)."""
SAMPLES_PER_PACKET = 160  # 20 ms at 8 kHz
END_REPEATS = 3
DEFAULT_VOLUME = 10  # -10 dBm0, the usual value for generated digits


def digit_to_event(digit: str) -> int:
    try:
        return EVENTS.index(digit.upper())
    except ValueError:
        raise ValueError(f"not a DTMF digit: {digit!r} (use 0-9, *, #, A-D)") from None


@dataclass(frozen=True)
class TelephoneEvent:
    event: int
    end: bool
    volume: int
    duration: int
    """In RTP clock units (8 kHz), counted from the event's timestamp."""

    @property
    def digit(self) -> str | None:
        return EVENTS[self.event] if self.event < len(EVENTS) else None

    def pack(self) -> bytes:
        return struct.pack("!BBH", self.event, (0x80 if self.end else 0) | (self.volume & 0x3F),
                           min(self.duration, 0xFFFF))

    @classmethod
    def parse(cls, payload: bytes) -> TelephoneEvent:
        if len(payload) < 4:
            raise ValueError(f"telephone-event payload is {len(payload)} bytes, needs 4")
        event, flags, duration = struct.unpack_from("!BBH", payload)
        return cls(event=event, end=bool(flags & 0x80), volume=flags & 0x3F, duration=duration)


class DtmfDetector:
    """Turns a stream of telephone-event packets into digits, each exactly once."""

    def __init__(self) -> None:
        self._current: int | None = None  # timestamp of the event in progress
        self._current_event: TelephoneEvent | None = None
        self._reported: dict[int, None] = {}  # timestamps already reported, oldest first

    def feed(self, timestamp: int, payload: bytes) -> list[tuple[str, int]]:
        """Return the (digit, duration_ms) pairs this packet completes."""
        try:
            ev = TelephoneEvent.parse(payload)
        except ValueError:
            return []
        done: list[tuple[str, int]] = []
        if timestamp in self._reported:
            return done  # a repeated end packet or a late duplicate
        if self._current is not None and timestamp != self._current:
            # A new event began while the previous one never showed an end packet.
            done += self._report(self._current, self._current_event)
        self._current, self._current_event = timestamp, ev
        if ev.end:
            done += self._report(timestamp, ev)
        return done

    def _report(self, timestamp: int, ev: TelephoneEvent | None) -> list[tuple[str, int]]:
        self._current, self._current_event = None, None
        self._reported[timestamp] = None
        if len(self._reported) > 64:  # keep memory bounded on very long calls: forget the
            # oldest (by arrival; timestamps wrap, so the smallest may be the newest)
            for old in list(self._reported)[:32]:
                del self._reported[old]
        if ev is None or ev.digit is None:
            return []
        return [(ev.digit, ev.duration * 1000 // CLOCK_RATE)]


def event_payloads(digit: str, duration_ms: int = 100,
                   volume: int = DEFAULT_VOLUME) -> Iterator[tuple[bytes, bool]]:
    """Payloads of one event, one per 20 ms: (payload, marker). The end packet comes 3 times."""
    event = digit_to_event(digit)
    total = max(SAMPLES_PER_PACKET, duration_ms * CLOCK_RATE // 1000)
    duration = 0
    first = True
    while duration + SAMPLES_PER_PACKET < total:
        duration += SAMPLES_PER_PACKET
        yield TelephoneEvent(event, False, volume, duration).pack(), first
        first = False
    end = TelephoneEvent(event, True, volume, total).pack()
    for _ in range(END_REPEATS):
        yield end, first
        first = False
