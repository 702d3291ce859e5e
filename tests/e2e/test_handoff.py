"""Two gateways, one PostgreSQL, one Asterisk, one simulated Meta (docs/scaling.md): webhooks
land on either gateway at random, as behind a load balancer. Every call lands once; a
terminate, a status or an API request that reaches the gateway not running the call is handed
to the one that does (gateway/calls/routing.py, over LISTEN/NOTIFY); one agent's WhatsAppDial
seen by both gateways makes one outbound call."""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections.abc import AsyncIterator
from dataclasses import dataclass

import aiohttp
import psycopg
import pytest
from psycopg.rows import dict_row

from gateway.app import Gateway
from gateway.media import aiortc_hooks
from gateway.simulator.cloud_api import CloudApiSimulator
from tests.ports import udp_range

from .conftest import (
    API_TOKEN,
    make_config,
    number_for,
    start_simulator,
)

pytestmark = [pytest.mark.asterisk, pytest.mark.postgres]

WAIT_S = 15.0
USER = "15550007777"
AGENT = f"Local/+{USER}@to-whatsapp"


@dataclass
class Pair:
    sim: CloudApiSimulator
    gateways: dict[str, Gateway]

    def webhooks_to(self, instance: str) -> None:
        """The load balancer sends Meta's next webhooks to this gateway."""
        self.sim.webhook_url = f"{self.gateways[instance].url}/webhook"

    async def channels(self) -> list[dict]:
        gateway = next(iter(self.gateways.values()))
        return [c for c in await gateway.ami.core_show_channels()
                if c.get("Uniqueid", "").startswith("wa-")]

    async def idle(self, timeout: float = WAIT_S) -> None:
        """Until no gateway holds a call, Asterisk no channel of ours, and the records of
        ended calls are written."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            for g in self.gateways.values():
                await g.calls.settle(max(0.1, deadline - loop.time()))
            live = [c for g in self.gateways.values() for c in g.calls.live_calls()]
            if not live and not await self.channels():
                for g in self.gateways.values():
                    await asyncio.wait_for(g.store.writes.drained.wait(), timeout)
                return
            if loop.time() > deadline:
                raise AssertionError(f"not idle: calls={live} channels={await self.channels()}")
            await asyncio.sleep(0.05)  # Asterisk removes a hung-up channel asynchronously

    async def api(self, instance: str, method: str, path: str, body=None) -> tuple[int, dict]:
        async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {API_TOKEN}"}) as s:
            async with s.request(method, f"{self.gateways[instance].url}{path}",
                                 json=body) as resp:
                return resp.status, await resp.json()


@pytest.fixture
async def pair(asterisk, pg_url: str, tmp_path) -> AsyncIterator[Pair]:
    aiortc_hooks.install()
    aiortc_hooks.set_host_addresses(["127.0.0.1", "::1"])
    sim = await start_simulator()
    async with contextlib.AsyncExitStack() as running:
        running.push_async_callback(sim.close)
        gateways = {}
        for i, name in enumerate(("gw-a", "gw-b")):
            gateway = Gateway(make_config(
                sim.url, asterisk.ami_port, gateway={"instance_id": name},
                store={"path": str(tmp_path / f"{name}.sqlite3"), "url": pg_url},
                media={"rtp_ports": udp_range(400 * i, 200),
                       "webrtc_ports": udp_range(400 * i + 200, 200)}))
            await gateway.start()
            running.push_async_callback(gateway.stop)
            gateways[name] = gateway
        sim.webhook_url = f"{gateways['gw-a'].url}/webhook"
        yield Pair(sim, gateways)


def stored(pg_url: str, sql: str, *args: object) -> list[dict]:
    """What PostgreSQL itself holds (not what a gateway says it wrote)."""
    with psycopg.connect(pg_url, row_factory=dict_row) as db:
        return db.execute(sql, args).fetchall()


async def test_calls_sprayed_across_two_gateways_land_once_and_end_wherever_terminate_lands(
        pair: Pair, pg_url: str) -> None:
    """Six calls; each connect goes to a random gateway (half of them to both at once, as
    Meta's at-least-once delivery may), each terminate to a random one (every third to the
    gateway not running the call, so that path is always taken). Every call is run by one
    gateway only, ends on its terminate wherever it landed, and leaves a complete record."""
    rng = random.Random(10)
    pnid, display = number_for("test-wait")
    sent: dict[str, tuple[str, str]] = {}  # call id -> (who ran it, where its terminate went)
    for n in range(6):
        first = rng.choice(["gw-a", "gw-b"])
        pair.webhooks_to(first)
        call = await pair.sim.place_call(phone_number_id=pnid, display_phone_number=display,
                                         from_wa_id=f"55119999900{n:02d}")
        if n % 2:  # the same connect, delivered to the other gateway too
            pair.webhooks_to("gw-b" if first == "gw-a" else "gw-a")
            connect = next(d for d in pair.sim.webhooks.deliveries
                           if call.call_id.encode() in d.body and b'"connect"' in d.body)
            assert (await pair.sim.redeliver(connect)).status == 200
        await asyncio.wait_for(call.accepted.wait(), WAIT_S)
        (owner,) = [name for name, g in pair.gateways.items() if call.call_id in g.calls.calls]
        other = "gw-b" if owner == "gw-a" else "gw-a"
        terminate_to = other if n % 3 == 0 else rng.choice([owner, other])
        pair.webhooks_to(terminate_to)
        await call.hangup()
        sent[call.call_id] = (owner, terminate_to)
        await pair.idle()  # ended: no call object and no channel left on either gateway

    rows = {r["wacid"]: r for r in stored(pg_url, "SELECT * FROM calls")}
    assert set(rows) == set(sent)
    handed_over = 0
    for call_id, (owner, terminate_to) in sent.items():
        row = rows[call_id]
        assert row["owner"] == owner
        assert row["channel_id"].startswith(f"wa-{owner}-")
        assert (row["outcome"], row["hangup_side"], row["end_reason"]) == \
            ("answered", "whatsapp", "normal"), row
        assert row["answered_at"] <= row["ended_at"]
        assert len(pair.sim.requests_for(call_id, "pre_accept")) == 1  # landed once
        assert len(pair.sim.requests_for(call_id, "accept")) == 1
        handed_over += terminate_to != owner
    assert handed_over >= 2
    received = pair.gateways["gw-a"].handoff.stats.received \
        + pair.gateways["gw-b"].handoff.stats.received
    assert received == handed_over  # each handed over once, acknowledged


async def test_an_api_call_is_run_by_its_gateway_whatever_the_other_one_receives(
        pair: Pair, pg_url: str) -> None:
    """A CRM places a call at gw-a; every webhook of it reaches gw-b (the SDP answer, the
    statuses) and is handed to gw-a; GET and DELETE at gw-b answer for gw-a's live call, and
    the DELETE ends it there."""
    pair.sim.add_user(USER, permission="temporary", on_call="answer", answer_after_s=0.3)
    pair.webhooks_to("gw-b")
    status, body = await pair.api("gw-a", "POST", "/v1/calls",
                                  {"to": f"+{USER}", "phone_number_id": "100000000000002",
                                   "context": "test-echo"})
    assert status == 201, body
    call_id = body["id"]
    assert call_id.startswith("wa-gw-a-")
    call = await pair.sim.wait_outbound_call(to=USER, timeout=WAIT_S)
    await asyncio.wait_for(call.accepted.wait(), WAIT_S)
    await asyncio.wait_for(call.phone.connected.wait(), WAIT_S)  # the answer SDP came via gw-b
    status, seen = await pair.api("gw-b", "GET", f"/v1/calls/{call_id}")
    assert status == 200 and seen["id"] == call_id and seen["wacid"] == call.call_id
    assert seen["state"] in ("ringing", "answered")
    status, ended = await pair.api("gw-b", "DELETE", f"/v1/calls/{call_id}")
    assert status == 200 and ended["state"] == "ended", ended
    await asyncio.wait_for(call.ended.wait(), WAIT_S)
    assert call.ended_by == "business"
    assert len(pair.sim.requests_for(call.call_id, "terminate")) == 1
    await pair.idle()
    (row,) = stored(pg_url, "SELECT * FROM calls WHERE wacid = %s", call.call_id)
    assert row["owner"] == "gw-a" and row["direction"] == "outbound"
    assert row["hangup_side"] == "gateway" and row["ended_at"] is not None, row
    assert pair.gateways["gw-b"].calls.outbound == {}
    status, _ = await pair.api("gw-b", "GET", f"/v1/calls/{call_id}")
    assert status == 200  # ended: gw-a still answers for it


async def test_one_whatsapp_dial_seen_by_both_gateways_makes_one_call(pair: Pair) -> None:
    """The agent's UserEvent(WhatsAppDial) reaches both gateways' AMI sessions: one claims it
    and calls the user, the other leaves it; the user's hang-up, delivered to the gateway
    that did not dial, ends the call and the agent's channel hears ANSWER."""
    pair.sim.add_user(USER, permission="temporary", on_call="answer", answer_after_s=0.3)
    claims: list[tuple[str, bool]] = []
    both_claimed = asyncio.Event()
    for name, gateway in pair.gateways.items():
        claim = gateway.dials.claim

        async def counted(key: str, name: str = name, claim=claim) -> bool:
            won = await claim(key)
            claims.append((name, won))
            if len(claims) == 2:
                both_claimed.set()
            return won

        gateway.dials.claim = counted
    results: asyncio.Queue[dict] = asyncio.Queue()
    a = pair.gateways["gw-a"]
    a.ami.add_event_listener("UserEvent", lambda ev: ev.get("UserEvent") == "WhatsAppDialResult"
                             and results.put_nowait(ev))
    pair.webhooks_to("gw-b")  # the answer and statuses: handed over if gw-a dials
    agent = asyncio.ensure_future(a.ami.originate(AGENT, context="test-agent", exten="s",
                                                  timeout_s=30))
    await asyncio.wait_for(both_claimed.wait(), WAIT_S)
    assert sorted(won for _, won in claims) == [False, True]
    (dialer,) = [name for name, won in claims if won]
    other = "gw-b" if dialer == "gw-a" else "gw-a"
    call = await pair.sim.wait_outbound_call(to=USER, timeout=WAIT_S)
    assert pair.gateways[other].calls.outbound == {}
    await asyncio.wait_for(call.accepted.wait(), WAIT_S)
    pair.webhooks_to(other)
    await call.hangup()
    result = await asyncio.wait_for(results.get(), WAIT_S)
    assert (result["Status"], result["Cause"]) == ("ANSWER", "16")
    await asyncio.wait_for(agent, WAIT_S)
    await pair.idle()
    assert len(pair.sim.outbound_calls) == 1
