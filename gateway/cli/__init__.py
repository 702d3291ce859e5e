"""``whatsapp-gateway``: the gateway's command line, one module per command group.

    whatsapp-gateway serve --config gateway.yaml [--workers N]
    whatsapp-gateway reload --config gateway.yaml   # re-read the config (SIGHUP to serve)
    whatsapp-gateway check-config --config gateway.yaml [--asterisk]
    whatsapp-gateway demo                       # local Asterisk + simulator + gateway
    whatsapp-gateway init DIR                   # write the sample configs into DIR
    whatsapp-gateway calls list [--since 24h] [--csv]
    whatsapp-gateway settings apply [--dry-run] | upload-announcement FILE
    whatsapp-gateway permissions show|request|button USER
    whatsapp-gateway sim serve|call ...         # the WhatsApp Cloud API / phone simulator

Each module adds its commands with ``add_parser`` and builds what a command needs as the
running gateway does (gateway/app.py): the config through ``load_config``, the one
``GraphClient`` for Meta, the ``CallStore`` for records.
"""

from __future__ import annotations

import argparse
import os
import sys

from gateway.cli import calls, check_config, demo, permissions, serve, settings, sim
from gateway.version import version

__all__ = ["build_parser", "main"]

COMMAND_GROUPS = (serve, check_config, demo, calls, settings, permissions, sim)
"""In the order ``--help`` lists them."""


def build_parser() -> argparse.ArgumentParser:
    """Every command; each parsed namespace carries ``func``, which runs it."""
    parser = argparse.ArgumentParser(prog="whatsapp-gateway",
                                     description="WhatsApp Business Calling <-> Asterisk gateway")
    parser.add_argument("--version", action="version", version=f"%(prog)s {version()}",
                        help="print the installed version and exit")
    commands = parser.add_subparsers(dest="command", required=True)
    for group in COMMAND_GROUPS:
        group.add_parser(commands)
    return parser


def main(argv: list[str] | None = None) -> int:
    """The console script and ``python -m gateway``: run one command, return its exit code."""
    args = build_parser().parse_args(argv)
    try:
        result = args.func(args)
    except BrokenPipeError:  # e.g. `calls list | head`: the reader has all it wanted
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    return int(result or 0)
