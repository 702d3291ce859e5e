"""The admin control API (``/_sim/``) of a standalone simulator.

Call scripts are in :mod:`gateway.simulator.script`.

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
import tempfile
from pathlib import Path
from typing import Any

from aiohttp import web

from gateway.simulator.call import SimulatedCall
from gateway.simulator.cloud_api import CloudApiSimulator
from gateway.simulator.script import ScriptError, parse_script, run_script
from gateway.simulator.users import SimulatedUser, update_user

__all__ = ["ScriptError", "add_control_routes", "parse_script", "run_script"]


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
        return web.json_response({name: getattr(sim.timings, name) for name in SIM_SETTINGS})
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
            setattr(sim.timings, name, float(value))
            sim.note(f"simulator setting {name} = {float(value):g} s")
        return web.json_response({name: getattr(sim.timings, name) for name in SIM_SETTINGS})
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
    now = sim.clock.now()
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
                update_user(sim.default_user, data, sim.clock.now())
                sim.note("default user updated")
                return web.json_response(sim.default_user.to_dict())
            if not wa_id.isdigit():
                raise ValueError("'wa_id' must be the user's number, digits only "
                                 "(or \"default\")")
            if data.get("script"):
                parse_script(str(data["script"]))
            user = sim.user(wa_id)
            update_user(user, data, sim.clock.now())
        except ScriptError as exc:
            return web.json_response({"error": f"script: {exc}"}, status=400)
        except (ValueError, TypeError, json.JSONDecodeError) as exc:
            return web.json_response({"error": str(exc)}, status=400)
        sim.note(f"user {wa_id} configured: permission {user.permission_status(sim.clock.now())}, "
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
                            sim.clock.now())
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
