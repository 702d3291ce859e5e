"""``permissions show|request|button``: the outbound call-permission ledger, and the two
messages that lead to calls (docs/meta-calling.md §3, §5)."""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Callable

from gateway.cli.common import CONFIG_HELP, DEFAULT_CONFIG, NUMBER_HELP, load, number_id


def add_parser(commands: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = commands.add_parser("permissions",
                            help="outbound call permissions (ledger and requests)")
    perm_sub = p.add_subparsers(dest="permissions_command", required=True)
    q = _user_command(perm_sub, "show", "what the ledger knows of one user",
                      cmd_permissions_show)
    q = _user_command(perm_sub, "request", "send a call-permission request message",
                      cmd_permissions_request)
    q.add_argument("--body", default="May we call you on WhatsApp about your request?",
                   help="the message text the user sees")
    q = _user_command(perm_sub, "button",
                      "send the voice-call button message (user calls you)",
                      cmd_permissions_button)
    q.add_argument("--body", default="Tap to call us on WhatsApp.",
                   help="the message text above the button")
    q.add_argument("--display-text", default="Call Now", help="button text, at most 20 chars")
    q.add_argument("--ttl-minutes", type=int, default=10080,
                   help="how long the button works, 1-43200 minutes (default a week)")
    q.add_argument("--payload", help="comes back as WA_CTA_PAYLOAD on the user's call")


def _user_command(commands: argparse._SubParsersAction, name: str, help: str,  # type: ignore[type-arg]
                  func: Callable[[argparse.Namespace], int]) -> argparse.ArgumentParser:
    """A ``permissions`` command about one user: the user, the config and the number."""
    q = commands.add_parser(name, help=help)
    q.add_argument("user", help="the WhatsApp user, E.164")
    q.add_argument("--config", "-c", default=DEFAULT_CONFIG, help=CONFIG_HELP)
    q.add_argument("--phone-number-id", help=NUMBER_HELP)
    q.set_defaults(func=func)
    return q


def cmd_permissions_show(args: argparse.Namespace) -> int:
    import json

    from gateway.calls.permissions import open_ledger

    config = load(args.config, secrets=False)
    pnid = number_id(config, args.phone_number_id)
    user = args.user.lstrip("+")

    async def run() -> None:
        ledger = await open_ledger(config)
        try:  # get() includes the can_call / can_request decisions
            print(json.dumps(await ledger.get(pnid, user), indent=2, default=str))
        finally:
            await ledger.close()

    asyncio.run(run())
    return 0


def cmd_permissions_request(args: argparse.Namespace) -> int:
    from gateway.calls.permissions import open_ledger, request_permission
    from gateway.whatsapp.graph import GraphClient

    config = load(args.config)
    pnid = number_id(config, args.phone_number_id)

    async def run() -> int:
        ledger = await open_ledger(config)
        graph = GraphClient(config.whatsapp)
        try:
            decision, message_id = await request_permission(graph, ledger, pnid,
                                                            args.user.lstrip("+"), args.body)
        finally:
            await graph.close()
            await ledger.close()
        if decision.allowed:
            print(f"permission request sent to {args.user} (message {message_id})")
            return 0
        print(f"not sent: {decision.message}", file=sys.stderr)
        return 1

    return asyncio.run(run())


def cmd_permissions_button(args: argparse.Namespace) -> int:
    from gateway.calls.permissions import send_call_button
    from gateway.whatsapp.graph import GraphClient, GraphError

    config = load(args.config)
    pnid = number_id(config, args.phone_number_id)

    async def run() -> int:
        graph = GraphClient(config.whatsapp)
        try:
            message_id = await send_call_button(
                graph, pnid, args.user.lstrip("+"), args.body, args.display_text,
                args.ttl_minutes, args.payload)
        except (ValueError, GraphError) as exc:
            print(f"not sent: {exc}", file=sys.stderr)
            return 1
        finally:
            await graph.close()
        print(f"call button sent to {args.user} (message {message_id})")
        return 0

    return asyncio.run(run())
