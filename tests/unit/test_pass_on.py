"""A draining gateway passes a new call to a neighbour still taking calls
(gateway/calls/pass_on.py) and leaves an agent's WhatsAppDial to one (dial_claims.py): three
call managers on fakes joined by the in-memory router of test_handoff.py; the real thing (two
gateways, PostgreSQL, Asterisk) is tests/e2e/test_rolling_restart.py."""

from __future__ import annotations

import asyncio
import dataclasses

import pytest

from gateway.api import call_state
from gateway.calls.dial_claims import ClaimedDials, DialClaim
from gateway.calls.ending import What
from gateway.calls.pass_on import KIND
from gateway.calls.record import EndReason
from gateway.calls.routing import CallHandOff
from gateway.whatsapp.events import ParsedWebhook
from tests import fakes
from tests.ports import udp_range
from tests.unit.test_handoff import MemoryRouters

CALL = "wacid.unit-1"
NAMES = ("gw-a", "gw-b", "gw-c")


@dataclasses.dataclass
class Trio:
    rigs: dict[str, fakes.Rig]
    hub: MemoryRouters
    alive: dict[str, set[str]]
    """Whom each gateway's last heartbeat reading shows alive."""

    def sent(self) -> list[tuple[str, str, str]]:
        return [(s, o, m.kind) for s, o, m in self.hub.sent]

    async def settled(self) -> None:
        for r in self.rigs.values():
            assert await r.manager.settle(5)


@pytest.fixture
async def trio() -> Trio:
    hub = MemoryRouters()
    rigs: dict[str, fakes.Rig] = {}
    alive = {name: {n for n in NAMES if n != name} for name in NAMES}
    for i, name in enumerate(NAMES):
        r = fakes.rig(rtp_ports=udp_range(2330 + 10 * i, 10), gateway={"instance_id": name})
        handoff = CallHandOff(r.manager, hub.router(name), name,
                              owner_of=lambda wacid: asyncio.sleep(0, None),
                              state_of=call_state, alive=lambda name=name: alive[name])
        handoff.new_calls.order = lambda candidates: None  # sorted: gw-b is tried first
        await handoff.start()
        rigs[name] = r
    return Trio(rigs, hub, alive)


def webhook(r: fakes.Rig, *events) -> None:
    r.manager.handle(ParsedWebhook(events=list(events)))


async def test_a_new_call_at_a_draining_gateway_is_run_by_a_neighbour(trio: Trio):
    a, b = trio.rigs["gw-a"], trio.rigs["gw-b"]
    a.manager.stop_admitting()
    webhook(a, fakes.connect_event())
    await asyncio.wait_for(b.observer.reached("bridged"), 2)
    assert CALL in b.manager.calls and a.manager.calls == {}
    assert trio.sent() == [("gw-a", "gw-b", KIND)]
    assert a.graph.requests == [] and a.observer.rejected == []  # nothing said to Meta here
    assert b.graph.actions(CALL) == ["pre_accept", "accept"]


async def test_a_neighbour_draining_too_refuses_and_the_next_one_takes_it(trio: Trio):
    a, b, c = (trio.rigs[n] for n in NAMES)
    a.manager.stop_admitting()
    b.manager.stop_admitting()
    webhook(a, fakes.connect_event())
    await asyncio.wait_for(c.observer.reached("bridged"), 2)
    assert trio.sent() == [("gw-a", "gw-b", KIND), ("gw-a", "gw-c", KIND)]
    assert b.graph.requests == [] and b.observer.rejected == []


async def test_a_neighbour_without_asterisk_refuses(trio: Trio):
    a, b, c = (trio.rigs[n] for n in NAMES)
    a.manager.stop_admitting()
    b.ami.connected = False
    webhook(a, fakes.connect_event())
    await asyncio.wait_for(c.observer.reached("bridged"), 2)
    assert b.manager.calls == {} and b.graph.requests == []


async def test_a_neighbour_that_does_not_answer_is_skipped(trio: Trio):
    a, c = trio.rigs["gw-a"], trio.rigs["gw-c"]
    a.manager.stop_admitting()
    trio.hub.lose = 1  # gw-b's answer never comes
    webhook(a, fakes.connect_event())
    await asyncio.wait_for(c.observer.reached("bridged"), 2)
    assert trio.sent() == [("gw-a", "gw-b", KIND), ("gw-a", "gw-c", KIND)]


async def test_without_a_neighbour_taking_calls_the_call_is_rejected_here(trio: Trio):
    """Every neighbour draining (or none alive): as before, rejected at Meta as shutdown."""
    for r in trio.rigs.values():
        r.manager.stop_admitting()
    a = trio.rigs["gw-a"]
    webhook(a, fakes.connect_event())
    await trio.settled()
    (rejected,) = a.observer.rejected
    assert rejected.end_reason == EndReason.SHUTDOWN
    assert a.graph.actions(CALL) == ["reject"]
    assert [r.graph.requests for n, r in trio.rigs.items() if n != "gw-a"] == [[], []]
    trio.hub.sent.clear()
    trio.alive["gw-a"] = set()
    webhook(a, fakes.connect_event("wacid.unit-2"))
    await trio.settled()
    assert a.graph.actions("wacid.unit-2") == ["reject"] and trio.hub.sent == []


async def test_a_gateway_taking_calls_runs_its_new_calls_itself(trio: Trio):
    a = trio.rigs["gw-a"]
    webhook(a, fakes.connect_event())
    await asyncio.wait_for(a.observer.reached("bridged"), 2)
    assert trio.hub.sent == []


async def test_a_draining_gateway_keeps_its_own_calls_and_their_events(trio: Trio):
    """Its live call goes on; a retried connect of that call is not passed on."""
    a = trio.rigs["gw-a"]
    webhook(a, fakes.connect_event())
    await asyncio.wait_for(a.observer.reached("bridged"), 2)
    a.manager.stop_admitting()
    webhook(a, dataclasses.replace(fakes.connect_event(), timestamp=fakes.NOW + 1))
    webhook(a, fakes.terminate_event())
    await trio.settled()
    (ended,) = a.observer.ended
    assert ended.end_reason == EndReason.NORMAL
    assert trio.hub.sent == [] and a.observer.rejected == []


DIAL = {"UserEvent": "WhatsAppDial", "To": "+" + fakes.USER, "From": fakes.PNID,
        "Channel": "Local/+1@to-whatsapp-00000001;2", "Uniqueid": "1700000000.11",
        "Context": "to-whatsapp", "Exten": "+1", "Priority": "2"}


def claims_once() -> tuple[set[str], DialClaim]:
    claims: set[str] = set()

    async def claim(key: str) -> bool:
        if key in claims:
            return False
        claims.add(key)
        return True

    return claims, claim


async def test_a_whatsapp_dial_seen_by_a_draining_gateway_is_placed_by_the_other(trio: Trio):
    """The draining gateway sees the event first and would win the claim; it waits, the
    gateway still taking calls claims and dials."""
    a, b = trio.rigs["gw-a"], trio.rigs["gw-b"]
    a.manager.stop_admitting()
    claims, claim = claims_once()
    for r in (a, b):
        ClaimedDials(r.manager, claim).dial_from_dialplan(dict(DIAL))
    await asyncio.wait_for(b.observer.reached("connect_sent"), 2)
    assert await a.manager.settle(5)
    assert a.manager.outbound == {} and a.ami.setvars == [] and len(claims) == 1
    b.manager.end_all(What.SHUTDOWN)


async def test_a_whatsapp_dial_only_draining_gateways_see_fails_the_agent_as_before(
        trio: Trio):
    a = trio.rigs["gw-a"]
    a.manager.stop_admitting()
    dials = ClaimedDials(a.manager, claims_once()[1])
    dials.draining_delay_s = 0.01
    dials.dial_from_dialplan(dict(DIAL))
    assert await a.manager.settle(5)
    assert (DIAL["Channel"], "WA_DIAL_STATUS", "FAILED") in a.ami.setvars
    assert a.graph.requests == []


async def test_a_neighbour_that_did_not_answer_is_tried_last_for_the_next_calls(trio: Trio):
    a = trio.rigs["gw-a"]
    a.manager.stop_admitting()
    trio.hub.lose = 1  # gw-b stopped: its heartbeat still looks alive for up to a minute
    webhook(a, fakes.connect_event())
    await asyncio.wait_for(trio.rigs["gw-c"].observer.reached("bridged"), 2)
    trio.hub.sent.clear()
    webhook(a, fakes.connect_event("wacid.unit-2"))
    await asyncio.wait_for(trio.rigs["gw-c"].observer.reached("bridged", "wacid.unit-2"), 2)
    assert trio.sent() == [("gw-a", "gw-c", KIND)]  # gw-c first now
    for r in trio.rigs.values():
        r.manager.end_all(What.SHUTDOWN)
