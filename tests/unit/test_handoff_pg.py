"""The LISTEN/NOTIFY hand-off (gateway/store/notify.py) on the real PostgreSQL tests/pg.py
starts: delivery and answer between two instances, its latency, a listening connection the
server drops, a message too large for a notification."""

from __future__ import annotations

import asyncio
import statistics
import time
from collections.abc import AsyncIterator
from typing import Any

import psycopg
import pytest

from gateway.handoff import HandOff
from gateway.store.notify import MAX_PAYLOAD, PgNotifyRouter, channel_for

pytestmark = pytest.mark.postgres

HAND_OFFS = 300


class Owner:
    """An instance's handler: answers each hand-off with when it got it."""

    def __init__(self) -> None:
        self.got: list[tuple[HandOff, float]] = []

    async def __call__(self, message: HandOff) -> dict[str, Any]:
        self.got.append((message, time.perf_counter()))
        return {"ok": True, "n": message.body.get("n")}


@pytest.fixture
async def routers(pg_url: str) -> AsyncIterator[tuple[PgNotifyRouter, PgNotifyRouter, Owner]]:
    a, b = PgNotifyRouter(pg_url, "gw-a"), PgNotifyRouter(pg_url, "gw-b")
    owner = Owner()
    await a.start(Owner())
    await b.start(owner)
    try:
        yield a, b, owner
    finally:
        await a.close()
        await b.close()


def percentile(values: list[float], p: float) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[int(p) - 1]


async def test_hand_offs_arrive_in_milliseconds_and_are_answered(routers, capsys) -> None:
    """300 events, one after another, gw-a to gw-b on loopback: one way (send to the
    handler) and back (the answer at the sender). The issue asks for tens of milliseconds."""
    a, b, owner = routers
    one_way, round_trip = [], []
    for n in range(HAND_OFFS):
        started = time.perf_counter()
        answer = await a.send("gw-b", HandOff("event", {"n": n, "pad": "x" * 300}), 5.0)
        ended = time.perf_counter()
        assert answer == {"ok": True, "n": n}
        message, got_at = owner.got[-1]
        assert message.sender == "gw-a" and message.body["n"] == n
        one_way.append(got_at - started)
        round_trip.append(ended - started)
    ms = {name: (percentile(v, 50) * 1000, percentile(v, 99) * 1000)
          for name, v in (("one way", one_way), ("round trip", round_trip))}
    with capsys.disabled():
        shown = ", ".join(f"{name} {p50:.2f}/{p99:.2f}" for name, (p50, p99) in ms.items())
        print(f"\nhand-off latency over {HAND_OFFS} NOTIFYs (ms, p50/p99): {shown}")
    assert ms["one way"][0] < 20 and ms["one way"][1] < 100
    assert ms["round trip"][1] < 150


async def test_nobody_listening_means_no_answer(routers) -> None:
    a, _, _ = routers
    assert await a.send("gw-nobody", HandOff("event", {}), 0.3) is None


async def test_a_message_too_large_for_a_notification_is_not_sent(routers) -> None:
    a, _, owner = routers
    assert await a.send("gw-b", HandOff("event", {"sdp": "x" * MAX_PAYLOAD}), 1.0) is None
    assert owner.got == []


async def test_the_listener_comes_back_after_the_server_drops_it(routers, pg_url) -> None:
    """A failover or an admin's pg_terminate_backend: the owner listens again by itself, and a
    sender that keeps trying (as gateway/handoff.py does) is answered."""
    a, b, owner = routers
    with psycopg.connect(pg_url, autocommit=True) as db:
        (killed,) = db.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE query LIKE %s",
            (f'LISTEN "{channel_for("gw-b")}"',)).fetchone()
    assert killed
    for _ in range(20):
        if await a.send("gw-b", HandOff("event", {"n": "after"}), 0.5) is not None:
            break
    else:
        raise AssertionError("gw-b never listened again")
    assert owner.got[-1][0].body == {"n": "after"}
    await asyncio.wait_for(b.listening.wait(), 1)
