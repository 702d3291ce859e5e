"""Business-initiated calls through the simulator, with a real WebRtcLeg offering as the business:
connect, Meta's answer, status webhooks, media, DTMF, the users' behaviours and Meta's counters."""

from __future__ import annotations

import asyncio
import json
import re
import time
from pathlib import Path
from typing import Any

import pytest

from gateway.media.webrtc import WebRtcLeg
from gateway.simulator import audio
from gateway.simulator.meta import business_country_block
from tests.fakes import ManualClock
from tests.sim.business import Business, make_sim, play_paced, pre_bsuid
from tests.waits import Received, transcript_says

PAYLOADS = Path(__file__).resolve().parents[1] / "fixtures" / "payloads"
USER = "15550002222"
OPAQUE = "gw-outbound-0001"


def sample(name: str) -> dict[str, Any]:
    return json.loads((PAYLOADS / name).read_text())


def value_of(payload: dict[str, Any]) -> dict[str, Any]:
    return payload["entry"][0]["changes"][0]["value"]


@pytest.fixture
async def fast_sim(business):
    sim = make_sim(business, connect_webhook_delay_s=0.05, ringing_delay_s=0.05,
                   ring_timeout_s=0.6)
    await sim.start()
    yield sim
    await sim.close()


async def dial(business: Business, sim, to: str = USER, opaque: str | None = OPAQUE,
               **overrides: Any) -> tuple[WebRtcLeg, int, dict[str, Any]]:
    """The business's connect with a real offer from WebRtcLeg.offer()."""
    leg = WebRtcLeg(name="business-out")
    business.legs.append(leg)
    body: dict[str, Any] = {"messaging_product": "whatsapp", "to": to, "action": "connect",
                            "session": {"sdp_type": "offer", "sdp": await leg.offer()}}
    if opaque is not None:
        body["biz_opaque_callback_data"] = opaque
    body.update(overrides)
    status, resp = await business.post(sim, body)
    return leg, status, resp


async def next_item(business: Business, timeout: float = 10) -> dict[str, Any]:
    return await asyncio.wait_for(business.events.get(), timeout)


async def test_answered_outbound_call_end_to_end(business):
    async with make_sim(business, clock=ManualClock()) as sim:
        # The user lets it ring until the test picks up (sim.business.pick_up).
        sim.add_user(USER, permission="temporary", on_call="ignore")
        leg, status, resp = await dial(business, sim)
        assert status == 200
        assert resp == {"messaging_product": "whatsapp", "calls": [{"id": resp["calls"][0]["id"]}]}
        wacid = resp["calls"][0]["id"]
        assert wacid.startswith("wacid.")
        call = await sim.wait_outbound_call(to=USER, timeout=5)
        assert call.call_id == wacid and call.direction == "BUSINESS_INITIATED"
        assert sim.outbound_calls == [call]
        assert [r.status for r in sim.requests_for(wacid, "connect")] == [200]

        # Connect webhook: exactly the sample's shape, with a real answer.
        item = await next_item(business)
        ref = value_of(sample("webhook-connect-business-initiated.json"))
        value, c = item["value"], item["call"]
        user_id = sim.users[USER].user_id
        assert list(value) == list(ref) and value["contacts"] == [{"wa_id": USER,
                                                                   "user_id": user_id}]
        assert value["metadata"] == ref["metadata"]
        assert list(pre_bsuid(c)) == list(ref["calls"][0]) and c["to_user_id"] == user_id
        assert (c["id"], c["to"], c["from"], c["event"], c["direction"]) == (
            wacid, USER, "15550001111", "connect", "BUSINESS_INITIATED")
        assert c["biz_opaque_callback_data"] == OPAQUE and c["timestamp"].isdigit()
        assert c["session"]["sdp_type"] == "answer"
        assert json.loads(business.raw[0][0])["entry"][0]["changes"][0]["field"] == "calls"
        sdp = c["session"]["sdp"]
        lines = sdp.split("\r\n")
        assert sdp.endswith("\r\n") and "a=ice-lite" in sdp.split("m=audio")[0]
        assert [ln for ln in lines if ln.startswith("a=fingerprint:")][0].startswith(
            "a=fingerprint:sha-256 ")
        assert len([ln for ln in lines if ln.startswith("a=fingerprint:")]) == 1
        for needed in ("a=setup:active", "a=ice-options:trickle", "a=rtcp-mux", "a=sendrecv",
                       "a=rtpmap:111 opus/48000/2", "a=fmtp:111 minptime=10;useinbandfec=1",
                       "a=rtcp-fb:111 transport-cc", "a=rtpmap:126 telephone-event/8000",
                       "a=ptime:20"):
            assert needed in lines, needed
        assert any(re.fullmatch(r"m=audio \d+ UDP/TLS/RTP/SAVPF 111 126", ln) for ln in lines)
        assert len([ln for ln in lines if ln.startswith("a=ssrc:")]) == 1
        await leg.apply_answer(sdp)

        ringing = (await next_item(business))["call"]
        ref_status = value_of(sample("webhook-status-ringing.json"))["statuses"][0]
        assert list(pre_bsuid(ringing))[1:] == list(ref_status)  # after our "event" marker
        assert ringing["recipient_user_id"] == user_id
        assert (ringing["id"], ringing["status"], ringing["type"], ringing["recipient_id"],
                ringing["biz_opaque_callback_data"]) == (wacid, "RINGING", "call", USER, OPAQUE)
        assert call.ringing.is_set()
        await asyncio.wait_for(leg.connected.wait(), 10)
        received = Received()
        leg.on_audio, leg.on_dtmf = received.audio, received.dtmf

        # Ringing: ICE/DTLS are up and the business's audio reaches the phone, but the phone sends
        # nothing before the user picks up (the tone heard took the phone a hearing window or more
        # of media; its own packets would have come meanwhile).
        since = call.transcript.now()
        player = asyncio.ensure_future(play_paced(leg, audio.tone(440, 1.0)))
        await transcript_says(call.transcript, r"hearing tone 4(39|40|41) Hz")
        heard = call.phone.heard(since + 0.2)
        await player
        assert heard.kind == "tone" and abs(heard.frequency - 440) < 10, heard
        assert not leg.first_audio.is_set() and leg.packets_received == 0 and not received.pcm

        await sim.business.pick_up(call)
        accepted = (await next_item(business))["call"]
        assert (accepted["status"], accepted["biz_opaque_callback_data"]) == ("ACCEPTED", OPAQUE)
        assert call.accepted.is_set() and call.state == "accepted"
        await asyncio.wait_for(leg.first_audio.wait(), 5)

        # Phone → business. The phone's frames follow each other, so 0.8 s of audio from the mark
        # holds the whole 0.6 s tone.
        mark = len(received.pcm)
        await call.phone.say_tone(1000, 0.6)
        back = audio.describe((await received.audio_seconds(0.8, mark))[audio.RATE * 2 // 5:
                                                                        audio.RATE * 2 * 6 // 10])
        assert back.kind == "tone" and abs(back.frequency - 1000) < 10, back
        # DTMF from the business reaches the phone, once per digit: the last digit is a sentinel,
        # a repeat of an earlier one (its three end packets) would come before it.
        leg.send_dtmf("12#9")
        leg.send_dtmf("0")
        await transcript_says(call.transcript, r"phone got DTMF", count=5)
        assert call.phone.dtmf_received == list("12#90")
        # And the user's key presses reach the business, once each.
        await call.phone.press("5")
        await call.phone.press("0")
        assert await received.digit_count(2) == ["5", "0"]

        sim.clock.advance(1.0)  # a call of more than a second
        await call.hangup()
        t = (await business.next_event("terminate"))["call"]
        assert (t["id"], t["from"], t["to"], t["direction"], t["status"]) == (
            wacid, "15550001111", USER, "BUSINESS_INITIATED", "COMPLETED")
        assert t["biz_opaque_callback_data"] == OPAQUE
        assert t["duration"] == int(t["end_time"]) - int(t["start_time"]) >= 1
        assert call.ended_by == "user" and business.bad_signatures == 0
        counters = sim.pair(sim.default_phone_number_id, USER)
        assert len(counters.calls) == 1 and counters.unanswered_streak == 0


async def test_connect_without_permission_is_138006_and_sends_nothing(sim, business):
    sim.add_user(USER, permission="no_permission")
    _, status, resp = await dial(business, sim)
    assert status == 401 and resp["error"]["code"] == 138006
    assert resp["error"]["type"] == "OAuthException" and "fbtrace_id" in resp["error"]
    # An expired temporary permission is no permission either.
    sim.add_user(USER, permission="temporary", permission_expires_at=time.time() - 1)
    assert (await dial(business, sim))[2]["error"]["code"] == 138006
    assert sim.outbound_calls == []
    # A sentinel: a call that is allowed. Webhooks of the refused ones would come first.
    sim.add_user(USER, permission="temporary", on_call="ignore")
    _, status, resp = await dial(business, sim)
    assert status == 200
    first = (await next_item(business))["call"]
    assert (first["event"], first["id"]) == ("connect", resp["calls"][0]["id"])
    assert len(business.raw) == 1 and [c.call_id for c in sim.outbound_calls] == [first["id"]]


async def test_connect_validation_is_error_100(sim, business):
    sim.add_user(USER, permission="permanent")
    leg = WebRtcLeg(name="x")
    business.legs.append(leg)
    offer = await leg.offer()
    good = {"messaging_product": "whatsapp", "to": USER, "action": "connect",
            "session": {"sdp_type": "offer", "sdp": offer}}
    bad_bodies = [
        {k: v for k, v in good.items() if k != "messaging_product"},
        {k: v for k, v in good.items() if k != "to"},
        {**good, "to": "not-a-number"},
        {k: v for k, v in good.items() if k != "session"},
        {**good, "session": {"sdp_type": "answer", "sdp": offer}},
        {**good, "session": {"sdp_type": "offer", "sdp": "v=0\r\n"}},
        {**good, "session": {"sdp_type": "offer",
                             "sdp": offer.replace("opus/48000/2", "PCMU/8000")}},
        {**good, "biz_opaque_callback_data": "x" * 513},
    ]
    for body in bad_bodies:
        status, resp = await business.post(sim, body)
        assert (status, resp["error"]["code"]) == (400, 100), body
    assert sim.outbound_calls == []


async def test_reject_gives_rejected_then_failed_terminate(fast_sim, business):
    sim = fast_sim
    sim.add_user(USER, permission="temporary", on_call="reject", answer_after_s=0.2)
    leg, status, resp = await dial(business, sim)
    assert status == 200
    connect = (await next_item(business))["call"]
    await leg.apply_answer(connect["session"]["sdp"])
    statuses = [(await next_item(business))["call"] for _ in range(2)]
    assert [s["status"] for s in statuses] == ["RINGING", "REJECTED"]
    assert all(s["biz_opaque_callback_data"] == OPAQUE for s in statuses)
    t = (await business.next_event("terminate"))["call"]
    assert t["status"] == "FAILED" and "start_time" not in t and "duration" not in t
    assert t["biz_opaque_callback_data"] == OPAQUE
    call = sim.outbound_calls[0]
    assert call.rejected and call.ended_by == "user" and not call.phone.answered
    assert sim.pair(sim.default_phone_number_id, USER).unanswered_streak == 1


async def test_ignored_call_ends_after_the_ring_timeout(fast_sim, business):
    sim = fast_sim
    sim.add_user(USER, permission="temporary", on_call="ignore")
    await dial(business, sim, opaque=None)
    assert (await next_item(business))["call"]["event"] == "connect"
    ringing = (await next_item(business))["call"]
    assert ringing["status"] == "RINGING" and "biz_opaque_callback_data" not in ringing
    started = time.monotonic()
    t = (await business.next_event("terminate"))["call"]
    assert t["status"] == "FAILED" and 0.4 < time.monotonic() - started < 2
    assert sim.outbound_calls[0].ended_by == "ring timeout"


async def test_business_terminate_cancels_or_hangs_up(fast_sim, business):
    sim = fast_sim
    sim.add_user(USER, permission="temporary", on_call="answer", answer_after_s=0.1)
    leg, _, resp = await dial(business, sim)
    wacid = resp["calls"][0]["id"]
    await leg.apply_answer((await next_item(business))["call"]["session"]["sdp"])
    await asyncio.wait_for(sim.calls[wacid].accepted.wait(), 5)
    # The user-initiated actions make no sense on the business's own call.
    assert (await business.action(sim, "reject", wacid))[1]["error"]["code"] == 100
    assert (await business.action(sim, "terminate", wacid))[0] == 200
    t = (await business.next_event("terminate"))["call"]
    assert t["status"] == "COMPLETED" and t["biz_opaque_callback_data"] == OPAQUE
    assert sim.calls[wacid].ended_by == "business"

    sim.add_user(USER, permission="temporary", on_call="ignore")
    _, _, resp = await dial(business, sim)
    await business.next_event("status")
    assert (await business.action(sim, "terminate", resp["calls"][0]["id"]))[0] == 200
    t = (await business.next_event("terminate"))["call"]
    assert t["status"] == "FAILED"
    # A cancelled call says nothing about the user.
    assert sim.pair(sim.default_phone_number_id, USER).unanswered_streak == 0


async def test_four_unanswered_calls_revoke_the_permission(fast_sim, business):
    sim = fast_sim
    sim.add_user(USER, permission="temporary", on_call="reject", answer_after_s=0.0)
    for n in range(4):
        _, status, _ = await dial(business, sim)
        assert status == 200, n
        await business.next_event("terminate")
        if n < 3:
            assert sim.users[USER].permission == "temporary"
    item = await business.next_message()
    got, ref = item["value"], value_of(sample("webhook-call-permission-reply-auto-revoked.json"))
    assert list(got) == list(ref) and list(pre_bsuid(item["message"])) == list(
        ref["messages"][0])
    assert item["message"]["from_user_id"] == sim.users[USER].user_id
    assert item["message"]["interactive"] == ref["messages"][0]["interactive"]
    assert item["message"]["from"] == USER and item["message"]["id"].startswith("wamid.")
    assert json.loads(business.raw[-1][0])["entry"][0]["changes"][0]["field"] == "messages"
    assert sim.users[USER].permission == "no_permission"
    assert (await dial(business, sim))[2]["error"]["code"] == 138006


async def test_busy_user_and_call_in_progress_are_138003(fast_sim, business):
    sim = fast_sim
    sim.add_user(USER, permission="permanent", on_call="busy")
    assert (await dial(business, sim))[2]["error"]["code"] == 138003
    sim.add_user(USER, permission="permanent", on_call="ignore")
    assert (await dial(business, sim))[1] == 200
    assert (await dial(business, sim))[2]["error"]["code"] == 138003


async def test_business_number_country_rule(business):
    assert business_country_block("15550001111") is None  # +1 555: test numbers
    assert business_country_block("12125550100") == "USA/Canada"
    assert business_country_block("14165550100") == "USA/Canada"
    assert business_country_block("18765550100") is None  # Jamaica
    assert business_country_block("201001234567") == "Egypt"
    assert business_country_block("84901234567") == "Vietnam"
    assert business_country_block("2348012345678") == "Nigeria"
    assert business_country_block("5511912345678") is None
    async with make_sim(business, display_phone_number="12125550100") as sim:
        sim.add_user(USER, permission="permanent")
        _, status, resp = await dial(business, sim)
        assert (status, resp["error"]["code"]) == (400, 138013)


async def test_user_script_runs_after_pick_up(fast_sim, business):
    sim = fast_sim
    sim.add_user(USER, permission="temporary", answer_after_s=0.1,
                 script="wait-audio 5; press 7; wait 0.3; hangup")
    leg, _, resp = await dial(business, sim)
    await leg.apply_answer((await next_item(business))["call"]["session"]["sdp"])

    player = asyncio.ensure_future(play_paced(leg, audio.tone(600, 30.0)))
    try:
        t = (await business.next_event("terminate"))["call"]
    finally:
        player.cancel()
    assert t["status"] == "COMPLETED"
    assert leg.dtmf_received == ["7"]
    assert "user script passed" in str(sim.outbound_calls[0].transcript)


async def test_wait_outbound_call_waits_for_the_next_one(fast_sim, business):
    sim = fast_sim
    sim.add_user(USER, permission="temporary", on_call="ignore")
    seen = []
    sim.call_listeners.append(seen.append)
    waiter = asyncio.ensure_future(sim.wait_outbound_call(to="+" + USER, timeout=5))
    for _ in range(5):
        await asyncio.sleep(0)  # let the waiter run until it blocks (no time passes)
    assert not waiter.done()
    _, _, resp = await dial(business, sim)
    call = await waiter
    assert call.call_id == resp["calls"][0]["id"] and seen == [call]
    # The claimed call is not returned again: the next wait gets the next call.
    other = "15550003333"
    sim.add_user(other, permission="temporary", on_call="ignore")
    again = asyncio.ensure_future(sim.wait_outbound_call(timeout=5))
    _, _, resp = await dial(business, sim, to=other)
    assert (await again).call_id == resp["calls"][0]["id"] != call.call_id
