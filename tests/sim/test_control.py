"""Call scripts and the /_sim/ control API, driven the way an admin would use them."""

from __future__ import annotations

import argparse
import asyncio
import re

import aiohttp
import pytest

from gateway.simulator import cli
from gateway.simulator.control import ScriptError, add_control_routes, parse_script
from tests.sim.business import auto_answer, make_sim


def test_parse_script_reads_the_admin_syntax():
    steps = parse_script("wait 4; press 3; wait 1; press 1234#; wait 5; hangup")
    assert [(s.name, s.args) for s in steps] == [
        ("wait", (4.0,)), ("press", ("3",)), ("wait", (1.0,)), ("press", ("1234#",)),
        ("wait", (5.0,)), ("hangup", ())]
    steps = parse_script("wait-answer\nwait-audio 3\ntone 440 1.5\nexpect-hangup")
    assert [(s.name, s.args) for s in steps] == [
        ("wait-answer", (60.0,)), ("wait-audio", (3.0,)), ("tone", (440.0, 1.5)),
        ("expect-hangup", (30.0,))]


@pytest.mark.parametrize("script", ["jump 3", "press 12x", "wait", "tone 440", "wait -1",
                                    "hangup now", "tone 9000 1"])
def test_parse_script_names_the_bad_step(script):
    with pytest.raises(ScriptError, match="step 1"):
        parse_script(script)


@pytest.fixture
async def control_sim(business):
    sim = make_sim(business)
    add_control_routes(sim)
    await sim.start()
    yield sim
    await sim.close()


async def test_cli_call_streams_the_transcript_and_passes(control_sim, business, capsys):
    answering = asyncio.ensure_future(auto_answer(business, control_sim))
    args = argparse.Namespace(
        sim_url=control_sim.base_url, from_="15550002222", name="Test User", username=None,
        phone_number_id=None, cta_payload=None, deeplink_payload=None,
        script="wait-answer 10; wait-audio 5; press 12; wait 0.5; hangup")
    assert await cli.call_main(args) == 0
    digits = await answering
    out = capsys.readouterr().out
    assert "connect webhook sent (wacid." in out
    assert 'business sent pre_accept: phone shows "Ringing"' in out
    assert "media connected (ICE+DTLS)" in out
    assert "business sent accept: call answered" in out
    assert re.search(r"hearing tone 4(39|40|41) Hz", out), out
    assert "pressed 12" in out
    assert "terminate COMPLETED webhook sent" in out
    assert "answered   yes" in out and "pressed    12" in out
    assert out.rstrip().endswith("result: PASS")
    assert digits == ["1", "2"]


async def post_script(sim, script: str) -> str:
    async with aiohttp.ClientSession() as http, http.post(
            sim.base_url + "/_sim/calls", json={"from": "15550002222", "script": script}) as r:
        assert r.status == 200
        return await r.text()


async def test_expect_hangup_passes_when_the_business_hangs_up(control_sim, business):
    answering = asyncio.ensure_future(auto_answer(business, control_sim, hangup_after=0.5))
    out = await post_script(control_sim, "wait-answer 10; expect-hangup 10")
    await answering
    assert "hung up by the business (terminate)" in out
    assert "ended      business, terminate webhook COMPLETED" in out
    assert out.rstrip().endswith("result: PASS")


async def test_unanswered_script_fails_and_leaves_no_call_behind(control_sim, business):
    out = await post_script(control_sim, "wait-answer 0.3; press 1")
    assert "result: FAIL: 'wait-answer 0.3': not answered within 0.3 s" in out
    assert "terminate FAILED webhook sent" in out
    assert all(c.state == "ended" for c in control_sim.calls.values())


async def test_bad_script_is_refused_before_any_call(control_sim):
    async with aiohttp.ClientSession() as http, http.post(
            control_sim.base_url + "/_sim/calls", json={"script": "dance"}) as r:
        assert r.status == 400
        assert "unknown step 'dance'" in await r.text()
    assert control_sim.calls == {}


async def test_cli_call_wav_saves_both_directions(control_sim, business, capsys, tmp_path):
    import wave

    import numpy as np

    from gateway.simulator import audio

    answering = asyncio.ensure_future(auto_answer(business, control_sim))
    path = tmp_path / "call.wav"
    args = argparse.Namespace(
        sim_url=control_sim.base_url, from_="15550002222", name="Test User",
        phone_number_id=None, cta_payload=None, deeplink_payload=None, wav=str(path),
            username=None,
        script="wait-answer 10; wait-audio 5; tone 600 1; wait 0.3; hangup")
    assert await cli.call_main(args) == 0
    await answering
    assert f"audio saved to {path}" in capsys.readouterr().out
    with wave.open(str(path)) as w:
        assert (w.getnchannels(), w.getframerate()) == (2, 16000)
        stereo = np.frombuffer(w.readframes(w.getnframes()), dtype="<i2").reshape(-1, 2)
    heard, sent = (np.ascontiguousarray(stereo[:, i]).tobytes() for i in (0, 1))
    assert audio.dominant_frequency(heard) == pytest.approx(440, abs=10)  # the business's tone
    assert audio.dominant_frequency(sent) == pytest.approx(600, abs=10)  # the phone's
