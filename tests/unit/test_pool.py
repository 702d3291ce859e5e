"""asterisk.servers: which Asterisk a new call goes to (gateway/asterisk/pool.py), and that a
call keeps its server for its whole life, on in-memory fakes of the AMI (tests/fakes.py).
tests/e2e/test_failover.py proves the same against two real Asterisks."""

from __future__ import annotations

import asyncio

import pytest

from gateway.asterisk.pool import AsteriskPool
from gateway.calls.ending import CallState, What
from gateway.calls.record import EndReason, HangupSide, Outcome
from gateway.whatsapp.events import ParsedWebhook
from tests import fakes


def pool_rig(policy: str = "failover") -> tuple[fakes.Rig, fakes.FakeAmi, fakes.FakeAmi]:
    """A rig whose manager places calls on two fake servers; the rig's own is the primary."""
    r = fakes.rig()
    primary, secondary = r.ami, fakes.FakeAmi()
    r.manager.servers = AsteriskPool([primary, secondary], policy)  # type: ignore[list-item]
    return r, primary, secondary


async def answered(r: fakes.Rig, call_id: str):
    r.manager.handle(ParsedWebhook(events=[fakes.connect_event(call_id)]))
    call = r.manager.find(call_id)
    assert call is not None, f"{call_id} was not admitted"
    await asyncio.wait_for(r.observer.reached("bridged", call_id), 2)
    assert call.state == CallState.ANSWERED
    return call


def test_failover_takes_the_first_connected_server_in_list_order():
    a, b, c = fakes.FakeAmi(), fakes.FakeAmi(), fakes.FakeAmi()
    pool = AsteriskPool([a, b, c])  # type: ignore[list-item]
    assert [pool.pick() for _ in range(3)] == [a, a, a]
    a.connected = False
    assert pool.pick() is b and pool.connected
    a.connected = b.connected = c.connected = False
    assert pool.pick() is None and not pool.connected
    b.connected = True
    assert pool.pick() is b


def test_round_robin_takes_turns_among_the_connected_servers():
    a, b, c = fakes.FakeAmi(), fakes.FakeAmi(), fakes.FakeAmi()
    pool = AsteriskPool([a, b, c], "round_robin")  # type: ignore[list-item]
    assert [pool.pick() for _ in range(6)] == [a, b, c, a, b, c]
    b.connected = False
    picked = [pool.pick() for _ in range(4)]
    assert b not in picked and set(picked) == {a, c}


def test_a_pool_needs_a_server_and_a_known_policy():
    with pytest.raises(ValueError):
        AsteriskPool([])
    with pytest.raises(ValueError):
        AsteriskPool([fakes.FakeAmi()], "random")  # type: ignore[list-item]


async def test_a_call_keeps_its_server_and_only_the_dead_servers_calls_end():
    r, primary, secondary = pool_rig()
    first = await answered(r, "wacid.on-primary")
    assert [o["channel_id"] for o in primary.originates] == [first.channel_id]
    primary.connected = False  # the primary dies: new calls go to the secondary
    second = await answered(r, "wacid.on-secondary")
    assert [o["channel_id"] for o in secondary.originates] == [second.channel_id]
    assert len(primary.originates) == 1
    # after the grace the app ends the dead server's calls, and only those
    assert r.manager.end_all(What.AMI_LOST, "primary gone", on=primary) == 1
    await asyncio.wait_for(first.done.wait(), 5)
    assert r.manager.find("wacid.on-secondary") is second and not second.done.is_set()
    ended = {rec.wacid: rec for rec in r.observer.ended}
    assert ended["wacid.on-primary"].end_reason == EndReason.ASTERISK_DOWN
    assert r.graph.actions("wacid.on-primary")[-1] == "terminate"
    # the secondary's call is hung up on the secondary, where its channel is
    assert r.manager.end("wacid.on-secondary", What.API_HANGUP)
    assert await r.manager.settle(5)
    assert (second.channel_id, 16) in secondary.hangups
    assert all(ch != second.channel_id for ch, _ in primary.hangups)


async def test_admission_refuses_only_when_no_server_is_connected():
    r, primary, secondary = pool_rig()
    primary.connected = False
    await answered(r, "wacid.one-left")
    secondary.connected = False
    r.manager.handle(ParsedWebhook(events=[fakes.connect_event("wacid.none-left")]))
    r.manager.end_all(What.SHUTDOWN)
    assert await r.manager.settle(5)
    (refused,) = r.observer.rejected
    assert (refused.wacid, refused.end_reason, refused.outcome, refused.hangup_side) == \
        ("wacid.none-left", EndReason.ASTERISK_DOWN, Outcome.REJECTED, HangupSide.GATEWAY)


async def test_round_robin_spreads_calls_over_both_servers():
    r, primary, secondary = pool_rig("round_robin")
    one = await answered(r, "wacid.rr-1")
    two = await answered(r, "wacid.rr-2")
    assert [o["channel_id"] for o in primary.originates] == [one.channel_id]
    assert [o["channel_id"] for o in secondary.originates] == [two.channel_id]
    r.manager.end_all(What.SHUTDOWN)
    assert await r.manager.settle(5)


async def test_a_whatsapp_dial_is_answered_on_the_server_that_sent_it():
    r, primary, secondary = pool_rig()
    agent = "PJSIP/agent-00000002"
    refused = r.manager.dial_from_dialplan({"To": "not a number", "From": fakes.PNID,
                                            "Channel": agent}, secondary)
    assert refused is None
    assert await r.manager.settle(5)
    assert secondary.setvars == [(agent, "WA_DIAL_STATUS", "FAILED")]
    assert secondary.hangups == [(agent, 41)] and primary.setvars == primary.hangups == []
    call = r.manager.dial_from_dialplan({"To": "+" + fakes.USER, "From": fakes.PNID,
                                         "Channel": agent}, secondary)
    assert call is not None and call.deps.ami is secondary
    r.manager.end_all(What.SHUTDOWN)
    assert await r.manager.settle(5)
    assert (agent, "WA_DIAL_STATUS", "FAILED") in secondary.setvars[1:]
    assert primary.setvars == []
