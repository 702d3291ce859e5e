"""The simulator's 2026 additions (docs/meta-2026-settings-events.md §1-4): voicemail,
account notices, recording/transcription opt-in and their media URLs — checked against the
payload samples."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
from pathlib import Path

import aiohttp

from tests.fakes import ManualClock
from tests.sim.business import TOKEN, Business, make_sim

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "payloads"
VOICEMAIL = {"status": "ENABLED", "triggers": ["TIMEOUT", "REJECT"],
             "audio": {"default": {"announcement_media_id": 938884519013664,
                                   "timeout_seconds": 1}}}
RECORDING = {"status": "ENABLED", "purpose": "Quality assurance",
             "announcement_language": "en_US"}


def shape(value):
    """Keys (recursively) and value types: what "shaped like the sample" means."""
    if isinstance(value, dict):
        return {k: shape(v) for k, v in value.items()}
    if isinstance(value, list):
        return [shape(value[0])] if value else []
    return type(value).__name__


def sample(name: str) -> dict:
    return json.loads((FIXTURES / name).read_text())


def without_bsuid(value):
    """The sample minus the business-scoped user ids (``*user_id``): those come with the
    simulator's BSUID users (issue 12 item 1), not with these features."""
    if isinstance(value, dict):
        return {k: without_bsuid(v) for k, v in value.items() if not k.endswith("user_id")}
    if isinstance(value, list):
        return [without_bsuid(v) for v in value]
    return value


async def next_message(business: Business, timeout: float = 10) -> dict:
    return await business.next_message(timeout)


async def test_voicemail_timeout_takes_an_unanswered_call(sim, business):
    status, _ = await business.graph(sim, "POST", "settings",
                                     {"calling": {"voicemail": VOICEMAIL}})
    assert status == 200
    call = await sim.place_call(from_wa_id="15550002222")
    item = await business.next_event("connect")
    leg, answer = await business.answer(item["call"]["session"]["sdp"])
    assert (await business.action(sim, "pre_accept", call.call_id, answer))[0] == 200
    # The business never accepts: after 1 s Meta's voicemail answers...
    terminate = await business.next_event("terminate", timeout=10)
    assert terminate["call"]["status"] == "FAILED"
    assert call.voicemail_at is not None and call.accepted_at is None
    status, body = await business.action(sim, "accept", call.call_id, answer)
    assert status == 400 and body["error"]["code"] == 100
    # ...and the caller's message arrives as an audio message whose id is the wacid.
    msg = await next_message(business)
    expected = sample("webhook-messages-voicemail.json")["entry"][0]["changes"][0]["value"]
    assert msg["message"]["id"] == call.call_id and msg["message"]["type"] == "audio"
    assert shape(msg["message"]) == shape(without_bsuid(expected["messages"][0]))
    assert shape(msg["message"]["audio"]) == shape(expected["messages"][0]["audio"])
    assert msg["message"]["audio"]["mime_type"] == "audio/ogg; codecs=opus"
    file = sim.media[msg["message"]["audio"]["id"]]
    assert file.content[:4] == b"OggS" and file.call_id == call.call_id
    assert any("voicemail answers" in ln for ln in call.transcript.lines)


async def test_voicemail_reject_trigger_and_an_accepted_call_is_untouched(sim, business):
    sim.number_settings(sim.default_phone_number_id)["calling"]["voicemail"] = VOICEMAIL
    call = await sim.place_call(from_wa_id="15550002222")
    await business.next_event("connect")
    assert (await business.action(sim, "reject", call.call_id))[0] == 200
    await asyncio.wait_for(call.ended.wait(), 10)
    assert call.voicemail_at is not None
    assert (await next_message(business))["message"]["id"] == call.call_id


async def test_invalid_voicemail_settings_are_error_100(sim, business):
    for bad in ({"status": "ON"}, {"status": "ENABLED", "triggers": ["BUSY"]},
                {"status": "ENABLED", "audio": {"default": {"timeout_seconds": 31}}}):
        status, body = await business.graph(sim, "POST", "settings",
                                            {"calling": {"voicemail": bad}})
        assert status == 400 and body["error"]["code"] == 100, bad


async def test_settings_changes_send_account_settings_update_like_the_sample(sim, business):
    expected = sample("webhook-account-settings-update.json")
    # Voicemail is not tracked by account_settings_update: no notice, so the first notice the
    # business gets is the one for the call icon.
    await business.graph(sim, "POST", "settings", {"calling": {"voicemail": VOICEMAIL}})
    await business.graph(sim, "POST", "settings", {"calling": {"call_icon_visibility":
                                                               "DISABLE_ALL"}})
    got = await business.next_notice(5)
    assert shape(got) == shape(expected)
    calling = got["entry"][0]["changes"][0]["value"]["phone_number_settings"]["calling"]
    assert calling["call_icon_visibility"] == "DISABLE_ALL"


async def test_account_updates_are_shaped_like_the_samples(sim, business):
    sent = [(await sim.send_account_violation()).payload, (await sim.restrict_calling()).payload]
    assert shape(sent[0]) == shape(sample("webhook-account-update-low-pickup.json"))
    assert shape(sent[1]) == shape(sample("webhook-account-update-calling-restriction.json"))
    # The pause shows in GET settings and refuses business-initiated calls (138014).
    status, settings = await business.graph(sim, "GET", "settings")
    (listed,) = settings["calling"]["restrictions"]["restrictions_list"]
    assert listed["type"] == "RESTRICTED_BUSINESS_INITIATED_CALLING"
    # During the pause permission requests cannot be sent either (§4).
    sim.user("15550002222").in_service_window = True
    status, body = await business.graph(sim, "POST", "messages", {
        "messaging_product": "whatsapp", "to": "15550002222", "type": "interactive",
        "interactive": {"type": "call_permission_request",
                        "action": {"name": "call_permission_request"}}})
    assert status == 400 and body["error"]["code"] == 138014
    sent.append((await sim.restrict_calling(
        restriction_type="RESTRICTED_USER_INITIATED_CALLING_CALL_BUTTON_HIDDEN")).payload)
    hidden = sent[2]["entry"][0]["changes"][0]["value"]["restriction_info"][0]
    assert "expiration" not in hidden and hidden["remediation"]


async def test_recording_objects_are_validated_on_accept(sim, business):
    call = await sim.place_call(from_wa_id="15550002222")
    item = await business.next_event("connect")
    _, answer = await business.answer(item["call"]["session"]["sdp"])
    status, body = await business.action(sim, "pre_accept", call.call_id, answer,
                                         recording=RECORDING)
    assert status == 400 and "only accepted on accept" in body["error"]["error_data"]["details"]
    status, body = await business.action(sim, "accept", call.call_id, answer,
                                         recording={"status": "ENABLED"})
    assert status == 400 and "purpose is required" in body["error"]["error_data"]["details"]
    status, body = await business.action(sim, "accept", call.call_id, answer,
                                         recording={**RECORDING, "purpose": "x" * 251})
    assert status == 400


async def test_recording_and_transcript_arrive_with_urls_living_five_minutes(business):
    sim = make_sim(business, recording_delay_s=0.1, clock=ManualClock())
    await sim.start()
    try:
        call = await sim.place_call(from_wa_id="15550002222")
        item = await business.next_event("connect")
        leg, answer = await business.answer(item["call"]["session"]["sdp"])
        await business.action(sim, "pre_accept", call.call_id, answer)
        await leg.connected.wait()
        status, _ = await business.action(sim, "accept", call.call_id, answer,
                                          recording=RECORDING,
                                          transcription={**RECORDING, "purpose": "Notes"})
        assert status == 200
        assert any("will be recorded for the following purpose: Quality assurance" in ln
                   for ln in call.transcript.lines)
        await call.hangup()
        rec = await business.next_event("call_recording_available")
        trn = await business.next_event("call_transcription_available")
        expected = sample("webhook-call-recording-available.json")
        assert shape({**rec["value"], "calls": [rec["call"]]}) == \
            shape(without_bsuid(expected["entry"][0]["changes"][0]["value"]))
        audio = rec["call"]["call_recording"]["audio"]
        headers = {"Authorization": f"Bearer {TOKEN}"}
        async with aiohttp.ClientSession() as http:
            async with http.get(audio["url"]) as resp:
                assert resp.status == 401  # authenticated GET
            async with http.get(audio["url"], headers=headers) as resp:
                content = await resp.read()
                assert resp.status == 200 and content[:4] == b"OggS"
            assert base64.b64encode(hashlib.sha256(content).digest()).decode() == audio["sha256"]
            doc_url = trn["call"]["call_transcript"]["document"]["url"]
            async with http.get(doc_url, headers=headers) as resp:
                doc = json.loads(await resp.read())
            assert {"speaker", "channel", "start", "end", "text", "words"} <= \
                set(doc["transcript"]["segments"][0])
            sim.clock.advance(5 * 60 + 1)  # the URL's five minutes pass
            async with http.get(audio["url"], headers=headers) as resp:
                assert resp.status == 404
            async with http.get(f"{sim.url}/{audio['id']}", headers=headers) as resp:
                fresh = await resp.json()
            async with http.get(fresh["url"], headers=headers) as resp:
                assert resp.status == 200 and await resp.read() == content
    finally:
        await sim.close()


async def test_control_api_sends_account_notices(business):
    from gateway.simulator.control import add_control_routes

    sim = make_sim(business)
    add_control_routes(sim)
    await sim.start()
    async with aiohttp.ClientSession() as http:
        async with http.post(f"{sim.base_url}/_sim/account_update",
                             json={"event": "ACCOUNT_RESTRICTION", "duration_s": 60}) as resp:
            assert resp.status == 200 and (await resp.json())["delivered"] is True
        async with http.post(f"{sim.base_url}/_sim/account_update",
                             json={"event": "NOPE"}) as resp:
            assert resp.status == 400
    body, _ = business.raw[-1]
    value = json.loads(body)["entry"][0]["changes"][0]["value"]
    assert value["event"] == "ACCOUNT_RESTRICTION"
    assert value["restriction_info"][0]["expiration"] > 0
    await sim.close()
