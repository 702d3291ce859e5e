"""The sample dialplan's recording and queue contexts, run by the real Asterisk: a call into
[from-whatsapp-recorded] leaves a WAV recording of the call, a call into [from-whatsapp-queue]
waits in the whatsapp-support queue."""

from __future__ import annotations

import asyncio
import wave

import pytest

from .conftest import Stack

pytestmark = pytest.mark.asterisk


async def until(condition, what: str, timeout: float = 10.0):
    """Poll an outside process's state (a file it writes, its CLI): there is no event for it."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        result = await condition()
        if result:
            return result
        assert loop.time() < deadline, f"never: {what}"
        await asyncio.sleep(0.1)


async def test_recorded_context_writes_the_call_to_a_wav_file(stack: Stack) -> None:
    call = await stack.place_call("from-whatsapp-recorded")
    await asyncio.wait_for(call.accepted.wait(), 10)
    started = await stack.wait_event(lambda ev: ev.get("UserEvent") == "WhatsAppRecording")
    assert started["WaCallId"] == call.call_id
    channel_id = started["Uniqueid"]
    assert started["File"].startswith("whatsapp/") and started["File"].endswith(
        f"-{channel_id}.wav")
    await call.phone.wait_audio(timeout=10)  # the IVR's greeting is playing, and recorded
    await call.phone.say_tone(700, 0.5)
    await call.hangup()
    await stack.wait_idle()

    path = stack.asterisk.instance_dir / "spool" / "monitor" / started["File"]

    async def closed_recording():
        # MixMonitor writes the WAV header's length when it closes the file.
        if not path.is_file():
            return None
        with wave.open(str(path)) as wav:
            return wav.getparams() if wav.getnframes() > 0 else None

    params = await until(closed_recording, f"a finished recording at {path}")
    assert params.nchannels == 1 and params.sampwidth == 2 and params.framerate == 8000
    assert params.nframes / params.framerate >= 0.5  # at least the tone's length


async def test_queue_context_puts_the_caller_in_the_queue(stack: Stack) -> None:
    call = await stack.place_call("from-whatsapp-queue")
    await asyncio.wait_for(call.accepted.wait(), 10)
    queued = await stack.wait_event(lambda ev: ev.get("UserEvent") == "WhatsAppQueued")
    assert queued["WaCallId"] == call.call_id
    channel = queued["Channel"]

    async def waiting():
        shown = await stack.asterisk.cli("queue show whatsapp-support")
        return shown if channel in shown else None

    shown = await until(waiting, f"{channel} waiting in queue whatsapp-support")
    assert "1 in queue" in shown or "Callers:" in shown
    await call.hangup()
    await stack.wait_idle()
    after = await stack.asterisk.cli("queue show whatsapp-support")
    assert channel not in after
