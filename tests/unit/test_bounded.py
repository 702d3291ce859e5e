"""The one bounded cache (gateway/bounded.py) and RTP serial-number arithmetic
(gateway/media/serial.py), across the 2**16 and 2**32 wraps."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.bounded import BoundedDict
from gateway.media.serial import seq_delta, serial_delta, ts_delta


def test_forgets_the_oldest_first():
    cache: BoundedDict[str, int] = BoundedDict(3)
    for i, key in enumerate("abcd"):
        cache[key] = i
    assert list(cache.items()) == [("b", 1), ("c", 2), ("d", 3)]
    cache["b"] = 10  # setting again keeps its place
    cache["e"] = 4
    assert list(cache) == ["c", "d", "e"] and "b" not in cache


def test_first_time_is_a_bounded_seen_set():
    seen: BoundedDict[tuple, None] = BoundedDict(2)
    assert seen.first_time(("wacid.1", "connect"))
    assert not seen.first_time(("wacid.1", "connect"))
    assert seen.first_time(("wacid.2", "connect")) and seen.first_time(("wacid.3", "connect"))
    assert len(seen) == 2
    assert seen.first_time(("wacid.1", "connect")), "forgotten once two newer ones came"


def test_size_must_be_positive():
    with pytest.raises(ValueError):
        BoundedDict(0)


@pytest.mark.parametrize(("a", "b", "delta"), [
    (1, 0, 1),
    (0, 0xFFFF, 1),  # the packet after the wrap is the next one
    (0xFFFF, 0, -1),  # and the one before it is one behind
    (5, 0xFFF0, 21),
    (0x7FFF, 0, 0x7FFF),
    (0x8000, 0, -0x8000),  # exactly half way: behind (RFC 1982 leaves it undefined)
])
def test_sequence_numbers_across_the_16_bit_wrap(a, b, delta):
    assert seq_delta(a, b) == delta


@pytest.mark.parametrize(("a", "b", "delta"), [
    (160, 0, 160),
    (0x00000060, 0xFFFFFFC0, 160),  # 20 ms at 8 kHz, across the 2**32 wrap
    (0xFFFFFFC0, 0x00000060, -160),
    (0, 0xFFFFFFFF, 1),
    (0x7FFFFFFF, 0, 0x7FFFFFFF),
    (0x80000000, 0, -0x80000000),
])
def test_timestamps_across_the_32_bit_wrap(a, b, delta):
    assert ts_delta(a, b) == delta


@given(st.integers(0, 0xFFFFFFFF), st.integers(-(1 << 31), (1 << 31) - 1))
def test_serial_delta_undoes_a_wrapped_step(start, step):
    assert serial_delta((start + step) & 0xFFFFFFFF, start, 32) == step
    assert serial_delta(start, (start + step) & 0xFFFFFFFF, 32) == (
        -step if step != -(1 << 31) else -(1 << 31))
