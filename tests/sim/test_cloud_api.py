"""The Cloud API simulator against a minimal business written from the reference alone
(tests/sim/business.py): offer shape, /calls validation, media both ways, webhooks."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import re

from gateway.simulator import audio
from gateway.simulator.phone import PhoneTimers
from tests.sim.business import APP_SECRET, IPV6, make_sim, play_paced
from tests.waits import Received, transcript_says


async def test_connect_webhook_is_shaped_and_signed_like_meta(sim, business):
    call = await sim.place_call(from_wa_id="15550002222", profile_name="Test User",
                                phone_number_id="106540000000002",
                                display_phone_number="15550001111",
                                cta_payload="order-ON-12853")
    item = await business.next_event("connect")
    assert business.bad_signatures == 0
    payload = json.loads(business.raw[0][0])
    assert payload["object"] == "whatsapp_business_account"
    value = item["value"]
    assert value["metadata"] == {"display_phone_number": "15550001111",
                                 "phone_number_id": "106540000000002"}
    user_id = sim.users["15550002222"].user_id
    assert value["contacts"] == [{"profile": {"name": "Test User"}, "wa_id": "15550002222",
                                  "user_id": user_id}]
    c = item["call"]
    assert c["from_user_id"] == user_id
    assert c["id"] == call.call_id and c["id"].startswith("wacid.")
    assert (c["from"], c["to"], c["direction"]) == ("15550002222", "15550001111",
                                                   "USER_INITIATED")
    assert c["cta_payload"] == "order-ON-12853" and "deeplink_payload" not in c
    assert c["timestamp"].isdigit()
    assert c["session"]["sdp_type"] == "offer"

    sdp = c["session"]["sdp"]
    lines = sdp.split("\r\n")
    assert sdp.endswith("\r\n")
    session_part = sdp.split("m=audio")[0]
    assert "a=ice-lite" in session_part
    assert "a=group:BUNDLE audio" in session_part
    assert any(re.fullmatch(r"m=audio \d+ UDP/TLS/RTP/SAVPF 111 126", ln) for ln in lines)
    assert [ln for ln in lines if ln.startswith("a=fingerprint:")][0].startswith(
        "a=fingerprint:sha-256 ")
    assert len([ln for ln in lines if ln.startswith("a=fingerprint:")]) == 1
    for needed in ("a=setup:actpass", "a=mid:audio", "a=rtcp-mux", "a=sendrecv",
                   "a=rtpmap:111 opus/48000/2", "a=rtcp-fb:111 transport-cc",
                   "a=fmtp:111 maxaveragebitrate=20000;maxplaybackrate=16000;minptime=20;"
                   "sprop-maxcapturerate=16000;useinbandfec=1",
                   "a=rtpmap:126 telephone-event/8000", "a=ptime:20", "a=maxptime:20"):
        assert needed in lines, needed
    assert len([ln for ln in lines if re.match(r"a=ssrc:\d+ cname:WhatsAppAudioStream1$", ln)
                ]) == 1
    assert "a=end-of-candidates" not in lines
    cands = [ln for ln in lines if ln.startswith("a=candidate:")]
    v4 = [ln for ln in cands if " 127.0.0.1 " in ln]
    v6 = [ln for ln in cands if " ::1 " in ln]
    assert len(v4) == 1 and all("typ host" in ln for ln in cands)
    assert len(v6) == (1 if IPV6 else 0) and len(cands) == len(v4) + len(v6)
    assert "c=IN IP4 127.0.0.1" in lines


async def test_answered_call_carries_audio_and_dtmf_both_ways(sim, business):
    call = await sim.place_call(from_wa_id="15550002222", profile_name="Test User")
    offer = (await business.next_event("connect"))["call"]["session"]["sdp"]
    leg, answer = await business.answer(offer)
    received = Received()
    leg.on_audio, leg.on_dtmf = received.audio, received.dtmf

    assert await business.action(sim, "pre_accept", call.call_id, answer) == (
        200, {"messaging_product": "whatsapp", "success": True})
    await asyncio.wait_for(call.pre_accepted.wait(), 5)
    await asyncio.wait_for(asyncio.gather(call.media_connected.wait(), leg.connected.wait()), 10)
    status, body = await business.action(sim, "accept", call.call_id, answer,
                                         biz_opaque_callback_data="gw-inbound-0001")
    assert status == 200 and body["success"] is True
    assert call.accepted.is_set() and call.state == "accepted"

    # Business → phone: a 440 Hz tone, until the phone says it hears it.
    since = call.transcript.now()
    player = asyncio.ensure_future(play_paced(leg, audio.tone(440, 1.0)))
    await transcript_says(call.transcript, r"hearing tone 4(39|40|41) Hz")
    heard = call.phone.heard(since + 0.2)
    await player
    assert heard.kind == "tone" and abs(heard.frequency - 440) < 10, heard
    assert heard.dbfs > -30

    # Phone → business: a 1000 Hz tone. The phone's frames follow each other, so 0.8 s of
    # audio from the mark holds the whole 0.6 s tone (whatever the wire's delay).
    mark = len(received.pcm)
    await call.phone.say_tone(1000, 0.6)
    got = audio.describe((await received.audio_seconds(0.8, mark))[audio.RATE * 2 // 5:
                                                                   audio.RATE * 2 * 6 // 10])
    assert got.kind == "tone" and abs(got.frequency - 1000) < 10, got

    # Phone presses keys: RFC 4733 reaches the business exactly once per digit. A last digit
    # is the sentinel: a repeat of an earlier one (its three end packets) would come before it.
    await call.phone.press("3")
    await call.phone.press("1234#")
    await call.phone.press("0")
    assert await received.digit_count(7) == list("31234#0")

    assert any(re.search(r"hearing tone 4(39|40|41) Hz", ln) for ln in call.transcript.lines)
    assert sim.requests_for(call.call_id, "accept")[0].status == 200


async def test_accept_with_a_different_sdp_is_error_100(sim, business):
    call = await sim.place_call(from_wa_id="15550002222")
    offer = (await business.next_event("connect"))["call"]["session"]["sdp"]
    _, answer = await business.answer(offer)
    assert (await business.action(sim, "pre_accept", call.call_id, answer))[0] == 200
    _, other = await business.answer(offer)  # a second answer: new ICE credentials, new DTLS
    assert other != answer
    status, body = await business.action(sim, "accept", call.call_id, other)
    assert status == 400
    assert body["error"]["code"] == 100 and body["error"]["type"] == "OAuthException"
    assert "fbtrace_id" in body["error"]
    assert call.state == "pre_accepted" and not call.accepted.is_set()
    # The right SDP still works.
    assert (await business.action(sim, "accept", call.call_id, answer))[0] == 200


async def test_request_validation(sim, business):
    call = await sim.place_call(from_wa_id="15550002222")
    offer = (await business.next_event("connect"))["call"]["session"]["sdp"]
    _, answer = await business.answer(offer)

    status, body = await business.post(sim, {"messaging_product": "whatsapp",
                                             "call_id": call.call_id, "action": "reject"},
                                       token="wrong")
    assert status == 401 and body["error"]["code"] == 190
    status, body = await business.post(sim, {"messaging_product": "whatsapp",
                                             "call_id": call.call_id, "action": "reject"},
                                       token=None)
    assert status == 401 and body["error"]["code"] == 190

    bad = {"messaging_product": "whatsapp", "call_id": call.call_id, "action": "pre_accept",
           "session": {"sdp_type": "offer", "sdp": answer}}
    assert (await business.post(sim, bad))[1]["error"]["code"] == 100
    assert (await business.post(sim, {"call_id": call.call_id, "action": "reject"})
            )[1]["error"]["code"] == 100
    assert (await business.action(sim, "pre_accept", call.call_id))[1]["error"]["code"] == 100
    assert (await business.action(sim, "reject", "wacid.nope"))[1]["error"]["code"] == 100
    assert (await business.post(sim, {"messaging_product": "whatsapp", "action": "accept",
                                      "session": {"sdp_type": "answer", "sdp": answer}})
            )[1]["error"]["code"] == 100
    assert call.state == "ringing"

    assert (await business.action(sim, "accept", call.call_id, answer))[0] == 200
    status, body = await business.action(sim, "reject", call.call_id)
    assert status == 400 and body["error"]["code"] == 100
    assert call.state == "accepted"
    assert [r.status for r in sim.requests_for(call.call_id, "reject")] == [401, 401, 400, 400]


async def test_user_hangup_sends_signed_completed_terminate(sim, business):
    call = await sim.place_call(from_wa_id="15550002222", deeplink_payload="campaign=x")
    offer = (await business.next_event("connect"))["call"]["session"]["sdp"]
    leg, answer = await business.answer(offer)
    await business.action(sim, "pre_accept", call.call_id, answer)
    await asyncio.wait_for(call.media_connected.wait(), 10)
    await business.action(sim, "accept", call.call_id, answer,
                          biz_opaque_callback_data="gw-inbound-0001")
    await call.hangup()
    assert call.ended.is_set()
    item = await business.next_event("terminate")
    assert business.bad_signatures == 0
    body, header = business.raw[-1]
    assert header == "sha256=" + hmac.new(APP_SECRET.encode(), body, hashlib.sha256).hexdigest()
    t = item["call"]
    assert t["id"] == call.call_id and t["status"] == "COMPLETED"
    assert (t["from"], t["to"], t["direction"]) == ("15550002222", "15550001111",
                                                   "USER_INITIATED")
    assert t["biz_opaque_callback_data"] == "gw-inbound-0001"
    assert t["deeplink_payload"] == "campaign=x"
    assert int(t["end_time"]) >= int(t["start_time"])
    assert t["duration"] == int(t["end_time"]) - int(t["start_time"])
    assert "errors" not in item["value"]
    assert call.summary().ended_by == "user"


async def test_business_terminate_ends_the_call_with_a_terminate_webhook(sim, business):
    call = await sim.place_call(from_wa_id="15550002222")
    offer = (await business.next_event("connect"))["call"]["session"]["sdp"]
    _, answer = await business.answer(offer)
    await business.action(sim, "accept", call.call_id, answer)
    assert (await business.action(sim, "terminate", call.call_id))[0] == 200
    await asyncio.wait_for(call.ended.wait(), 5)
    t = (await business.next_event("terminate"))["call"]
    assert t["status"] == "COMPLETED" and "duration" in t
    assert call.phone.state == "ended"
    assert (await business.action(sim, "terminate", call.call_id))[1]["error"]["code"] == 100


async def test_reject_before_answer_gives_failed_terminate(sim, business):
    call = await sim.place_call(from_wa_id="15550002222")
    await business.next_event("connect")
    assert (await business.action(sim, "reject", call.call_id))[0] == 200
    t = (await business.next_event("terminate"))["call"]
    assert t["status"] == "FAILED" and "start_time" not in t and "duration" not in t


async def test_unanswered_call_times_out(business):
    async with make_sim(business, ring_timeout_s=0.5) as sim:
        call = await sim.place_call(from_wa_id="15550002222")
        await business.next_event("connect")
        t = (await business.next_event("terminate"))["call"]
        assert t["status"] == "FAILED"
        assert call.ended_by == "ring timeout"


async def test_no_media_from_the_business_ends_the_call_with_138021(business):
    timers = PhoneTimers(no_media_at_start_s=0.5, no_media_mid_call_s=0.5)
    async with make_sim(business, phone_timers=timers) as sim:
        call = await sim.place_call(from_wa_id="15550002222")
        offer = (await business.next_event("connect"))["call"]["session"]["sdp"]
        leg, answer = await business.answer(offer)
        await business.action(sim, "pre_accept", call.call_id, answer)
        await asyncio.wait_for(call.media_connected.wait(), 10)
        await business.action(sim, "accept", call.call_id, answer)
        await leg.close()  # the business goes silent: no RTP, no RTCP
        item = await business.next_event("terminate")
        t = item["call"]
        assert t["status"] == "FAILED" and "duration" in t
        assert [e["code"] for e in item["value"]["errors"]] == [138021]
        assert [e["code"] for e in t["errors"]] == [138021]
        assert call.ended_by == "phone" and call.error_code == 138021


async def test_no_media_at_start_counts_from_the_answer(business):
    timers = PhoneTimers(no_media_at_start_s=0.4, no_media_mid_call_s=30)
    async with make_sim(business, phone_timers=timers) as sim:
        call = await sim.place_call(from_wa_id="15550002222")
        offer = (await business.next_event("connect"))["call"]["session"]["sdp"]
        leg, answer = await business.answer(offer)
        await leg.close()  # answers, but its media never starts
        await business.action(sim, "pre_accept", call.call_id, answer)
        item = await business.next_event("terminate")
        assert item["call"]["status"] == "FAILED"
        assert item["value"]["errors"][0]["code"] == 138021
        assert not call.media_connected.is_set()


async def test_bad_signature_and_duplicates_for_negative_tests(sim, business):
    call = await sim.place_call(from_wa_id="15550002222")
    await business.next_event("connect")
    dup = await sim.redeliver(call.webhooks[0])
    assert dup.ok and business.raw[-1] == business.raw[0]
    assert (await business.next_event("connect"))["call"]["id"] == call.call_id

    bad = await sim.send_raw_webhook(b'{"object":"whatsapp_business_account","entry":[]}',
                                     signature="sha256=" + "0" * 64)
    unsigned = await sim.send_raw_webhook(b'{"entry":[]}', signature=None)
    assert bad.status == 401 and unsigned.status == 401
    assert business.bad_signatures == 2


async def test_failed_delivery_is_retried_with_the_same_bytes(business):
    business.fail_next = 1
    async with make_sim(business, webhook_retry_delays=(0.05,)) as sim:
        call = await sim.place_call(from_wa_id="15550002222")
        await business.next_event("connect")
        assert [(d.status, d.attempt) for d in call.webhooks] == [(500, 1), (200, 2)]
        assert business.raw[0] == business.raw[1]
        assert "webhook delivery failed: HTTP 500" in str(call.transcript)
