"""A WhatsApp user calls the business: simulator phone → gateway → real Asterisk dialplan.

Each test reads like the scenario an admin would describe, runs against the dialplan in
asterisk-overlay/extensions_local.conf (or the sample IVR), and asserts on what Asterisk itself
reports (UserEvent markers, DTMFEnd, CoreShowChannels) and what the simulated phone heard.
"""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import replace

import aiohttp
import pytest

from gateway.whatsapp.signature import sign
from tests.ports import free_tcp_port
from tests.waits import transcript_says

from .conftest import APP_SECRET, PAYLOADS, MakeStack, Stack, numbers_config

pytestmark = pytest.mark.asterisk


def user_event(name: str):
    return lambda ev: ev.get("Event") == "UserEvent" and ev.get("UserEvent") == name


async def test_caller_id_call_id_and_context_reach_the_dialplan(stack: Stack):
    call = await stack.place_call("test-marker", from_wa_id="5511999990000",
                                  profile_name="Maria")
    marker = await stack.wait_event(user_event("TestMarker"))
    assert marker["CallerNum"] == "+5511999990000"
    assert marker["CallerName"] == "Maria"
    assert marker["WaCallId"] == call.call_id
    assert marker["DialplanContext"] == "test-marker"
    await asyncio.wait_for(call.accepted.wait(), 10)
    assert call.pre_accepted.is_set()
    # pre_accept and accept carried the same SDP answer, with one sha-256 fingerprint
    (pre,) = stack.sim.requests_for(call.call_id, "pre_accept")
    (acc,) = stack.sim.requests_for(call.call_id, "accept")
    assert pre.body["session"]["sdp"] == acc.body["session"]["sdp"]
    answer = acc.body["session"]["sdp"]
    assert "a=setup:active" in answer and "a=ice-lite" not in answer
    assert [ln for ln in answer.split("\r\n") if ln.startswith("a=fingerprint")] == \
        [ln for ln in answer.split("\r\n") if ln.startswith("a=fingerprint:sha-256")]
    assert answer.count("a=fingerprint") == 1
    assert "a=rtpmap:111 opus/48000/2" in answer and "a=rtpmap:126 telephone-event/8000" in answer
    assert len({ln.split()[0] for ln in answer.split("\r\n") if ln.startswith("a=ssrc:")}) == 1
    ports = {int(ln.split()[5]) for ln in answer.split("\r\n") if ln.startswith("a=candidate:")}
    webrtc_ports = stack.gateway.config.media.webrtc_ports
    assert ports and all(webrtc_ports.first <= p <= webrtc_ports.last for p in ports)
    await call.hangup()
    await stack.wait_idle()


@pytest.mark.parametrize("codec", ["g722", "ulaw", "alaw"])
async def test_tone_comes_back_through_echo(make_stack: MakeStack, codec: str):
    stack = await make_stack(asterisk={"codec": codec})
    call = await stack.place_call("test-echo")
    await asyncio.wait_for(call.accepted.wait(), 10)
    await asyncio.wait_for(call.media_connected.wait(), 10)
    started = call.transcript.now()
    await call.phone.say_tone(700, 2.0)
    heard = call.phone.heard(since=started + 0.5, until=call.transcript.now())
    assert heard.kind == "tone", heard
    assert heard.frequency == pytest.approx(700, abs=25), heard
    assert heard.dbfs > -35, heard
    record_codec = stack.gateway.calls.calls[call.call_id].record.codec
    assert record_codec == codec
    await call.hangup()
    await stack.wait_idle()


async def test_ivr_prompt_reaches_the_caller(stack: Stack):
    call = await stack.place_call("from-whatsapp")
    await stack.wait_event(user_event("WhatsAppCallStart"))
    first = await call.phone.wait_audio(timeout=10)
    # The phone describes what it hears window by window (half a second each).
    await transcript_says(call.transcript, r"hearing (?!silence|nothing)", after=first)
    heard = next(s.heard for s in call.phone.heard_segments
                 if s.heard is not None and s.heard.kind != "silence")
    assert heard.dbfs > -40, f"menu prompt not heard: {heard}"
    await call.hangup()
    await stack.wait_idle()


async def test_digits_reach_read_exactly_once(stack: Stack):
    call = await stack.place_call("test-read")
    await asyncio.wait_for(call.accepted.wait(), 10)
    await asyncio.wait_for(call.media_connected.wait(), 10)
    await call.phone.press("123#")
    read = await stack.wait_event(user_event("TestRead"))
    assert read["Digits"] == "123"
    channel_id = stack.gateway.calls.calls[call.call_id].channel_id
    ends = [ev["Digit"] for ev in stack.events
            if ev.get("Event") == "DTMFEnd" and ev.get("Uniqueid") == channel_id]
    assert ends == ["1", "2", "3", "#"]
    await call.hangup()
    await stack.wait_idle()


async def test_user_hangup_clears_asterisk_and_sends_no_terminate(stack: Stack):
    call = await stack.place_call("test-wait")
    await asyncio.wait_for(call.accepted.wait(), 10)
    assert len(await stack.channels()) == 1
    channel_id = stack.gateway.calls.calls[call.call_id].channel_id
    await call.hangup()
    hangup = await stack.wait_event(
        lambda ev: ev.get("Event") == "Hangup" and ev.get("Uniqueid") == channel_id)
    assert hangup["Cause"] == "16"
    await stack.wait_idle()
    assert stack.sim.requests_for(call.call_id, "terminate") == []
    assert stack.gateway.ports.free == len(stack.gateway.config.media.rtp_ports)


async def test_dialplan_hangup_terminates_the_whatsapp_call(stack: Stack):
    call = await stack.place_call("test-hangup")
    await asyncio.wait_for(call.ended.wait(), 15)
    await stack.wait_idle()
    assert len(stack.sim.requests_for(call.call_id, "terminate")) == 1
    assert call.ended_by == "business"


async def test_terminate_before_connect_never_starts_a_call(stack: Stack):
    """Meta does not guarantee order: a terminate overtaking its connect must win."""
    pnid = "100000000000006"
    connect = json.loads(PAYLOADS.joinpath("webhook-connect-user-initiated.json").read_text())
    terminate = json.loads(PAYLOADS.joinpath("webhook-terminate-completed.json").read_text())
    now = int(time.time())  # the samples' own stamps are older than a connect may be
    for offset, body in ((1, terminate), (0, connect)):
        body["entry"][0]["changes"][0]["value"]["metadata"]["phone_number_id"] = pnid
        body["entry"][0]["changes"][0]["value"]["calls"][0]["timestamp"] = str(now + offset)
    call_id = connect["entry"][0]["changes"][0]["value"]["calls"][0]["id"]
    assert terminate["entry"][0]["changes"][0]["value"]["calls"][0]["id"] == call_id
    assert (await stack.sim.send_webhook(terminate)).status == 200
    assert (await stack.sim.send_webhook(connect)).status == 200
    await stack.wait_idle()
    assert call_id not in stack.gateway.calls.calls
    assert stack.sim.requests_for(call_id) == []
    assert await stack.channels() == []


async def test_duplicate_connect_makes_one_call(stack: Stack):
    call = await stack.place_call("test-wait")
    await asyncio.wait_for(call.accepted.wait(), 10)
    again = await stack.sim.redeliver(call.webhooks[0])
    assert again.status == 200
    assert len(await stack.channels()) == 1
    assert len(stack.sim.requests_for(call.call_id, "pre_accept")) == 1
    await call.hangup()
    await stack.wait_idle()


async def post_webhook(stack: Stack, body: bytes, signature: str | None) -> int:
    headers = {"Content-Type": "application/json"}
    if signature is not None:
        headers["X-Hub-Signature-256"] = signature
    async with aiohttp.ClientSession() as session:
        async with session.post(f"{stack.gateway.url}/webhook", data=body,
                                headers=headers) as resp:
            return resp.status


async def test_bad_signatures_are_refused_and_start_nothing(stack: Stack):
    call = await stack.place_call("test-wait")  # a real call, to have a real body to replay
    await asyncio.wait_for(call.accepted.wait(), 10)
    await call.hangup()
    await stack.wait_idle()
    body = stack.sim.encode(stack.sim.connect_payload(call)).replace(
        call.call_id.encode(), b"wacid.FORGED0001")
    assert await post_webhook(stack, body, None) == 403
    assert await post_webhook(stack, body, sign("wrong-secret", body)) == 403
    assert await post_webhook(stack, body + b" ", sign(APP_SECRET, body)) == 403
    assert stack.sim.requests_for("wacid.FORGED0001") == []
    assert await stack.channels() == []


async def test_malformed_json_is_400(stack: Stack):
    body = b'{"object": "whatsapp_business_account", "entry": ['
    assert await post_webhook(stack, body, sign(APP_SECRET, body)) == 400


async def test_unknown_number_is_rejected(stack: Stack):
    call = await stack.sim.place_call(from_wa_id="15550002222",
                                      phone_number_id="999999999999999",
                                      display_phone_number="15559999999")
    await asyncio.wait_for(call.ended.wait(), 10)
    assert len(stack.sim.requests_for(call.call_id, "reject")) == 1
    assert stack.sim.requests_for(call.call_id, "pre_accept") == []
    assert await stack.channels() == []


async def test_offer_without_audio_is_rejected(stack: Stack):
    call = await stack.place_call("test-wait")
    await asyncio.wait_for(call.accepted.wait(), 10)
    await call.hangup()
    await stack.wait_idle()
    payload = stack.sim.connect_payload(call)
    value = payload["entry"][0]["changes"][0]["value"]
    value["calls"][0]["id"] = "wacid.NOAUDIO0001"
    sdp = value["calls"][0]["session"]["sdp"]
    value["calls"][0]["session"]["sdp"] = sdp.split("m=audio")[0]
    assert (await stack.sim.send_webhook(payload)).status == 200
    await stack.wait_idle()  # includes the background task that sends the reject
    assert len(stack.sim.requests_for("wacid.NOAUDIO0001", "reject")) == 1
    assert await stack.channels() == []


def pull_the_cable(call) -> None:
    """The caller's network disappears without a goodbye (no DTLS close, no terminate)."""
    for transport in call.phone.leg.pc._RTCPeerConnection__iceTransports:
        for protocol in transport._connection._protocols:
            protocol.transport.close()


async def test_media_loss_ends_the_call_on_both_sides(make_stack: MakeStack):
    stack = await make_stack(media={"no_media_timeout": 2.0})
    call = await stack.place_call("test-wait")
    await asyncio.wait_for(call.accepted.wait(), 10)
    await asyncio.wait_for(call.media_connected.wait(), 10)
    channel_id = stack.gateway.calls.calls[call.call_id].channel_id
    pull_the_cable(call)
    hangup = await stack.wait_event(
        lambda ev: ev.get("Event") == "Hangup" and ev.get("Uniqueid") == channel_id)
    assert hangup["Cause"] == "41"  # NORMAL_TEMPORARY_FAILURE: not a normal clearing
    await stack.wait_idle()
    assert len(stack.sim.requests_for(call.call_id, "terminate")) == 1
    record = await stack.gateway.store.get(call.call_id)
    assert record.outcome == "failed" and "no media" in record.reason
    assert record.end_reason == "media_lost"


async def test_calls_beyond_max_calls_are_rejected_with_the_reason(make_stack: MakeStack):
    stack = await make_stack(numbers=numbers_config({"test-wait": {"max_calls": 1}}))
    first = await stack.place_call("test-wait", from_wa_id="15550001001")
    await asyncio.wait_for(first.accepted.wait(), 10)
    second = await stack.place_call("test-wait", from_wa_id="15550001002")
    await asyncio.wait_for(second.ended.wait(), 10)
    assert len(stack.sim.requests_for(second.call_id, "reject")) == 1
    assert stack.sim.requests_for(second.call_id, "pre_accept") == []
    record = await stack.gateway.store.get(second.call_id)
    assert record.outcome == "rejected" and "max_calls" in record.reason
    assert record.end_reason == "capacity"
    assert len(await stack.channels()) == 1
    await first.hangup()
    await stack.wait_idle()


async def test_calls_are_rejected_while_asterisk_is_unreachable(tmp_path):
    """No Asterisk behind the AMI port: the gateway still answers webhooks, and rejects
    calls with the reason instead of leaving callers ringing."""
    from gateway.app import Gateway
    from gateway.simulator.cloud_api import CloudApiSimulator

    from .conftest import ACCESS_TOKEN, make_config

    sim = CloudApiSimulator(app_secret=APP_SECRET, access_token=ACCESS_TOKEN)
    await sim.start()
    cfg = make_config(sim.url, free_tcp_port(), store={"path": str(tmp_path / "g.sqlite3")})
    cfg = replace(cfg, asterisk=replace(cfg.asterisk, ami=replace(cfg.asterisk.ami,
                                                                  connect_timeout_s=0.5)))
    gw = Gateway(cfg)
    await gw.start()
    sim.webhook_url = f"{gw.url}/webhook"
    try:
        call = await sim.place_call(from_wa_id="15550002222", phone_number_id="100000000000006",
                                    display_phone_number="15550000006")
        await asyncio.wait_for(call.ended.wait(), 10)
        assert len(sim.requests_for(call.call_id, "reject")) == 1
        record = await gw.store.get(call.call_id)
        assert record.outcome == "rejected" and "AMI not connected" in record.reason
        assert record.end_reason == "asterisk_down"
    finally:
        await gw.stop()
        await sim.close()


async def test_nothing_outlives_a_call(stack: Stack):
    """After a call ends: no Asterisk channel, no RTP port, no task, no peer connection."""
    import gc

    from aiortc import RTCPeerConnection

    def live_peers() -> int:
        return sum(1 for o in gc.get_objects()
                   if isinstance(o, RTCPeerConnection) and o.connectionState != "closed")

    def call_tasks() -> list:
        """Live tasks of the gateway's call machinery or the WebRTC stack (not the test's,
        the simulator's or aiohttp's keep-alive connections)."""
        out = []
        for task in asyncio.all_tasks():
            code = getattr(task.get_coro(), "cr_code", None)
            where = code.co_filename if code else ""
            if ("/aiortc/" in where or "/aioice/" in where or "/gateway/" in where) \
                    and "/gateway/simulator/" not in where and not task.done():
                out.append(task)
        return out

    before = set(call_tasks())  # the gateway's own long-lived tasks (AMI supervisor, ...)
    call = await stack.place_call("test-echo")
    await asyncio.wait_for(call.accepted.wait(), 10)
    await asyncio.wait_for(call.media_connected.wait(), 10)
    assert live_peers() == 2  # the gateway's and the phone's
    await call.phone.press("1")
    await call.hangup()
    await stack.wait_idle()
    assert live_peers() == 0
    assert stack.gateway.ports.free == len(stack.gateway.config.media.rtp_ports)
    assert set(call_tasks()) - before == set()


async def test_graph_api_unreachable_fails_the_call_cleanly(make_stack: MakeStack):
    """Meta's API cannot be reached when the gateway answers: no Asterisk channel is left,
    the call record says why, and nothing the call took is kept (its ports are free)."""
    dead = f"http://127.0.0.1:{free_tcp_port()}/v25.0"  # nothing listens there
    stack = await make_stack(whatsapp={"graph_url": dead, "graph_timeout": 2.0})
    call = await stack.place_call("test-wait")
    await stack.wait_idle()
    record = await stack.gateway.store.get(call.call_id)
    assert record.outcome == "failed" and "cannot reach the Graph API" in record.reason
    assert record.end_reason == "meta_api_error"
    assert await stack.channels() == []
    assert stack.sim.requests_for(call.call_id) == []  # nothing reached "Meta"
    assert stack.gateway.ports.free == len(stack.gateway.config.media.rtp_ports)
    assert stack.gateway.calls.live_calls() == []
    await call.hangup()


async def test_media_that_never_connects_ends_the_call_on_both_sides(make_stack: MakeStack):
    """The caller's network drops everything from the start (ICE can never succeed)."""
    stack = await make_stack(media={"connect_timeout": 2.0})
    call = await stack.place_call("test-wait")
    pull_the_cable(call)  # before the gateway has even answered: no STUN check will succeed
    await asyncio.wait_for(call.ended.wait(), 15)
    await stack.wait_idle()
    record = await stack.gateway.store.get(call.call_id)
    assert record.end_reason == "media_timeout" and record.outcome == "failed"
    assert "ICE/DTLS not up after 2 s" in record.reason
    # never answered, and the dialplan never saw it: reject, no Originate
    assert stack.sim.requests_for(call.call_id, "accept") == []
    assert len(stack.sim.requests_for(call.call_id, "reject")) == 1
    assert record.channel == ""
    assert await stack.channels() == []
