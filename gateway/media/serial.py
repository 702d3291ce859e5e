"""RTP sequence numbers and timestamps compared the way they wrap (RFC 3550 §5.1, RFC 1982).

A sequence number is 16 bits and wraps every 65536 packets (22 minutes of 20 ms audio); a
timestamp is 32 bits from a random start (RFC 3550 §5.1), so it can wrap at any moment of any
call, at 8 kHz after 6 days at worst and possibly in the first second. Compared as plain
integers, the packet after the wrap looks 4 billion units *older*. Serial-number arithmetic
(RFC 1982) reads the shorter way round: ``b`` is after ``a`` when it is less than half the
number space ahead. At exactly half the answer is undefined by RFC 1982; here it is "behind".
"""

from __future__ import annotations

SEQ_BITS = 16
TS_BITS = 32


def serial_delta(a: int, b: int, bits: int) -> int:
    """How far ``a`` is ahead of ``b`` (negative: behind), the shorter way round a space of
    ``2**bits``: in ``[-2**(bits-1), 2**(bits-1))``."""
    half = 1 << (bits - 1)
    return ((a - b + half) & ((1 << bits) - 1)) - half


def seq_delta(a: int, b: int) -> int:
    """How many sequence numbers ``a`` is ahead of ``b`` (1: the next packet)."""
    return serial_delta(a, b, SEQ_BITS)


def ts_delta(a: int, b: int) -> int:
    """How many RTP clock units timestamp ``a`` is ahead of ``b``."""
    return serial_delta(a, b, TS_BITS)
