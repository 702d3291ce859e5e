"""``sim serve|call``: the WhatsApp Cloud API and phone simulator's own commands
(gateway/simulator/cli.py), mounted under the project's command."""

from __future__ import annotations

import argparse

from gateway.simulator.cli import add_subcommands


def add_parser(commands: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = commands.add_parser("sim", help="the WhatsApp Cloud API and phone simulator")
    add_subcommands(p.add_subparsers(dest="sim_command", required=True))
