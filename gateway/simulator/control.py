"""Call scripts and the admin control API (``/_sim/``) of a standalone simulator.

A script is what a tester would do on a phone, one step per ``;`` or line::

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

``POST /_sim/calls`` with ``{"from", "name", "phone_number_id", "script"}`` places the call, runs
the script and streams the transcript back (chunked text/plain), then a summary and a last line
``result: PASS`` or ``result: FAIL: <why>``. ``GET /_sim/calls`` lists calls, both directions.

Users the business calls (outbound dialplans without Meta): ``POST /_sim/users`` with
``{"wa_id": "15550002222", "permission": "temporary", "on_call": "answer",
"answer_after_s": 3, "script": "wait 2; press 1; wait 5; hangup", ...}`` (any field of
:class:`~gateway.simulator.users.SimulatedUser` but ``idle_audio``; fields left out keep their
value; ``"wa_id": "default"`` changes the template for users not configured yet) answers the
user as now configured; ``GET /_sim/users`` lists the default and every known user with Meta's
counters per business number.
"""

from __future__ import annotations

import asyncio
import json
import re
import tempfile
import time
from collections.abc import Awaitable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aiohttp import web

from gateway.simulator.cloud_api import CloudApiSimulator, SimulatedCall
from gateway.simulator.users import SimulatedUser, update_user

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


def add_control_routes(sim: CloudApiSimulator) -> None:
    """Mount the admin control API under ``/_sim/`` on the simulator's own server."""
    sim.app.router.add_post("/_sim/calls", _post_call(sim))
    sim.app.router.add_get("/_sim/calls", _list_calls(sim))
    sim.app.router.add_get("/_sim/calls/{call_id}/audio.wav", _call_audio(sim))
    sim.app.router.add_post("/_sim/users", _post_user(sim))
    sim.app.router.add_get("/_sim/users", _list_users(sim))
    sim.app.router.add_post("/_sim/account_update", _post_account_update(sim))
    sim.app.router.add_get("/_sim/settings", _get_settings(sim))
    sim.app.router.add_post("/_sim/settings", _post_settings(sim))


SIM_SETTINGS = {"accept_latency_s": (0.0, 30.0), "connect_webhook_delay_s": (0.0, 60.0),
                "ringing_delay_s": (0.0, 60.0), "ring_timeout_s": (0.1, 600.0)}
"""How "Meta" behaves, settable while it runs: name -> (min, max) seconds."""


def _get_settings(sim: CloudApiSimulator):  # type: ignore[no-untyped-def]
    async def handler(request: web.Request) -> web.Response:
        return web.json_response({name: getattr(sim, name) for name in SIM_SETTINGS})
    return handler


def _post_settings(sim: CloudApiSimulator):  # type: ignore[no-untyped-def]
    async def handler(request: web.Request) -> web.Response:
        try:
            data = await request.json()
            if not isinstance(data, dict):
                raise ValueError("the body must be a JSON object")
            unknown = sorted(set(data) - set(SIM_SETTINGS))
            if unknown:
                raise ValueError(f"unknown setting {', '.join(unknown)}; use "
                                 f"{', '.join(SIM_SETTINGS)}")
            for name, value in data.items():
                low, high = SIM_SETTINGS[name]
                if isinstance(value, bool) or not isinstance(value, int | float) \
                        or not low <= value <= high:
                    raise ValueError(f"{name} must be a number of seconds from {low:g} to "
                                     f"{high:g}, got {value!r}")
        except (ValueError, json.JSONDecodeError) as exc:
            return web.json_response({"error": str(exc)}, status=400)
        for name, value in data.items():
            setattr(sim, name, float(value))
            sim.note(f"simulator setting {name} = {float(value):g} s")
        return web.json_response({name: getattr(sim, name) for name in SIM_SETTINGS})
    return handler


def _post_account_update(sim: CloudApiSimulator):  # type: ignore[no-untyped-def]
    """``{"event": "ACCOUNT_VIOLATION"|"ACCOUNT_RESTRICTION", "type": ..., "phone_number_id",
    "remediation", "duration_s"}``: send Meta's account notice (docs/meta-2026-settings-events.md
    §3) now."""
    async def handler(request: web.Request) -> web.Response:
        try:
            data = await request.json()
            if not isinstance(data, dict):
                raise ValueError("the body must be a JSON object")
            pnid = data.get("phone_number_id")
            if data.get("event") == "ACCOUNT_VIOLATION":
                delivery = await sim.send_account_violation(
                    pnid, data.get("type", "USER_INITIATED_CALLS_LOW_PICKUP_RATE"),
                    data.get("remediation"))
            elif data.get("event") == "ACCOUNT_RESTRICTION":
                delivery = await sim.restrict_calling(
                    pnid, data.get("type", "RESTRICTED_BUSINESS_INITIATED_CALLING"),
                    float(data.get("duration_s", 7 * 24 * 3600)), data.get("remediation"))
            else:
                raise ValueError("'event' must be ACCOUNT_VIOLATION or ACCOUNT_RESTRICTION")
        except (ValueError, TypeError, json.JSONDecodeError) as exc:
            return web.json_response({"error": str(exc)}, status=400)
        return web.json_response({"delivered": delivery.ok, "status": delivery.status,
                                  "error": delivery.error})
    return handler


def _user_view(sim: CloudApiSimulator, user: SimulatedUser) -> dict[str, Any]:
    now = time.time()
    out = user.to_dict()
    out["permission_status"] = user.permission_status(now)
    out["counters"] = {pnid: c.to_dict(now) for (pnid, wa_id), c in sim.counters.items()
                       if wa_id == user.wa_id}
    return out


def _list_users(sim: CloudApiSimulator):  # type: ignore[no-untyped-def]
    async def handler(request: web.Request) -> web.Response:
        return web.json_response({
            "default": sim.default_user.to_dict(),
            "users": [_user_view(sim, u) for u in sim.users.values()]})
    return handler


def _post_user(sim: CloudApiSimulator):  # type: ignore[no-untyped-def]
    async def handler(request: web.Request) -> web.Response:
        try:
            data = await request.json()
            if not isinstance(data, dict):
                raise ValueError("the body must be a JSON object")
            wa_id = str(data.get("wa_id") or "").lstrip("+")
            if wa_id == "default":
                if data.get("script"):
                    parse_script(str(data["script"]))
                update_user(sim.default_user, data, time.time())
                sim.note("default user updated")
                return web.json_response(sim.default_user.to_dict())
            if not wa_id.isdigit():
                raise ValueError("'wa_id' must be the user's number, digits only "
                                 "(or \"default\")")
            if data.get("script"):
                parse_script(str(data["script"]))
            user = sim.user(wa_id)
            update_user(user, data, time.time())
        except ScriptError as exc:
            return web.json_response({"error": f"script: {exc}"}, status=400)
        except (ValueError, TypeError, json.JSONDecodeError) as exc:
            return web.json_response({"error": str(exc)}, status=400)
        sim.note(f"user {wa_id} configured: permission {user.permission_status(time.time())}, "
                 f"on call {user.on_call}, on permission request {user.on_permission_request}")
        return web.json_response(_user_view(sim, user))
    return handler


def _wav_bytes(call: SimulatedCall) -> bytes:
    with tempfile.NamedTemporaryFile(suffix=".wav") as f:
        call.phone.save_wav(f.name, both=True)
        return Path(f.name).read_bytes()


def _call_audio(sim: CloudApiSimulator):  # type: ignore[no-untyped-def]
    """Both directions of a call as a 16 kHz stereo WAV: left what the phone heard, right
    what it sent (``sim call --wav FILE``)."""
    async def handler(request: web.Request) -> web.Response:
        call = sim.calls.get(request.match_info["call_id"])
        if call is None:
            return web.json_response({"error": "no such call"}, status=404)
        return web.Response(body=await asyncio.to_thread(_wav_bytes, call),
                            content_type="audio/wav")
    return handler


def _list_calls(sim: CloudApiSimulator):  # type: ignore[no-untyped-def]
    async def handler(request: web.Request) -> web.Response:
        return web.json_response([
            {"call_id": c.call_id, "direction": c.direction, "user": c.user.key,
             "from": c.display_phone_number if c.outbound else c.wa_id,
             "to": c.wa_id if c.outbound else c.display_phone_number, "state": c.state,
             "phone_number_id": c.phone_number_id, "ended_by": c.ended_by,
             "biz_opaque_callback_data": c.biz_opaque_callback_data}
            for c in sim.calls.values()])
    return handler


def _post_call(sim: CloudApiSimulator):  # type: ignore[no-untyped-def]
    async def handler(request: web.Request) -> web.StreamResponse:
        try:
            data = await request.json()
            if not isinstance(data, dict):
                raise ValueError("the body must be a JSON object")
            steps = parse_script(str(data.get("script", "")))
            wa_id = str(data.get("from") or "15550002222")
            if not wa_id.isdigit():
                raise ValueError("'from' must be the user's number, digits only")
            if data.get("username") is not None:
                # A caller with a username: the webhook leaves the number out unless this
                # business number was in contact with it lately (docs/meta-2026-identity.md §1).
                update_user(sim.user(wa_id), {"username": data["username"] or None},
                            time.time())
        except (ValueError, json.JSONDecodeError) as exc:
            return web.Response(status=400, text=f"error: {exc}\n")
        resp = web.StreamResponse(headers={"Content-Type": "text/plain; charset=utf-8"})
        resp.enable_chunked_encoding()
        await resp.prepare(request)
        call = await sim.place_call(
            from_wa_id=wa_id, profile_name=data.get("name", "Test User"),
            phone_number_id=data.get("phone_number_id"),
            display_phone_number=data.get("display_phone_number"),
            cta_payload=data.get("cta_payload"), deeplink_payload=data.get("deeplink_payload"))

        async def pump() -> None:
            async for line in call.transcript.follow():
                await resp.write((line + "\n").encode())

        pumping = asyncio.ensure_future(pump())
        script = asyncio.ensure_future(run_script(call, steps))
        try:
            # The admin's client going away (pump fails) ends the script and the call.
            await asyncio.wait({pumping, script}, return_when=asyncio.FIRST_COMPLETED)
            if not script.done():
                script.cancel()
                await call.hangup()
                return resp
            result = script.result()
            await asyncio.wait_for(call.ended.wait(), 30)
            await call.phone.finish_listening()  # what it heard last, before the story ends
            call.transcript.close()
            await pumping
            lines = ["", "--- summary ---", *call.summary().lines(),
                     "result: PASS" if result.ok else f"result: FAIL: {result.reason}"]
            await resp.write(("\n".join(lines) + "\n").encode())
            await resp.write_eof()
        except (ConnectionResetError, asyncio.CancelledError):
            script.cancel()
            await call.hangup()
            raise
        finally:
            pumping.cancel()
        return resp
    return handler
