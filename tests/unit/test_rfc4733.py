import pytest

from gateway.media.rfc4733 import DtmfDetector, TelephoneEvent, event_payloads


def packets(digit: str, ts: int, duration_ms: int = 100):
    return [(ts, p) for p, _marker in event_payloads(digit, duration_ms)]


def test_event_payloads_shape():
    out = list(event_payloads("5", 100))
    assert out[0][1] is True and all(m is False for _, m in out[1:])  # marker on first only
    evs = [TelephoneEvent.parse(p) for p, _ in out]
    assert all(e.event == 5 for e in evs)
    assert [e.end for e in evs][-3:] == [True, True, True] and not any(e.end for e in evs[:-3])
    assert evs[-1].duration == 800  # 100 ms at 8 kHz
    assert [e.duration for e in evs[:-3]] == sorted(e.duration for e in evs[:-3])


def test_one_digit_per_event_however_many_end_packets():
    det = DtmfDetector()
    got = []
    for ts, p in packets("1", 1000) + packets("2", 5000) + packets("#", 9000):
        got += det.feed(ts, p)
    assert [d for d, _ in got] == ["1", "2", "#"]
    assert got[0][1] == 100


def test_duplicates_and_late_packets_ignored():
    det = DtmfDetector()
    pk = packets("7", 100)
    got = []
    for ts, p in pk + pk:
        got += det.feed(ts, p)
    assert [d for d, _ in got] == ["7"]


def test_event_whose_end_packets_were_lost_is_still_reported():
    det = DtmfDetector()
    first = [x for x in packets("4", 100) if not TelephoneEvent.parse(x[1]).end]
    got = []
    for ts, p in first + packets("2", 900):
        got += det.feed(ts, p)
    assert [d for d, _ in got] == ["4", "2"]


def test_same_digit_twice_is_two_presses():
    det = DtmfDetector()
    got = []
    for ts, p in packets("9", 100) + packets("9", 2000):
        got += det.feed(ts, p)
    assert [d for d, _ in got] == ["9", "9"]


def test_bad_input():
    assert DtmfDetector().feed(1, b"\x01") == []
    with pytest.raises(ValueError):
        list(event_payloads("x"))


def presses_across_the_wrap(count: int, start: int, step: int = 1600) -> list[tuple[int, bytes]]:
    """``count`` presses 200 ms apart, from ``start`` on, each with its three end packets
    sent twice (a retransmitting sender): timestamps wrap at 2**32 along the way."""
    out = []
    for i in range(count):
        ts = (start + i * step) & 0xFFFFFFFF
        out += packets("0123456789"[i % 10], ts) * 2
    return out


@pytest.mark.parametrize("start", [0xFFFFFFFF - 40 * 1600, 0xFFFFFFFF - 800, 0x7FFFFFFF - 800])
def test_each_press_once_across_the_timestamp_wrap(start):
    """The detector once kept the 32 largest reported timestamps: after the 2**32 wrap those
    were the oldest ones, the newest were forgotten, and a repeated end packet of a new press
    was reported again."""
    det = DtmfDetector()
    got = []
    for ts, p in presses_across_the_wrap(100, start):
        got += det.feed(ts, p)
    assert "".join(d for d, _ in got) == "0123456789" * 10


def test_a_late_packet_of_an_older_press_is_dropped_across_the_wrap():
    det = DtmfDetector()
    before, after = 0xFFFFFF00, 0x00000100  # 512 units apart, across the wrap
    got = []
    for ts, p in packets("1", before) + packets("2", after) + packets("1", before)[:2]:
        got += det.feed(ts, p)
    assert [d for d, _ in got] == ["1", "2"]


def test_a_restarted_timeline_is_not_mistaken_for_late_packets():
    """A sender whose timestamps jump far back (a new stream) keeps its digits."""
    det = DtmfDetector()
    got = []
    for ts, p in packets("1", 3_000_000_000) + packets("2", 5_000) + packets("3", 6_600):
        got += det.feed(ts, p)
    assert [d for d, _ in got] == ["1", "2", "3"]
