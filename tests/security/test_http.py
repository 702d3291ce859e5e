"""The HTTP boundary of a running gateway: every hostile request is a 4xx naming why, and
nothing behind it runs. Requests with bytes an HTTP client library would refuse to send go
over a raw socket."""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import replace
from types import SimpleNamespace
from urllib.parse import quote

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from gateway.app import Gateway
from gateway.calls.manager import CallManager
from gateway.calls.record import CallRecord, Direction, EndReason, Outcome
from gateway.store import CallStore
from gateway.whatsapp.events import parse_body
from gateway.whatsapp.graph import GraphClient, GraphError
from gateway.whatsapp.webhook import MAX_BODY

from .conftest import API_TOKEN, VERIFY_TOKEN, Running, connect_sample


async def raw_request(running: Running, head: bytes, body: bytes = b"") -> int:
    """Send exact bytes; return the status code."""
    reader, writer = await asyncio.open_connection("127.0.0.1", running.gateway.port)
    writer.write(head + b"\r\nContent-Length: " + str(len(body)).encode() +
                 b"\r\nConnection: close\r\n\r\n" + body)
    await writer.drain()
    status = int((await reader.readline()).split()[1])
    writer.close()
    return status


def fresh_connect(call_id: str = "wacid.sec-1", **call_fields) -> dict:
    body = connect_sample()
    call = body["entry"][0]["changes"][0]["value"]["calls"][0]
    call.update(id=call_id, timestamp=str(int(time.time())), **call_fields)
    return body


def encode(body: dict) -> bytes:
    return json.dumps(body, separators=(",", ":")).encode()


# --- credentials ----------------------------------------------------------------------------------

@pytest.mark.parametrize("signature", [
    "sha256=café".encode(), b"sha256=\xff\xfe", "sha256=é".encode() * 10, b"sha256=",
    b"sha256", b"", b"sha256=" + b"a" * 5000, b"Bearer x",
])
async def test_bad_signatures_of_every_shape_are_403(running: Running, signature: bytes):
    body = encode(fresh_connect())
    status = await raw_request(
        running, b"POST /webhook HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"X-Hub-Signature-256: " + signature, body)
    assert status == 403
    await running.settle()
    assert running.sim.requests_for("wacid.sec-1") == []


@pytest.mark.parametrize("authorization", [
    "Bearer café".encode(), b"Bearer \xff\xfe", b"Bearer ", b"Basic abc", b"bearer",
    b"Bearer " + API_TOKEN.encode() + b"x", b"Bearer " + b"a" * 5000,
])
async def test_bad_bearer_tokens_of_every_shape_are_401(running: Running, authorization: bytes):
    status = await raw_request(
        running, b"GET /v1/calls HTTP/1.1\r\nHost: x\r\nAuthorization: " + authorization)
    assert status == 401


async def test_the_right_token_gets_in(running: Running):
    assert (await running.api("GET", "/v1/calls"))[0] == 200


@pytest.mark.parametrize("token", ["wrong", "café", "\udcff", "", VERIFY_TOKEN + " "])
async def test_verification_with_a_wrong_token_is_403(running: Running, token: str):
    query = f"hub.mode=subscribe&hub.challenge=123&hub.verify_token=" \
            f"{quote(token, errors='surrogateescape')}"
    async with running.http.get(f"{running.url}/webhook?{query}") as resp:
        assert resp.status == 403


async def test_verification_with_the_token_echoes_the_challenge(running: Running):
    query = f"hub.mode=subscribe&hub.challenge=123&hub.verify_token={VERIFY_TOKEN}"
    async with running.http.get(f"{running.url}/webhook?{query}") as resp:
        assert resp.status == 200 and await resp.text() == "123"


# --- signed odd values ----------------------------------------------------------------------------

ODD = {
    "400-digit integer": b'{"entry":[{"changes":[{"value":{"calls":[{"id":"c","timestamp":'
                         + b"9" * 400 + b"}]}}]}]}",
    "1e400": b'{"entry":[{"changes":[{"value":{"calls":[{"id":"c","timestamp":1e400}]}}]}]}',
    "Infinity": b'{"entry":[{"changes":[{"value":{"calls":[{"id":"c","duration":Infinity}]}}]}]}',
    "1000 deep": b'{"entry":' + b"[" * 1000 + b"]" * 1000 + b"}",
    "not UTF-8": b'{"entry":"\xff"}',
}


@pytest.mark.parametrize("name", list(ODD))
async def test_signed_odd_values_are_400(running: Running, name: str):
    resp = await running.webhook(ODD[name])
    assert resp.status == 400


async def test_lone_surrogate_in_the_profile_name_is_400_and_nothing_rings(running: Running):
    body = encode(fresh_connect("wacid.sec-surrogate")).replace(
        b'"name":"', b'"name":"\\ud800')
    assert b"\\ud800" in body
    assert (await running.webhook(body)).status == 400
    await running.settle()
    assert running.sim.requests_for("wacid.sec-surrogate") == []


async def test_over_cap_body_is_413_and_a_body_near_the_cap_is_read(running: Running):
    big = b'{"object":"whatsapp_business_account","entry":[],"pad":"' + \
        b"x" * (MAX_BODY - 200) + b'"}'
    assert (await running.webhook(big)).status == 200
    assert (await running.webhook(big + b" " * 400)).status == 413


# --- SDP ------------------------------------------------------------------------------------------

def _sample_sdp() -> str:
    return connect_sample()["entry"][0]["changes"][0]["value"]["calls"][0]["session"]["sdp"]


SAMPLE_SDP = _sample_sdp()
SAMPLE_AUDIO = SAMPLE_SDP[SAMPLE_SDP.index("m=audio"):]


@pytest.mark.parametrize("sdp, reason", [
    ("\x8f random \x00 bytes m=audio a=rtpmap:111 opus/48000/2", "not '<letter>="),
    ("v=0\r\n" + "a=x\r\n" * 200_000 + SAMPLE_AUDIO, "larger than"),
    (SAMPLE_SDP + SAMPLE_AUDIO * 49, "larger than"),
    (SAMPLE_SDP + SAMPLE_AUDIO, "exactly one media section"),
    ("\r\n".join(ln for ln in SAMPLE_SDP.split("\r\n")
                  if not ln.startswith("a=fingerprint")), "no a=fingerprint"),
    (SAMPLE_SDP.replace("a=fingerprint:sha-256 24:87:AA", "a=fingerprint:sha-256 2487:AA"),
     "sha-256"),
    (SAMPLE_SDP.replace("a=setup:actpass", "a=setup:x"), "a=setup"),
])
async def test_bad_sdp_is_rejected_as_bad_sdp_with_the_reason(running: Running, sdp, reason):
    body = fresh_connect("wacid.sec-sdp")
    body["entry"][0]["changes"][0]["value"]["calls"][0]["session"]["sdp"] = sdp
    assert (await running.webhook(encode(body))).status == 200
    await running.settle()
    assert [r.action for r in running.sim.requests_for("wacid.sec-sdp")] == ["reject"]
    record = await running.gateway.store.get("wacid.sec-sdp")
    assert record.end_reason == EndReason.BAD_SDP and record.outcome == Outcome.REJECTED
    assert reason in record.reason and "Traceback" not in record.reason


# --- replays --------------------------------------------------------------------------------------

async def test_a_stale_connect_is_ignored_and_a_fresh_one_is_handled(running: Running):
    stale = fresh_connect("wacid.sec-stale")
    stale["entry"][0]["changes"][0]["value"]["calls"][0]["timestamp"] = \
        str(int(time.time()) - 301)
    assert (await running.webhook(encode(stale))).status == 200
    fresh = fresh_connect("wacid.sec-fresh")
    assert (await running.webhook(encode(fresh))).status == 200
    await running.settle()
    # AMI is down here, so the fresh call is refused at Meta: proof it was handled at all
    assert [r.action for r in running.sim.requests_for("wacid.sec-fresh")] == ["reject"]
    assert running.sim.requests_for("wacid.sec-stale") == []
    assert await running.gateway.store.get("wacid.sec-stale") is None


async def test_a_replay_after_a_restart_changes_nothing(running: Running):
    body = encode(fresh_connect("wacid.sec-replay"))
    assert (await running.webhook(body)).status == 200
    await running.settle()
    before = await running.gateway.store.get("wacid.sec-replay")
    assert before is not None and before.outcome == Outcome.REJECTED
    config = running.gateway.config
    await running.gateway.stop()
    running.gateway = Gateway(config)
    await running.gateway.start()
    assert (await running.webhook(body)).status == 200
    await running.settle()
    assert len(running.sim.requests_for("wacid.sec-replay")) == 1  # the first reject only
    assert await running.gateway.store.get("wacid.sec-replay") == before


def record(wacid: str, **fields) -> CallRecord:
    return CallRecord(wacid=wacid, direction=Direction.INBOUND, phone_number_id="1",
                      from_number="5511999990000", to_number="15550000001", **fields)


async def test_a_closed_record_is_never_reopened(tmp_path):
    store = await CallStore.open(tmp_path / "calls.sqlite3")
    try:
        closed = record("w1", outcome=Outcome.ANSWERED, reason="normal", webhook_at=1.0,
                        ended_at=5.0)
        await store.save(closed)
        await store.save(record("w1", webhook_at=9.0))
        assert await store.get("w1") == closed
        assert await store.knows("w1") and not await store.knows("w2")
        await store.save(record("w2", webhook_at=1.0))
        ended = record("w2", webhook_at=1.0, outcome=Outcome.ABANDONED, ended_at=3.0)
        await store.save(ended)
        assert await store.get("w2") == ended  # an active record still gets its end
    finally:
        await store.close()


class LiveCall:
    """Stands in for a live InboundCall: what the manager reads and calls on terminate."""

    def __init__(self, connect_ts: int, arrived_at: float):
        self.last_event_ts = connect_ts
        self.record = SimpleNamespace(webhook_at=arrived_at)
        self.terminated: list = []

    def whatsapp_terminated(self, ev) -> None:
        self.terminated.append(ev)


def terminate_event(call_id: str, ts: int):
    body = {"entry": [{"changes": [{"field": "calls", "value": {
        "metadata": {"phone_number_id": "1"},
        "calls": [{"id": call_id, "event": "terminate", "direction": "USER_INITIATED",
                   "timestamp": str(ts), "status": "COMPLETED"}]}}]}]}
    return parse_body(encode(body))


def test_a_future_stamped_connect_does_not_make_the_real_terminate_stale():
    manager = CallManager(SimpleNamespace())
    now = int(time.time())
    future = LiveCall(connect_ts=now + 10**6, arrived_at=now - 5)
    manager.calls["wacid.future"] = future
    manager.handle(terminate_event("wacid.future", now))
    assert len(future.terminated) == 1
    honest = LiveCall(connect_ts=now - 5, arrived_at=now - 4)
    manager.calls["wacid.honest"] = honest
    manager.handle(terminate_event("wacid.honest", now - 60))  # older than its connect
    assert honest.terminated == []


# --- /v1 ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("query, field", [
    ("since=99999999999d", "since"), ("until=99999999999w", "until"),
    ("since=1e400", "since"), ("since=nan", "since"), ("since=-5", "since"),
    ("limit=99999999999999999999", "limit"), ("bogus=1", "bogus"),
])
async def test_call_list_filters_out_of_range_are_400_naming_the_field(running, query, field):
    status, body = await running.api("GET", f"/v1/calls?{query}")
    assert status == 400 and body["error"]["field"] == field, body


@pytest.mark.parametrize("body, field", [
    (b'{"to": "+5511999990000", "ttl_minutes": 1e400}', "ttl_minutes"),
    (b'{"to": "+5511999990000", "ttl_minutes": 99999999999999}', "ttl_minutes"),
    (b'{"to": "+5511999990000", "ttl_minutes": true}', "ttl_minutes"),
    (b'{"to": "+5511999990000", "body": "hi", "x":' + b"[" * 10000 + b"]" * 10000 + b"}",
     "body"),
    (b'{"to": "+5511999990000", "body": "\\udc00"}', "body"),
])
async def test_call_button_odd_values_are_400_naming_the_field(running, body, field):
    status, answer = await running.api("POST", "/v1/call-buttons", data=body)
    assert status == 400 and answer["error"]["field"] == field, answer


@pytest.mark.parametrize("fields, field", [
    ({"context": "agents\r\nAction: Hangup"}, "context"),
    ({"context": "agents,1"}, "context"),
    ({"context": "a" * 80}, "context"),
    ({"context": "agents", "extension": "100\nApplication: UserEvent"}, "extension"),
    ({"context": "agents", "extension": "1 0"}, "extension"),
    ({"context": "agents", "extension": 100}, "extension"),
    ({"channel": "PJSIP/agent\r\n\r\nAction: Hangup"}, "channel"),
    ({"channel": "PJSIP/a,b"}, "channel"),
    ({"channel": "PJSIP/a&PJSIP/b"}, "channel"),
    ({"channel": "no-slash"}, "channel"),
    ({"channel": ["PJSIP/a"]}, "channel"),
])
async def test_click_to_call_with_a_bad_asterisk_name_is_400_naming_it(running, fields, field):
    body = json.dumps({"to": "+5511999990000", **fields}).encode()
    status, answer = await running.api("POST", "/v1/calls", data=body)
    assert status == 400 and answer["error"]["field"] == field, answer
    assert running.gateway.calls.outbound == {}


@pytest.mark.parametrize("fields", [
    {"context": "agents", "extension": "100"}, {"context": "from-whatsapp"},
    {"context": "agents", "extension": "+5511999990000"},
    {"channel": "PJSIP/agent-0000002a"}, {"channel": "Local/100@agents-00000001;1"},
])
async def test_click_to_call_with_good_asterisk_names_gets_past_validation(running, fields):
    body = json.dumps({"to": "+5511999990000", **fields}).encode()
    status, answer = await running.api("POST", "/v1/calls", data=body)
    assert status != 400, answer


async def test_a_phone_number_id_never_becomes_a_graph_path(running: Running):
    """Meta-signed or not, an id is never sent as a path of its own: a catch-all server
    records every path the Graph client requests."""
    seen: list[str] = []

    async def record(request: web.Request) -> web.Response:
        seen.append(request.raw_path)
        return web.json_response({"success": True})

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", record)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    settings = replace(running.gateway.config.whatsapp,
                       graph_url=str(server.make_url("/v23.0")))
    graph = GraphClient(settings)
    try:
        for pnid in ["../../etc/passwd", "1?x=1", "1#x", "..", "1/messages", "", "1 2"]:
            with pytest.raises(GraphError, match="not a Graph id"):
                await graph.reject(pnid, "wacid.x")
        assert seen == []
        await graph.reject("100000000000001", "wacid.x")
        assert seen == ["/v23.0/100000000000001/calls"]
    finally:
        await graph.close()
        await server.close()


async def test_click_to_call_while_asterisk_is_down_is_refused_before_ringing(running):
    body = json.dumps({"to": "+5511999990000", "context": "agents"}).encode()
    status, answer = await running.api("POST", "/v1/calls", data=body)
    assert status == 409 and answer["error"]["reason"] == "asterisk_down", answer
    await running.settle()
    assert running.gateway.calls.outbound == {}
    assert running.sim.requests_for(action="connect") == []
