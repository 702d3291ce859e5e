"""``demo`` runs a local Asterisk, the WhatsApp simulator and the gateway together (no Meta
account needed); ``init`` writes the sample configs an installation starts from."""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path

from gateway.cli.common import add_config_option, add_logging_options, start_logging
from gateway.resources import write_init
from gateway.sandbox.demo import DemoError, run_demo


def add_parser(commands: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = commands.add_parser("demo", help="local Asterisk + WhatsApp simulator + gateway, no "
                                         "Meta account needed")
    add_config_option(p, help="YAML config file (default: var/demo.yaml, which the demo "
                              "writes for the ports it picks)", default=None)
    add_logging_options(p)
    p.add_argument("--call", metavar="SCRIPT",
                   help="place one simulated call with this script, print it, and stop; "
                        "the exit code is the call's result (0 PASS, 1 FAIL)")
    p.add_argument("--ami-port", type=int, metavar="PORT",
                   help="Asterisk's AMI port (default 5038, or a free one if taken)")
    p.add_argument("--http-port", type=int, metavar="PORT",
                   help="the gateway's HTTP port (default 8080, or a free one if taken)")
    p.add_argument("--sim-port", type=int, metavar="PORT",
                   help="the WhatsApp simulator's port (default 8090, or a free one if taken)")
    p.set_defaults(func=cmd_demo)

    what = ("write the sample asterisk-conf/, gateway.example.yaml, monitoring/ and packaging/ "
            "(systemd unit, TLS proxy) into a directory")
    p = commands.add_parser("init", help=what, description=what)
    p.add_argument("directory", help="where to write them (created if missing)")
    p.add_argument("--force", action="store_true",
                   help="overwrite files that are already there")
    p.set_defaults(func=cmd_init)


def cmd_demo(args: argparse.Namespace) -> int:
    start_logging(args)
    try:
        return asyncio.run(run_demo(Path(args.config) if args.config else None, args.call,
                                    ami_port=args.ami_port, http_port=args.http_port,
                                    sim_port=args.sim_port))
    except DemoError as exc:
        print(f"demo: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


def cmd_init(args: argparse.Namespace) -> int:
    target = Path(args.directory)
    try:
        written = write_init(target, force=args.force)
    except FileExistsError as exc:
        print(f"init: {exc}", file=sys.stderr)
        return 1
    print(f"wrote {len(written)} files into {target}:")
    for name in ("asterisk-conf/", "gateway.example.yaml", "monitoring/", "packaging/"):
        print(f"  {target / name}")
    print("next: copy gateway.example.yaml to gateway.yaml, edit it, then "
          f"`whatsapp-gateway check-config -c {target / 'gateway.yaml'}`")
    return 0
