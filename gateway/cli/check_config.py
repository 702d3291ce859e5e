"""``check-config``: what the config file means, every problem named; with ``--asterisk``,
whether the running Asterisk has the routes it names and keeps WhatsApp calls off trunks."""

from __future__ import annotations

import argparse
import asyncio
import sys

from gateway.asterisk.ami import AmiClient, AmiError, AmiNotConnected
from gateway.asterisk.dialplan import check_dialplan
from gateway.calling_settings import calling_warnings
from gateway.cli.common import add_config_option, load
from gateway.config import AmiSettings, Config, graph_version_warning


def add_parser(commands: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = commands.add_parser("check-config", help="validate the config file and show what it "
                                                 "means")
    add_config_option(p)
    p.add_argument("--asterisk", action="store_true",
                   help="also connect to AMI: every configured context/extension must exist, "
                        "and warn when a WhatsApp context can reach a Dial() to a trunk "
                        "(Meta forbids PSTN on any leg). Hangs up nothing.")
    p.add_argument("--guard-context", action="append", default=["to-whatsapp"],
                   metavar="CONTEXT",
                   help="another context WhatsApp calls run in, for the PSTN guard "
                        "(repeatable; default: to-whatsapp, where agents dial users)")
    p.set_defaults(func=cmd_check_config)


def cmd_check_config(args: argparse.Namespace) -> int:
    config = load(args.config)
    print(f"{args.config}: OK")
    for n in config.numbers:
        print(f"  number {n.phone_number_id} -> {n.context},{n.extension},1 "
              f"(max {n.max_calls} calls)")
    for ami in config.asterisk.all_servers:
        print(f"  Asterisk AMI {ami.host}:{ami.port}{f' ({ami.name})' if ami.name else ''} as "
              f"{ami.username}, codec {config.asterisk.codec}")
    print(f"  Graph API {config.whatsapp.graph_url}; webhook on "
          f"http://{config.http.host}:{config.http.port}/webhook")
    warning = graph_version_warning(config.whatsapp.graph_url)
    if warning:
        print(f"  warning: {warning}", file=sys.stderr)
    if args.asterisk:
        return asyncio.run(_check_asterisk(config, args.guard_context))
    for i, n in enumerate(config.numbers):
        for warning in calling_warnings(n.calling, f"numbers[{i}].calling",
                                        config.media.connect_timeout_s):
            print(f"  warning: {warning}")
    return 0


async def _check_asterisk(config: Config, guard_contexts: list[str]) -> int:
    """``check-config --asterisk``: on every server of ``asterisk.servers`` (a call may land
    on any), routes exist, and no WhatsApp context reaches a trunk. Exit 1 when a route is
    missing or an AMI is unreachable; PSTN risks are warnings (exit 0)."""
    codes = [await _check_server(config, ami_cfg, guard_contexts)
             for ami_cfg in config.asterisk.all_servers]
    return max(codes)


async def _check_server(config: Config, ami_cfg: AmiSettings, guard_contexts: list[str]) -> int:
    # No orphan sweep: this client owns no call, and a gateway may be serving live ones.
    ami = AmiClient(ami_cfg)  # no orphan sweep: the app installs it, a check never does
    try:
        await ami.connect()
        report = await check_dialplan(ami, config, guard_contexts)
    except AmiNotConnected:
        print(f"Asterisk: cannot check the dialplan: no AMI connection to {ami_cfg.host}:"
              f"{ami_cfg.port} within {ami_cfg.connect_timeout_s:g} s", file=sys.stderr)
        return 1
    except AmiError as exc:  # a refused login included
        print(f"Asterisk: cannot check the dialplan: {exc}", file=sys.stderr)
        return 1
    finally:
        await ami.close()
    print(f"Asterisk AMI {ami_cfg.host}:{ami_cfg.port}: connected")
    for problem in report.missing:
        print(f"  error: {problem}")
    for risk in report.risks:
        print(f"  warning: PSTN: {risk}")
    if report.ok and not report.risks:
        print("  dialplan: every configured context/extension exists; no WhatsApp context "
              "reaches a trunk")
    return 0 if report.ok else 1
