"""Hostile input against the real Asterisk: what a caller controls never reaches AMI as
actions of its own, a webhook split over TCP writes still lands, a replay after a restart
starts nothing.

Every verdict comes from Asterisk itself. An Originate that carries an ``Application`` header
runs that application instead of the dialplan, so the hostile call's TestMarker (raised by its
number's context) proves no injected Application took over; a bystander call in an echo
context that still returns a tone afterwards proves no injected Hangup reached it.
"""

from __future__ import annotations

import asyncio
import contextlib

import aiohttp
import pytest

from gateway.app import Gateway
from gateway.whatsapp.signature import sign

from .conftest import APP_SECRET, Stack

pytestmark = pytest.mark.asterisk

INJECTED = "Pwned"
HANGUP_ALL = "x\r\n\r\nAction: Hangup\r\nChannel: /^UnicastRTP/\r\n\r\n"
PROFILE = f"Eve\r\nApplication: UserEvent\r\nData: {INJECTED}Profile"
CTA = (f"order-1\r\n\r\nAction: Originate\r\nChannel: Local/s@test-wait\r\n"
       f"Application: UserEvent\r\nData: {INJECTED}Cta\r\n\r\n")
DEEPLINK = HANGUP_ALL + f"Action: Originate\nChannel: Local/s@test-wait\nApplication: " \
    f"UserEvent\nData: {INJECTED}Deeplink\n\n"


def user_event(name: str):
    return lambda ev: ev.get("Event") == "UserEvent" and ev.get("UserEvent") == name


async def echoes(call) -> bool:
    """Does a tone the phone sends come back through Asterisk's Echo()?"""
    started = call.transcript.now()
    await call.phone.say_tone(700, 1.5)
    heard = call.phone.heard(since=started + 0.5, until=call.transcript.now())
    return heard.kind == "tone" and abs(heard.frequency - 700) < 25


async def test_crlf_and_ami_text_in_caller_fields_run_no_action(stack: Stack):
    bystander = await stack.place_call("test-echo", from_wa_id="5511900000001")
    await asyncio.wait_for(bystander.accepted.wait(), 10)
    await asyncio.wait_for(bystander.media_connected.wait(), 10)

    call = await stack.place_call("test-marker", from_wa_id="5511900000002",
                                  profile_name=PROFILE, cta_payload=CTA,
                                  deeplink_payload=DEEPLINK)
    marker = await stack.wait_event(user_event("TestMarker"))
    assert marker["WaCallId"] == call.call_id
    assert marker["DialplanContext"] == "test-marker"  # its number's context, no Application
    assert marker["CallerName"].startswith("Eve")
    await asyncio.wait_for(call.accepted.wait(), 10)

    assert await echoes(bystander), "the bystander's call was cut"
    assert not bystander.ended.is_set() and not call.ended.is_set()
    injected = [ev for ev in stack.events if ev.get("Event") == "UserEvent"
                and INJECTED in ev.get("UserEvent", "") + ev.get("Data", "")]
    assert injected == []
    # the two calls, nothing the attacker originated
    assert len(await stack.gateway.ami.core_show_channels()) == 2
    await call.hangup()
    await bystander.hangup()
    await stack.wait_idle()


class SlowRelay:
    """A TCP hop in front of the gateway that forwards each HTTP request in several writes,
    with pauses between them, as a congested path would deliver it."""

    def __init__(self, target_port: int, pieces: int = 4, pause_s: float = 0.15):
        self.target_port, self.pieces, self.pause_s = target_port, pieces, pause_s
        self.requests = 0
        self.server: asyncio.Server | None = None

    async def start(self) -> int:
        self.server = await asyncio.start_server(self._relay, "127.0.0.1", 0)
        return self.server.sockets[0].getsockname()[1]

    async def close(self) -> None:
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()

    async def _relay(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            length = next((int(line.split(b":", 1)[1]) for line in head.split(b"\r\n")
                           if line.lower().startswith(b"content-length:")), 0)
            body = await reader.readexactly(length)
            head = head[:-2] + b"Connection: close\r\n\r\n"
            data = head + body
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
            step = max(1, len(data) // self.pieces)
            for i in range(0, len(data), step):
                up_writer.write(data[i:i + step])
                await up_writer.drain()
                await asyncio.sleep(self.pause_s)  # the delay under test, not a wait
            self.requests += 1
            writer.write(await up_reader.read())
            await writer.drain()
            up_writer.close()
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()


async def test_signed_webhook_in_several_tcp_writes_is_accepted_and_runs(stack: Stack):
    relay = SlowRelay(stack.gateway.port)
    port = await relay.start()
    stack.sim.webhook_url = f"http://127.0.0.1:{port}/webhook"
    try:
        call = await stack.place_call("test-marker", from_wa_id="5511900000003")
        marker = await stack.wait_event(user_event("TestMarker"))
        assert marker["WaCallId"] == call.call_id
        delivery = next(d for d in stack.sim.webhooks.deliveries if call.call_id.encode() in d.body)
        assert delivery.status == 200 and delivery.attempt == 1
        assert relay.requests >= 1
        await asyncio.wait_for(call.accepted.wait(), 10)
        await call.hangup()
        await stack.wait_idle()
    finally:
        stack.sim.webhook_url = f"{stack.gateway.url}/webhook"
        await relay.close()


async def test_over_cap_body_gets_413_and_nothing_is_processed(stack: Stack):
    from gateway.whatsapp.webhook import MAX_BODY
    body = b'{"entry":[],"pad":"' + b"x" * MAX_BODY + b'"}'
    async with aiohttp.ClientSession() as http:
        async with http.post(f"{stack.gateway.url}/webhook", data=body, headers={
                "X-Hub-Signature-256": sign(APP_SECRET, body),
                "Content-Type": "application/json"}) as resp:
            assert resp.status == 413
    assert stack.gateway.calls.calls == {}


async def test_replayed_connect_after_a_restart_starts_no_call(stack: Stack):
    call = await stack.place_call("test-marker", from_wa_id="5511900000004")
    await stack.wait_event(user_event("TestMarker"))
    await asyncio.wait_for(call.accepted.wait(), 10)
    await call.hangup()
    await stack.wait_idle()
    connect = next(d for d in stack.sim.webhooks.deliveries
                   if call.call_id.encode() in d.body and b'"connect"' in d.body)
    config = stack.gateway.config
    await stack.gateway.stop()
    before = await _record(config, call.call_id)
    assert before is not None and before.outcome.value == "answered"

    restarted = Gateway(config)
    await restarted.start()
    stack.gateway = restarted
    stack.sim.webhook_url = f"{restarted.url}/webhook"
    restarted.ami.add_event_listener("*", stack.on_event)
    requests_before = len(stack.sim.requests_for(call.call_id))
    delivery = await stack.sim.send_raw_webhook(connect.body)
    assert delivery.status == 200
    await stack.wait_idle()  # waits for every task the replay started
    assert restarted.calls.calls == {}
    assert len(stack.sim.requests_for(call.call_id)) == requests_before  # no pre_accept
    assert restarted.store is not None
    assert await restarted.store.get(call.call_id) == before


async def _record(config, call_id: str):
    from gateway.store import CallStore
    store = await CallStore.open(config.store.path)
    try:
        return await store.get(call_id)
    finally:
        await store.close()
