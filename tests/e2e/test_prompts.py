"""The simulated phone names what it heard from the real Asterisk: the sample IVR's prompts
(asterisk-conf [from-whatsapp]: Background(hello&vm-enter-num-to-call), then on 3 Read()'s
beep), matched against the sound files of the test Asterisk's own chroot."""

from __future__ import annotations

import asyncio
import re

import pytest

from gateway.simulator.prompts import library_for

from .conftest import Stack

pytestmark = pytest.mark.asterisk


async def until_line(call, pattern: str, timeout: float = 20.0) -> str:
    """The first transcript line matching ``pattern`` (already there or still to come)."""
    async def scan() -> str:
        async for line in call.transcript.follow():
            if re.search(pattern, line):
                return line
        raise AssertionError(f"transcript closed without {pattern!r}:\n{call.transcript}")
    return await asyncio.wait_for(scan(), timeout)


@pytest.fixture
async def prompts(stack: Stack):
    library = library_for(stack.asterisk.sounds_dir())
    await asyncio.to_thread(library.load)  # cached on disk after the first run
    stack.sim.prompts = library
    return library


async def test_the_ivr_prompts_and_the_beep_are_named_in_the_transcript(stack: Stack,
                                                                        prompts):
    call = await stack.place_call("from-whatsapp")
    await asyncio.wait_for(call.accepted.wait(), 10)
    menu = await until_line(call, r'heard prompt "vm-enter-num-to-call"')
    hello = await until_line(call, r'heard prompt "hello"')
    assert call.transcript.lines.index(hello) < call.transcript.lines.index(menu)
    await call.phone.press("3")  # Read(CODE,beep,...)
    beep = await until_line(call, r"heard beep")
    hz = float(re.search(r"\((\d+) Hz", beep).group(1))
    assert hz == pytest.approx(prompts.beep_hz, abs=15), beep
    await call.hangup()
    await call.phone.finish_listening()
    await stack.wait_idle()
    times = [at for at, _ in call.transcript.entries]
    assert times == sorted(times), str(call.transcript)
    assert call.summary().prompts == ["hello", "vm-enter-num-to-call", "beep"]


async def test_said_digits_are_named_one_by_one(stack: Stack, prompts):
    call = await stack.place_call("from-whatsapp")
    await asyncio.wait_for(call.accepted.wait(), 10)
    await until_line(call, r'heard prompt "vm-enter-num-to-call"')
    await call.phone.press("3")
    await until_line(call, r"heard beep")
    await call.phone.press("42#")  # the dialplan says "you entered 4 2"
    await until_line(call, r'heard prompt "digits/2"')
    await call.hangup()
    await call.phone.finish_listening()
    names = [h.name for h in call.phone.recognised if h.kind in ("prompt", "beep")]
    said = names[names.index("beep") + 1:names.index("digits/2") + 1]  # then the menu again
    # "you entered" is a longer, quieter file: under heavy CPU contention it can come
    # through too damaged to match (then the transcript says so); the digits must not.
    assert said in (["you-entered", "digits/4", "digits/2"], ["digits/4", "digits/2"]), \
        str(call.transcript)
    await stack.wait_idle()
