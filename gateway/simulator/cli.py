"""Command line of the simulator: ``serve`` beside a running gateway, ``call`` to script a call.

Mounted by the project's CLI as ``whatsapp-gateway sim serve|call`` through
:func:`add_subcommands`, and runnable alone as ``python -m gateway.simulator serve|call``.

    python -m gateway.simulator serve --webhook-url http://127.0.0.1:8080/webhook
    python -m gateway.simulator call --from 15550002222 --name "Test User" \\
        --script "wait-answer; wait 4; press 3; wait 1; press 1234#; wait 5; hangup"

Point the gateway's ``whatsapp.graph_url`` at the URL ``serve`` prints, and give both the same
app secret and access token (WA_APP_SECRET / WA_ACCESS_TOKEN).

For outbound dialplans, say how the users the business calls behave (or per user with
``POST /_sim/users``)::

    python -m gateway.simulator serve --webhook-url ... --default-permission temporary \\
        --default-on-call answer --default-answer-after 3 --default-script "wait 5; hangup"
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import socket
import sys

import aiohttp

from gateway.media import aiortc_hooks
from gateway.simulator.cloud_api import (
    DEFAULT_DISPLAY_NUMBER,
    DEFAULT_PHONE_NUMBER_ID,
    DEFAULT_WABA_ID,
    CloudApiSimulator,
    SimulatedCall,
)
from gateway.simulator.control import ScriptError, add_control_routes, parse_script
from gateway.simulator.users import ON_CALL, ON_REQUEST, PERMISSIONS, SimulatedUser


def add_subcommands(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add ``serve`` and ``call``. Each sets ``func`` (sync, returns an exit code) and
    ``async_func`` (the coroutine function behind it) on the parsed namespace."""
    serve = subparsers.add_parser(
        "serve", help="run the Cloud API simulator (Graph /calls + signed webhooks)",
        description="Stand in for graph.facebook.com: the gateway's graph_url points here, "
                    "webhooks go to the gateway, and /_sim/ takes scripted calls.")
    serve.add_argument("--listen", default="127.0.0.1:8090", metavar="HOST:PORT",
                       help="where the simulated Graph API listens (default 127.0.0.1:8090)")
    serve.add_argument("--webhook-url", required=True,
                       help="the gateway's webhook, e.g. http://127.0.0.1:8080/webhook")
    serve.add_argument("--app-secret", default=os.environ.get("WA_APP_SECRET"),
                       help="signs webhooks (default: $WA_APP_SECRET)")
    serve.add_argument("--access-token", default=os.environ.get("WA_ACCESS_TOKEN"),
                       help="the Bearer token the gateway must send (default: $WA_ACCESS_TOKEN)")
    serve.add_argument("--phone-number-id", default=DEFAULT_PHONE_NUMBER_ID,
                       help="the simulated business number's id (webhook metadata)")
    serve.add_argument("--display-number", default=DEFAULT_DISPLAY_NUMBER,
                       help="the business number as users see it")
    serve.add_argument("--waba-id", default=DEFAULT_WABA_ID,
                       help="the WhatsApp Business Account id in webhook entries")
    serve.add_argument("--api-version", default="v23.0",
                       help="Graph API version served in paths (v17.0 or later)")
    serve.add_argument("--ring-timeout", type=float, default=60.0,
                       help="seconds an unanswered call rings (default 60)")
    serve.add_argument("--media-address", action="append", default=None,
                       help="address the simulated phones gather ICE candidates on "
                            "(repeatable; default 127.0.0.1 and ::1)")
    users = serve.add_argument_group(
        "users the business calls", "defaults for users not configured with POST /_sim/users")
    users.add_argument("--default-permission", choices=PERMISSIONS, default="no_permission",
                       help="call permission at Meta (temporary: 7 days from start)")
    users.add_argument("--default-on-call", choices=ON_CALL, default="answer",
                       help="what the user does when the business calls")
    users.add_argument("--default-answer-after", type=float, default=2.0, metavar="SECONDS",
                       help="ringing time before answering or declining (default 2)")
    users.add_argument("--default-on-permission-request", choices=ON_REQUEST,
                       default="accept", help="reply to a call permission request")
    users.add_argument("--default-reply-after", type=float, default=2.0, metavar="SECONDS",
                       help="delay before that reply (default 2)")
    users.add_argument("--default-script", default=None,
                       help="what the user does once picked up, e.g. \"wait 3; press 1; wait 5; "
                            "hangup\" (default: stay on until someone hangs up)")
    serve.set_defaults(func=lambda a: _run(serve_main(a)), async_func=serve_main)

    call = subparsers.add_parser(
        "call", help="place a scripted call through a running simulator",
        description="Steps: wait N, wait-answer [N], wait-audio [N], press DIGITS, "
                    "tone HZ SECONDS, hangup, expect-hangup [N]; separated by ';'.")
    call.add_argument("--sim-url", default="http://127.0.0.1:8090",
                      help="the running simulator (sim serve --listen)")
    call.add_argument("--from", dest="from_", default="15550002222", help="the user's number")
    call.add_argument("--name", default="Test User", help="the user's profile name")
    call.add_argument("--phone-number-id", default=None, help="business number to call")
    call.add_argument("--cta-payload", default=None,
                      help="as if the user tapped a call button with this payload")
    call.add_argument("--deeplink-payload", default=None,
                      help="as if the user opened a wa.me/call link with this payload")
    call.add_argument("--script", default="wait-answer; wait 5; hangup",
                      help="what the caller does, steps separated by ;")
    call.set_defaults(func=lambda a: _run(call_main(a)), async_func=call_main)


def _run(coro) -> int:  # type: ignore[no-untyped-def]
    try:
        return asyncio.run(coro)
    except KeyboardInterrupt:
        return 130


def _default_media_addresses() -> list[str]:
    addresses = ["127.0.0.1"]
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as s:
            s.bind(("::1", 0))
        addresses.append("::1")
    except OSError:
        pass
    return addresses


async def serve_main(args: argparse.Namespace) -> int:
    if not args.app_secret or not args.access_token:
        print("error: set --app-secret/--access-token or WA_APP_SECRET/WA_ACCESS_TOKEN "
              "(the same values the gateway uses)", file=sys.stderr)
        return 2
    host, _, port = args.listen.rpartition(":")
    aiortc_hooks.set_host_addresses(args.media_address or _default_media_addresses())
    try:
        default_user = _default_user(args)
    except (ValueError, ScriptError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    sim = CloudApiSimulator(
        app_secret=args.app_secret, access_token=args.access_token,
        webhook_url=args.webhook_url, host=host.strip("[]") or "127.0.0.1", port=int(port),
        version=args.api_version, waba_id=args.waba_id, phone_number_id=args.phone_number_id,
        display_phone_number=args.display_number, ring_timeout_s=args.ring_timeout,
        default_user=default_user)
    add_control_routes(sim)
    printers: set[asyncio.Task[None]] = set()

    def print_transcript(call: SimulatedCall) -> None:
        """Follows every call, either direction (outbound ones are marked →)."""
        async def follow() -> None:
            short = ("→ " if call.outbound else "") + call.call_id[:18] + "…"
            async for line in call.transcript.follow():
                print(f"[{short}] {line}", flush=True)
        task = asyncio.ensure_future(follow())
        printers.add(task)
        task.add_done_callback(printers.discard)

    sim.call_listeners.append(print_transcript)
    sim.note_listeners.append(lambda line: print(f"[account] {line}", flush=True))
    await sim.start()
    print(f"Cloud API simulator: graph_url {sim.url}\n"
          f"  number {args.phone_number_id} ({args.display_number}), webhooks → "
          f"{args.webhook_url}\n"
          f"  scripted calls: POST {sim.base_url}/_sim/calls  (or: sim call --sim-url "
          f"{sim.base_url} --script ...)\n"
          f"  users the business calls: {args.default_permission} permission, "
          f"{args.default_on_call}; per user: POST {sim.base_url}/_sim/users", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        await sim.close()
        for task in list(printers):
            task.cancel()
    return 0


def _default_user(args: argparse.Namespace) -> SimulatedUser:
    user = SimulatedUser(
        permission=args.default_permission, on_call=args.default_on_call,
        answer_after_s=args.default_answer_after,
        on_permission_request=args.default_on_permission_request,
        reply_after_s=args.default_reply_after, script=args.default_script)
    if user.script:
        parse_script(user.script)
    return user


async def call_main(args: argparse.Namespace) -> int:
    body = {"from": args.from_, "name": args.name, "script": args.script,
            "phone_number_id": args.phone_number_id, "cta_payload": args.cta_payload,
            "deeplink_payload": args.deeplink_payload}
    body = {k: v for k, v in body.items() if v is not None}
    last = ""
    timeout = aiohttp.ClientTimeout(total=None, sock_read=None)
    async with aiohttp.ClientSession(timeout=timeout) as http:
        try:
            async with http.post(args.sim_url.rstrip("/") + "/_sim/calls",
                                 data=json.dumps(body),
                                 headers={"Content-Type": "application/json"}) as resp:
                if resp.status != 200:
                    print((await resp.text()).rstrip(), file=sys.stderr)
                    return 2
                async for raw in resp.content:
                    line = raw.decode(errors="replace").rstrip("\n")
                    print(line, flush=True)
                    if line:
                        last = line
        except aiohttp.ClientError as exc:
            print(f"error: cannot reach the simulator at {args.sim_url}: {exc}", file=sys.stderr)
            return 2
    return 0 if last == "result: PASS" else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m gateway.simulator",
        description="WhatsApp Cloud API calling simulator (Graph /calls, webhooks, a phone)")
    sub = parser.add_subparsers(dest="command", required=True)
    add_subcommands(sub)
    args = parser.parse_args(argv)
    return args.func(args)
