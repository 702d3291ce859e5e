"""Later events of a call reach the gateway that runs it (gateway/calls/routing.py): two call
managers on fakes, joined by an in-memory router (a fake of our own CallEventRouter; the
PostgreSQL transport is tested on the real server in test_handoff_pg.py, and the whole path
end to end in tests/e2e/test_handoff.py)."""

from __future__ import annotations

import asyncio
import dataclasses
import json
from typing import Any

import pytest

from gateway.api import call_state
from gateway.calls.dial_claims import ClaimedDials, dial_key
from gateway.calls.ending import CallState, What
from gateway.calls.outbound import DialRequest, DialStatus
from gateway.calls.record import EndReason, HangupSide
from gateway.calls.routing import CallHandOff, open_handoff
from gateway.handoff import HandOff, HandOffHandler, event_from_dict, event_to_dict
from gateway.store import CallStore
from gateway.whatsapp.events import MetaError, ParsedWebhook
from tests import fakes
from tests.ports import udp_range

CALL = "wacid.unit-1"


class MemoryRouters:
    """Routers of several instances in one process; ``lose`` drops the next N messages (as a
    NOTIFY sent while the owner's listener reconnects is lost)."""

    def __init__(self) -> None:
        self.handlers: dict[str, HandOffHandler] = {}
        self.sent: list[tuple[str, str, HandOff]] = []
        self.lose = 0

    def router(self, instance: str) -> Any:
        hub = self

        class Router:
            async def start(self, handler: HandOffHandler) -> None:
                hub.handlers[instance] = handler

            async def send(self, owner: str, message: HandOff,
                           timeout_s: float) -> dict[str, Any] | None:
                hub.sent.append((instance, owner, message))
                if hub.lose:
                    hub.lose -= 1
                    return None
                return await hub.handlers[owner](dataclasses.replace(message, sender=instance))

            async def close(self) -> None:
                hub.handlers.pop(instance, None)

        return Router()


@dataclasses.dataclass
class Pair:
    a: fakes.Rig
    b: fakes.Rig
    hub: MemoryRouters
    owners: dict[str, str]
    """The store's answer to "who runs this inbound call"."""
    handoffs: dict[str, CallHandOff]


@pytest.fixture
async def pair() -> Pair:
    hub, owners = MemoryRouters(), {}

    async def owner_of(wacid: str) -> str | None:
        return owners.get(wacid)

    rigs, handoffs = [], {}
    for name, ports in (("gw-a", udp_range(2300, 10)), ("gw-b", udp_range(2310, 10))):
        r = fakes.rig(rtp_ports=ports, gateway={"instance_id": name})
        handoffs[name] = CallHandOff(r.manager, hub.router(name), name, owner_of=owner_of,
                                     state_of=call_state)
        await handoffs[name].start()
        rigs.append(r)
    return Pair(*rigs, hub, owners, handoffs)


def webhook(r: fakes.Rig, *events) -> int:
    return r.manager.handle(ParsedWebhook(events=list(events)))


def test_events_cross_as_plain_json_and_come_back_equal() -> None:
    terminate = fakes.terminate_event(errors=(MetaError(138021, "gone", "details"),),
                                      status="FAILED")
    status = fakes.status_event("wacid.x", "RINGING", callback_data="wa-gw-a-" + "0" * 32)
    for ev in (terminate, status):
        assert event_from_dict(json.loads(json.dumps(event_to_dict(ev)))) == ev


async def test_a_terminate_at_the_gateway_that_does_not_run_the_call_ends_it(pair: Pair):
    webhook(pair.a, fakes.connect_event())
    pair.owners[CALL] = "gw-a"
    await asyncio.wait_for(pair.a.observer.reached("bridged"), 2)
    webhook(pair.b, fakes.terminate_event())
    assert await pair.b.manager.settle(5) and await pair.a.manager.settle(5)
    (ended,) = pair.a.observer.ended
    assert ended.end_reason == EndReason.NORMAL and ended.hangup_side == HangupSide.WHATSAPP
    assert pair.a.ami.hangups and pair.b.ami.hangups == []
    assert [(s, o, m.kind) for s, o, m in pair.hub.sent] == [("gw-b", "gw-a", "event")]


async def test_a_lost_hand_off_is_sent_again_and_a_copy_meta_sent_the_owner_is_dropped(
        pair: Pair):
    webhook(pair.a, fakes.connect_event())
    pair.owners[CALL] = "gw-a"
    await asyncio.wait_for(pair.a.observer.reached("bridged"), 2)
    pair.hub.lose = 1
    webhook(pair.b, fakes.terminate_event())
    webhook(pair.a, fakes.terminate_event())  # Meta delivered it to both
    assert await pair.b.manager.settle(5) and await pair.a.manager.settle(5)
    assert len(pair.hub.sent) == 2  # lost once, then acknowledged
    assert len(pair.a.observer.ended) == 1


async def test_a_terminate_while_a_duplicate_connect_is_being_claimed_reaches_the_owner(
        pair: Pair):
    """gw-b got the same connect and is still asking the store (it will lose the claim) when
    the terminate lands there too: the store says gw-a runs the call, so it goes to gw-a."""
    webhook(pair.a, fakes.connect_event())
    pair.owners[CALL] = "gw-a"
    await asyncio.wait_for(pair.a.observer.reached("bridged"), 2)
    claim_answered = asyncio.Event()

    async def slow_claim(wacid: str) -> bool:
        await claim_answered.wait()
        return True  # taken: gw-a claimed it first

    pair.b.manager.known_call = slow_claim
    webhook(pair.b, fakes.connect_event())
    webhook(pair.b, fakes.terminate_event())
    assert await pair.a.manager.settle(5)  # its call task ends only on the terminate
    assert len(pair.a.observer.ended) == 1
    claim_answered.set()
    assert await pair.b.manager.settle(5)
    assert pair.b.graph.requests == [] and pair.b.manager.calls == {}


async def test_a_terminate_of_a_call_no_gateway_runs_is_tombstoned_where_it_landed(
        pair: Pair):
    """Before its connect (out of order): the call must never start, as on one gateway."""
    webhook(pair.b, fakes.terminate_event())
    assert await pair.b.manager.settle(5)
    assert pair.hub.sent == []
    webhook(pair.b, fakes.connect_event())
    assert await pair.b.manager.settle(5)
    assert pair.b.graph.requests == [] and pair.b.manager.calls == {}


async def test_outbound_status_and_api_requests_reach_the_owner(pair: Pair):
    """The callback data names the owner: a status at gw-b rings gw-a's call; GET and DELETE
    at gw-b answer with gw-a's live call, and DELETE ends it there."""
    call = pair.a.manager.dial(DialRequest(to=fakes.USER, phone_number_id=fakes.PNID,
                                           agent_channel="PJSIP/agent-1"))
    await asyncio.wait_for(pair.a.observer.reached("connect_sent"), 2)
    webhook(pair.b, fakes.status_event(call.record.wacid, "RINGING",
                                       callback_data=call.gateway_id))
    await pair.b.manager.settle(5)
    assert call.state == CallState.RINGING
    b_handoff = pair.handoffs["gw-b"]
    seen = await b_handoff.get_call(call.gateway_id)
    assert seen["id"] == call.gateway_id and seen["state"] == "ringing"
    ended = await b_handoff.delete_call(call.gateway_id)
    assert ended["state"] == "ended" and call.status == DialStatus.CANCEL
    assert await b_handoff.get_call("wa-gw-b-" + "1" * 32) is None  # its own: not asked


async def test_an_owner_that_is_gone_gets_nothing(pair: Pair):
    webhook(pair.a, fakes.connect_event())
    pair.owners[CALL] = "gw-gone"
    await asyncio.wait_for(pair.a.observer.reached("bridged"), 2)
    b_handoff = pair.handoffs["gw-b"]
    b_handoff.gone = lambda: {"gw-gone"}
    webhook(pair.b, fakes.terminate_event())
    assert await pair.b.manager.settle(5)
    assert pair.hub.sent == []


async def test_one_whatsapp_dial_seen_by_two_gateways_is_placed_once():
    claims: set[str] = set()

    async def claim(key: str) -> bool:
        if key in claims:
            return False
        claims.add(key)
        return True

    rigs = [fakes.rig(rtp_ports=udp_range(2320 + 10 * i, 10)) for i in range(2)]
    event = {"UserEvent": "WhatsAppDial", "To": "+" + fakes.USER, "From": fakes.PNID,
             "Channel": "Local/+1@to-whatsapp-00000001;2", "Uniqueid": "1700000000.11",
             "Context": "to-whatsapp", "Exten": "+1", "Priority": "2"}
    for r in rigs:
        ClaimedDials(r.manager, claim).dial_from_dialplan(dict(event))
    placed = [asyncio.ensure_future(r.observer.reached("connect_sent")) for r in rigs]
    done, pending = await asyncio.wait(placed, timeout=5, return_when=asyncio.FIRST_COMPLETED)
    assert len(done) == 1 and len(claims) == 1
    (loser,) = [r for r, p in zip(rigs, placed, strict=True) if p in pending]
    assert loser.manager.outbound == {} and loser.graph.requests == []
    for r in rigs:
        r.manager.end_all(What.SHUTDOWN)
        assert await r.manager.settle(5)
    for p in pending:
        p.cancel()


async def test_a_whatsapp_dial_no_store_can_claim_fails_the_agent_and_calls_nobody():
    async def down(key: str) -> bool:
        raise OSError("connection refused")

    r = fakes.rig()
    agent = "Local/+1@to-whatsapp-00000001;2"
    ClaimedDials(r.manager, down).dial_from_dialplan({"To": "+" + fakes.USER, "From": fakes.PNID,
                                  "Channel": agent, "Uniqueid": "1700000000.12"})
    assert await r.manager.settle(5)
    assert r.ami.setvars == [(agent, "WA_DIAL_STATUS", "FAILED")]
    assert r.graph.requests == []


def test_a_whatsapp_dial_is_named_by_its_channel_and_dialplan_step():
    event = {"Uniqueid": "1700000000.11", "Channel": "Local/+1@to-whatsapp-00000001;2",
             "Context": "to-whatsapp", "Exten": "+1", "Priority": "2"}
    assert dial_key(event) == dial_key(dict(event))
    assert dial_key(event) != dial_key({**event, "Priority": "7"})
    assert dial_key(event) != dial_key({**event, "Uniqueid": "1700000000.12"})


async def test_alone_on_sqlite_nothing_is_handed_off(tmp_path):
    store = await CallStore.open(tmp_path / "calls.sqlite3", owner="gw-a")
    try:
        r = fakes.rig()
        assert await open_handoff(r.manager, store, r.manager.deps.config, set) is None
        assert r.manager.event_hooks == []
    finally:
        await store.close()
