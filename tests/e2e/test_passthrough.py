"""G.711 passthrough: a number with ``media.mode: passthrough`` whose calling settings at Meta
carry ``audio.additional_codecs``. WhatsApp's offer then lists PCMU/PCMA beside Opus; the gateway
answers with G.711 and hands the payloads to an ulaw/alaw UnicastRTP channel untouched.

Against the real Asterisk: the echo comes back right, digits go both ways as RFC 4733, and a
hang-up on either side ends the other.
"""

from __future__ import annotations

import asyncio
from dataclasses import replace

import pytest

from .conftest import Stack, number_for

pytestmark = pytest.mark.asterisk


def passthrough(stack: Stack, context: str, codecs: list[str] | None,
                mode: str = "passthrough") -> None:
    """The number of ``context``: ``media.mode`` in the gateway, ``additional_codecs`` at
    (simulated) Meta (None: the setting is off)."""
    pnid, _ = number_for(context)
    deps = stack.gateway.calls.deps
    deps.config = replace(deps.config, numbers=tuple(
        replace(n, media_mode=mode) if n.phone_number_id == pnid else n
        for n in deps.config.numbers))
    calling = stack.sim.number_settings(pnid)["calling"]
    if codecs is None:
        calling.pop("audio", None)
    else:
        calling["audio"] = {"additional_codecs": codecs}


async def transcript_line(call, text: str) -> str:
    """The first line of the call's transcript that contains ``text`` (waits for it)."""
    async for line in call.transcript.follow():
        if text in line:
            return line
    raise AssertionError(f"the transcript ended without {text!r}")


def user_event(name: str):
    return lambda ev: ev.get("Event") == "UserEvent" and ev.get("UserEvent") == name


@pytest.mark.parametrize(("offered", "codec", "pt"), [(["PCMU"], "ulaw", 0),
                                                       (["PCMA"], "alaw", 8),
                                                       (["PCMA", "PCMU"], "ulaw", 0)])
async def test_echo_and_digits_pass_through_g711(stack: Stack, offered, codec, pt):
    passthrough(stack, "test-echo", offered)
    call = await stack.place_call("test-echo")
    assert f"a=rtpmap:{pt} " in call.phone.offer_sdp
    await asyncio.wait_for(call.accepted.wait(), 10)
    await asyncio.wait_for(call.media_connected.wait(), 10)
    (acc,) = stack.sim.requests_for(call.call_id, "accept")
    answer = acc.body["session"]["sdp"]
    assert f" UDP/TLS/RTP/SAVPF {pt} 126\r\n" in answer and "opus" not in answer
    gw_call = stack.gateway.calls.calls[call.call_id]
    assert gw_call.record.codec == codec
    assert gw_call.rtp.format.name == codec  # G.711 bytes from leg to leg: nothing decoded

    started = call.transcript.now()
    await call.phone.say_tone(700, 2.0)
    heard = call.phone.heard(since=started + 0.5, until=call.transcript.now())
    assert heard.kind == "tone", heard
    assert heard.frequency == pytest.approx(700, abs=25), heard
    assert heard.dbfs > -35, heard

    # WhatsApp → Asterisk (PlayDTMF), and Echo() plays it back: Asterisk → WhatsApp (RFC 4733)
    await call.phone.press("5")
    await stack.wait_event(lambda ev: ev.get("Event") == "DTMFEnd"
                           and ev.get("Uniqueid") == gw_call.channel_id
                           and ev.get("Direction") == "Sent")
    await asyncio.wait_for(transcript_line(call, "phone got DTMF"), 10)
    assert call.phone.dtmf_received == ["5"]
    await call.hangup()
    await stack.wait_idle()


async def test_digits_reach_read_through_g711(stack: Stack):
    passthrough(stack, "test-read", ["PCMU"])
    call = await stack.place_call("test-read")
    await asyncio.wait_for(call.accepted.wait(), 10)
    await asyncio.wait_for(call.media_connected.wait(), 10)
    await call.phone.press("123#")
    read = await stack.wait_event(user_event("TestRead"))
    assert read["Digits"] == "123"
    await call.hangup()
    await stack.wait_idle()


async def test_user_hangup_ends_the_g711_channel(stack: Stack):
    passthrough(stack, "test-wait", ["PCMU"])
    call = await stack.place_call("test-wait")
    await asyncio.wait_for(call.accepted.wait(), 10)
    channel_id = stack.gateway.calls.calls[call.call_id].channel_id
    await call.hangup()
    hangup = await stack.wait_event(
        lambda ev: ev.get("Event") == "Hangup" and ev.get("Uniqueid") == channel_id)
    assert hangup["Cause"] == "16"
    await stack.wait_idle()
    assert stack.sim.requests_for(call.call_id, "terminate") == []


async def test_dialplan_hangup_terminates_the_g711_call(stack: Stack):
    passthrough(stack, "test-hangup", ["PCMA"])
    call = await stack.place_call("test-hangup")
    await asyncio.wait_for(call.ended.wait(), 15)
    assert len(stack.sim.requests_for(call.call_id, "terminate")) == 1
    await stack.wait_idle()
    record = await stack.gateway.store.get(call.call_id)
    assert record.codec == "alaw" and record.q850_cause == 21


@pytest.mark.parametrize("mode", ["passthrough", "auto"])
async def test_an_offer_without_g711_stays_opus(stack: Stack, mode: str):
    """The setting is off at Meta: WhatsApp offers Opus only, and the call is transcoded."""
    passthrough(stack, "test-echo", None, mode=mode)
    call = await stack.place_call("test-echo")
    assert "PCMU" not in call.phone.offer_sdp and "PCMA" not in call.phone.offer_sdp
    await asyncio.wait_for(call.accepted.wait(), 10)
    await asyncio.wait_for(call.media_connected.wait(), 10)
    assert stack.gateway.calls.calls[call.call_id].record.codec == "g722"
    started = call.transcript.now()
    await call.phone.say_tone(600, 1.5)
    heard = call.phone.heard(since=started + 0.5, until=call.transcript.now())
    assert heard.kind == "tone" and heard.frequency == pytest.approx(600, abs=25), heard
    await call.hangup()
    await stack.wait_idle()


async def test_opus_mode_answers_opus_to_an_offer_with_g711(stack: Stack):
    """Opus stays the default: G.711 in the offer is left out of the answer."""
    passthrough(stack, "test-echo", ["PCMU", "PCMA"], mode="opus")
    call = await stack.place_call("test-echo")
    await asyncio.wait_for(call.accepted.wait(), 10)
    (acc,) = stack.sim.requests_for(call.call_id, "accept")
    answer = acc.body["session"]["sdp"]
    assert " UDP/TLS/RTP/SAVPF 111 126\r\n" in answer and "PCMU" not in answer
    await call.hangup()
    await stack.wait_idle()
