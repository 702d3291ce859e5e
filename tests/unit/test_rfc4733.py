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
