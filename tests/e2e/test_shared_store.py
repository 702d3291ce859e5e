"""Several gateways, one business number (docs/scaling.md): a call store in the real PostgreSQL
tests/pg.py starts, instance ids in the channels of the real Asterisk, and the orphan sweep that
leaves another live gateway's calls alone.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import aiohttp
import psycopg
import pytest
from psycopg.rows import dict_row

from gateway.asterisk.ami import AmiClient, Event
from gateway.calls.orphans import OrphanSweep
from gateway.calls.record import CallRecord, Direction
from gateway.config import AmiSettings
from gateway.instance import new_channel_id, sweep_spares
from gateway.store import CallStore
from tests.ports import udp_range

from .conftest import API_TOKEN, number_for, open_stack

pytestmark = pytest.mark.asterisk

WAIT_S = 10.0


def user_event(name: str):
    return lambda ev: ev.get("Event") == "UserEvent" and ev.get("UserEvent") == name


def stored(pg_url: str, sql: str, *args: object) -> list[dict]:
    """What PostgreSQL itself holds (not what the gateway says it wrote)."""
    with psycopg.connect(pg_url, row_factory=dict_row) as db:
        return db.execute(sql, args).fetchall()


@pytest.mark.postgres
async def test_an_inbound_call_is_recorded_in_postgresql_under_its_instance(
        asterisk, pg_url: str, tmp_path) -> None:
    async with open_stack(asterisk, store={"path": str(tmp_path / "a.sqlite3"), "url": pg_url},
                          gateway={"instance_id": "gw-a"}) as stack:
        call = await stack.place_call("test-marker", from_wa_id="5511999990000",
                                      profile_name="Maria")
        marker = await stack.wait_event(user_event("TestMarker"))
        assert marker["Uniqueid"].startswith("wa-gw-a-")  # the instance is in the channel id
        await asyncio.wait_for(call.accepted.wait(), WAIT_S)
        await call.hangup()
        await stack.wait_idle()
    (row,) = stored(pg_url, "SELECT * FROM calls WHERE wacid = %s", call.call_id)
    assert row["owner"] == "gw-a" and row["channel_id"] == marker["Uniqueid"]
    assert row["outcome"] == "answered" and row["hangup_side"] == "whatsapp"
    assert row["from_number"] == "5511999990000" and row["profile_name"] == "Maria"
    assert row["answered_at"] <= row["ended_at"]
    (claim,) = stored(pg_url, "SELECT owner FROM call_claims WHERE wacid = %s", call.call_id)
    assert claim["owner"] == "gw-a"


@pytest.mark.postgres
async def test_a_second_gateway_spares_the_first_ones_call_and_never_starts_it_again(
        asterisk, pg_url: str, tmp_path) -> None:
    """gw-b starts while gw-a carries a call: gw-b's orphan sweep (on its AMI connect) leaves
    gw-a's channel up, and the same connect delivered to gw-b too starts no second call."""
    async with open_stack(asterisk, store={"path": str(tmp_path / "a.sqlite3"), "url": pg_url},
                          gateway={"instance_id": "gw-a"}) as a:
        call = await a.place_call("test-wait", from_wa_id="5511999990001")
        await asyncio.wait_for(call.accepted.wait(), WAIT_S)  # after its channel is up
        (ours,) = [c["Uniqueid"] for c in await a.channels()]
        assert ours.startswith("wa-gw-a-")
        connect = next(d for d in a.sim.webhooks.deliveries
                       if call.call_id.encode() in d.body and b'"connect"' in d.body)
        async with open_stack(asterisk, store={"path": str(tmp_path / "b.sqlite3"),
                                               "url": pg_url},
                              gateway={"instance_id": "gw-b"},
                              media={"rtp_ports": udp_range(400, 200),
                                     "webrtc_ports": udp_range(600, 200)}) as b:
            # gw-b's AMI connect (inside its start) ran the sweep before start returned
            assert ours in {c["Uniqueid"] for c in await b.channels()}
            requests_before = len(b.sim.requests_for(call.call_id))
            delivery = await b.sim.send_raw_webhook(connect.body)
            assert delivery.status == 200
            await b.gateway.calls.settle(WAIT_S)
            assert b.gateway.calls.calls == {}
            assert len(b.sim.requests_for(call.call_id)) == requests_before  # no pre_accept
        assert call.call_id in a.gateway.calls.calls  # gw-a's call went on throughout
        await call.hangup()
        await a.wait_idle()
    (row,) = stored(pg_url, "SELECT owner, outcome FROM calls WHERE wacid = %s", call.call_id)
    assert row == {"owner": "gw-a", "outcome": "answered"}


@pytest.fixture
async def ami(ami_settings: AmiSettings) -> AsyncIterator[AmiClient]:
    client = AmiClient(ami_settings)  # no sweep of its own: this test sweeps by hand
    await client.connect()
    try:
        yield client
    finally:
        await client.close()


async def channels_up(ami: AmiClient, *instances: str) -> dict[str, asyncio.Future[Event]]:
    """One UnicastRTP channel per instance (as if that gateway had made it), each with a
    future that gets its Hangup event."""
    hangups: dict[str, asyncio.Future[Event]] = {}
    for instance in instances:
        channel_id = new_channel_id(instance)
        hangup = hangups[channel_id] = asyncio.get_running_loop().create_future()
        ami.add_channel_listener(channel_id, lambda ev, f=hangup: ev.get("Event") == "Hangup"
                                 and not f.done() and f.set_result(ev))
        result = await ami.originate_unicast(channel_id=channel_id, rtp_host="127.0.0.1",
                                             rtp_port=9, codec="ulaw", context="test-wait",
                                             exten="s", caller_id="<+5511999990000>",
                                             variables={})
        assert result.success, result
    return hangups


async def test_the_sweep_hangs_up_only_this_instances_orphans(
        ami: AmiClient, ami_settings: AmiSettings) -> None:
    """Channels of gw-a (no call owns it any more) and of gw-b (a live gateway's call) are up;
    gw-a's sweep hangs up its own orphan and leaves gw-b's channel alone."""
    hangups = await channels_up(ami, "gw-a", "gw-b")
    orphan, others = hangups
    restarted = AmiClient(ami_settings)
    sweep = OrphanSweep(restarted, sweep_spares("gw-a", lambda uniqueid: False)).install()
    try:
        await restarted.connect()  # the sweep runs before connect() returns
        hangup = await asyncio.wait_for(hangups[orphan], WAIT_S)
        assert hangup["Cause"] == "41"
        assert others in {c["Uniqueid"] for c in await ami.core_show_channels()}
        assert not hangups[others].done()
        assert await sweep.sweep() == []
    finally:
        await restarted.close()
        await ami.hangup(others)
    await asyncio.wait_for(hangups[others], WAIT_S)


@pytest.mark.postgres
async def test_a_starting_gateway_hangs_up_the_channels_of_a_gone_one_only(
        asterisk, ami: AmiClient, pg_url: str, tmp_path) -> None:
    """gw-dead stopped heartbeating ten minutes ago, gw-live a moment ago: starting, gw-a
    ends the caller left on gw-dead's channel (and the call at Meta, closing its record) and
    leaves gw-live's call up."""
    hangups = await channels_up(ami, "gw-dead", "gw-live")
    dead, live = hangups
    store = await CallStore.open(pg_url, owner="gw-live")  # creates the schema
    await store.heartbeat()
    left = CallRecord(wacid="wacid.left-by-dead", direction=Direction.INBOUND,
                      phone_number_id=number_for("test-wait")[0], from_number="5511999990002",
                      to_number=number_for("test-wait")[1], channel_id=dead,
                      answered_at=time.time() - 620, webhook_at=time.time() - 630,
                      owner="gw-dead")
    await store.save(left)
    await store.close()
    with psycopg.connect(pg_url, autocommit=True) as db:
        db.execute("INSERT INTO gateway_instances (instance_id, last_seen) "
                   "VALUES ('gw-dead', %s)", (time.time() - 600,))
    try:
        async with open_stack(asterisk, store={"path": str(tmp_path / "a.sqlite3"),
                                               "url": pg_url},
                              gateway={"instance_id": "gw-a"}) as a:
            assert a.gateway.neighbours.gone() == {"gw-dead"}
            hangup = await asyncio.wait_for(hangups[dead], WAIT_S)  # swept at AMI connect
            assert hangup["Cause"] == "41"
            assert live in {c["Uniqueid"] for c in await ami.core_show_channels()}
            assert not hangups[live].done()
            await a.gateway.calls.settle(WAIT_S)  # the take-over runs in the background
            # an answered call: terminate at Meta (the simulator knows no such call: refused)
            assert [r.action for r in a.sim.requests_for(left.wacid)] == ["terminate"]
            record = await a.gateway.store.get(left.wacid)
            assert record.owner == "gw-a" and record.outcome.value == "failed"
            assert record.end_reason.value == "shutdown"
            assert record.reason.startswith("gateway gw-dead went silent during the call; "
                                            "terminate on take-over by gw-a failed"), record
    finally:
        await ami.hangup(live)
    await asyncio.wait_for(hangups[live], WAIT_S)


async def ask_permission(stack, user: str) -> tuple[int, dict]:
    """``POST /v1/permission-requests`` at one gateway, as a CRM would."""
    headers = {"Authorization": f"Bearer {API_TOKEN}"}
    ask = {"to": f"+{user}", "phone_number_id": "100000000000002", "body": "May we call you?"}
    async with aiohttp.ClientSession(headers=headers) as session, session.post(
            f"{stack.gateway.url}/v1/permission-requests", json=ask) as resp:
        return resp.status, await resp.json()


@pytest.mark.postgres
async def test_two_gateways_share_the_permission_ledger_in_postgresql(
        asterisk, pg_url: str, tmp_path) -> None:
    """Meta allows one permission request per user per 24 h for the number, not per gateway:
    a request sent through gw-a is in PostgreSQL and gw-b refuses the next one (429) without
    asking Meta; asked through both at the same moment, exactly one gateway sends it."""
    async with open_stack(asterisk, store={"path": str(tmp_path / "a.sqlite3"), "url": pg_url},
                          gateway={"instance_id": "gw-a"}) as a, \
            open_stack(asterisk, store={"path": str(tmp_path / "b.sqlite3"), "url": pg_url},
                       gateway={"instance_id": "gw-b"},
                       media={"rtp_ports": udp_range(400, 200),
                              "webrtc_ports": udp_range(600, 200)}) as b:
        for sim in (a.sim, b.sim):
            for user in ("15550008801", "15550008802"):
                sim.add_user(user, permission="no_permission")
        status, body = await ask_permission(a, "15550008801")
        assert status == 201, body
        (row,) = stored(pg_url, "SELECT wa_id, message_id, counted FROM permission_requests")
        assert row == {"wa_id": "15550008801", "message_id": body["message_id"], "counted": 1}

        status, refused = await ask_permission(b, "15550008801")
        assert status == 429 and refused["error"]["reason"] == "limit_requests_24h", refused
        assert refused["error"]["next_allowed_at"] > time.time() + 23 * 3600
        assert len(a.sim.messages) == 1 and not b.sim.messages

        answers = await asyncio.gather(ask_permission(a, "15550008802"),
                                       ask_permission(b, "15550008802"))
        assert sorted(status for status, _ in answers) == [201, 429], answers
        assert len(a.sim.messages) + len(b.sim.messages) == 2
        assert len(stored(pg_url, "SELECT id FROM permission_requests WHERE wa_id = %s",
                          "15550008802")) == 1
    assert not stored(pg_url, "SELECT 1 FROM permission_requests WHERE message_id IS NULL")
    assert not (tmp_path / "a.sqlite3").exists()  # no ledger in store.path's file any more
