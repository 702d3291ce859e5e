"""Call scripts: what a tester would do on a simulated phone, run against a call.

One step per ``;`` or line::

    wait 4; press 3; wait 1; press 1234#; wait 5; hangup

| step | meaning |
|---|---|
| ``wait N`` | let N seconds pass (ends early if the call ends) |
| ``wait-answer [N]`` | until the business accepts (default 60 s) |
| ``wait-audio [N]`` | until the phone hears something that is not silence (default 30 s) |
| ``press DIGITS`` | key presses, sent as RFC 4733 events (0-9 * # A-D) |
| ``tone HZ SECONDS`` | say a sine tone into the phone |
| ``hangup`` | the user hangs up |
| ``expect-hangup [N]`` | the business must hang up within N s (default 30 s) |

The phone's user runs one in ``sim call`` (control API) and, for business-initiated calls, a
configured user runs one after picking up (``SimulatedUser.script``).
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Awaitable
from dataclasses import dataclass
from typing import Any

from gateway.simulator.call import SimulatedCall

DIGITS = re.compile(r"[0-9*#A-Da-d]+")
DEFAULT_TIMEOUTS = {"wait-answer": 60.0, "wait-audio": 30.0, "expect-hangup": 30.0}


class ScriptError(ValueError):
    """The script cannot be run; the message names the step."""


@dataclass(frozen=True)
class Step:
    name: str
    args: tuple[Any, ...]
    text: str


@dataclass(frozen=True)
class ScriptResult:
    ok: bool
    reason: str = ""


def parse_script(script: str) -> list[Step]:
    steps: list[Step] = []
    for raw in re.split(r"[;\n]", script):
        text = raw.strip()
        if not text:
            continue
        name, *args = text.split()
        name = name.lower()
        try:
            steps.append(_parse_step(name, args, text))
        except (ValueError, IndexError) as exc:
            raise ScriptError(f"step {len(steps) + 1} {text!r}: {exc}") from None
    return steps


def _parse_step(name: str, args: list[str], text: str) -> Step:
    def seconds(value: str) -> float:
        n = float(value)
        if not 0 <= n <= 3600:
            raise ValueError("seconds must be between 0 and 3600")
        return n

    if name == "wait":
        if len(args) != 1:
            raise ValueError("usage: wait SECONDS")
        return Step(name, (seconds(args[0]),), text)
    if name in DEFAULT_TIMEOUTS:
        if len(args) > 1:
            raise ValueError(f"usage: {name} [SECONDS]")
        return Step(name, (seconds(args[0]) if args else DEFAULT_TIMEOUTS[name],), text)
    if name == "press":
        if len(args) != 1 or not DIGITS.fullmatch(args[0]):
            raise ValueError("usage: press DIGITS (0-9, *, #, A-D)")
        return Step(name, (args[0].upper(),), text)
    if name == "tone":
        if len(args) != 2:
            raise ValueError("usage: tone HZ SECONDS")
        hz = float(args[0])
        if not 20 <= hz <= 7900:
            raise ValueError("a tone must be between 20 and 7900 Hz (16 kHz audio)")
        return Step(name, (hz, seconds(args[1])), text)
    if name == "hangup":
        if args:
            raise ValueError("hangup takes no argument")
        return Step(name, (), text)
    raise ValueError(f"unknown step {name!r} (wait, wait-answer, wait-audio, press, tone, "
                     "hangup, expect-hangup)")


async def _until_ended(call: SimulatedCall, aw: Awaitable[Any], timeout: float) -> bool:
    """Run ``aw`` for at most ``timeout`` s, stopping early if the call ends.
    True when ``aw`` finished first."""
    task = asyncio.ensure_future(aw)
    ended = asyncio.ensure_future(call.ended.wait())
    try:
        done, _ = await asyncio.wait({task, ended}, timeout=timeout,
                                     return_when=asyncio.FIRST_COMPLETED)
    finally:
        task.cancel()
        ended.cancel()
    return task in done and not task.cancelled() and task.exception() is None


async def run_script(call: SimulatedCall, steps: list[Step]) -> ScriptResult:
    """Play the steps on the call's phone. A failed step ends the script; the call is hung up
    if still up, so no script leaves a call behind."""
    log = call.transcript.add
    result = ScriptResult(True)
    for step in steps:
        if call.is_over and step.name != "expect-hangup":
            await asyncio.wait_for(call.ended.wait(), 30)  # `ended_by` is known once ended
            result = ScriptResult(False, f"{step.text!r}: the call had already ended "
                                         f"({call.ended_by})")
            break
        reason = await _run_step(call, step)
        if reason:
            result = ScriptResult(False, f"{step.text!r}: {reason}")
            break
    if not result.ok:
        log(f"script failed at {result.reason}")
    if not call.is_over:
        if result.ok and (not steps or steps[-1].name != "hangup"):
            log("script finished: phone hangs up")
        await call.hangup()
    return result


async def _run_step(call: SimulatedCall, step: Step) -> str | None:
    """Run one step; a non-empty return is why it failed."""
    phone = call.phone
    if step.name == "wait":
        await _until_ended(call, asyncio.sleep(step.args[0]), step.args[0] + 1)
    elif step.name == "wait-answer":
        if not await _until_ended(call, call.accepted.wait(), step.args[0]):
            return ("the call ended before it was answered" if call.is_over
                    else f"not answered within {step.args[0]:g} s")
    elif step.name == "wait-audio":
        if not await _until_ended(call, phone.wait_audio(), step.args[0]):
            return ("the call ended before any audio was heard" if call.is_over
                    else f"heard nothing but silence for {step.args[0]:g} s")
    elif step.name == "press":
        if not phone.connected.is_set():
            return "media is not connected: there is no dial pad yet"
        await phone.press(step.args[0])
    elif step.name == "tone":
        if not phone.connected.is_set():
            return "media is not connected"
        await _until_ended(call, phone.say_tone(*step.args), step.args[1] + 5)
    elif step.name == "hangup":
        await call.hangup()
    elif step.name == "expect-hangup":
        if not call.ended.is_set():
            await _until_ended(call, call.ended.wait(), step.args[0])
        if not call.ended.is_set():
            return f"the business did not hang up within {step.args[0]:g} s"
        if call.ended_by != "business":
            return f"the call ended, but by {call.ended_by}, not by the business"
    return None
