"""Every command-line option says what it does: ``--help`` is the admin's first manual.

Walks every argparse parser reachable from ``whatsapp-gateway`` (the simulator's ``sim``
commands from gateway/simulator/cli.py included) and fails on an option, argument or
subcommand without help text; and both ways in (the console script, ``python -m gateway``)
reach the same ``main``.
"""

from __future__ import annotations

import argparse
import importlib
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from pathlib import Path

from gateway.cli import build_parser, main
from gateway.version import version


def parsers(parser: argparse.ArgumentParser, path: str = "whatsapp-gateway"
            ) -> Iterator[tuple[str, argparse.ArgumentParser]]:
    yield path, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from parsers(sub, f"{path} {name}")


def test_walks_the_simulator_too() -> None:
    paths = {path for path, _ in parsers(build_parser())}
    assert {"whatsapp-gateway serve", "whatsapp-gateway init", "whatsapp-gateway sim serve",
            "whatsapp-gateway sim call"} <= paths


def test_every_option_and_argument_has_help() -> None:
    missing = []
    for path, parser in parsers(build_parser()):
        for action in parser._actions:
            if isinstance(action, (argparse._HelpAction, argparse._SubParsersAction)):
                continue
            if not (action.help or "").strip() or action.help == argparse.SUPPRESS:
                missing.append(f"{path} {'/'.join(action.option_strings) or action.dest}")
    assert missing == []


def test_every_subcommand_has_help() -> None:
    missing = []
    for path, parser in parsers(build_parser()):
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                helped = {a.dest for a in action._choices_actions if (a.help or "").strip()}
                missing += [f"{path} {name}" for name in action.choices if name not in helped]
    assert missing == []


def test_version(capsys) -> None:
    try:
        main(["--version"])
    except SystemExit as exc:
        assert exc.code == 0
    out = capsys.readouterr().out
    assert out.strip() == f"whatsapp-gateway {version()}"
    assert version()[0].isdigit() and version() != "0+unknown"  # installed: from the metadata


def test_help_runs_as_a_program() -> None:
    proc = subprocess.run([sys.executable, "-m", "gateway", "init", "--help"],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0 and "asterisk-conf" in proc.stdout


def test_the_console_script_is_the_cli() -> None:
    pyproject = Path(__file__).resolve().parents[2] / "pyproject.toml"
    target = tomllib.loads(pyproject.read_text())["project"]["scripts"]["whatsapp-gateway"]
    module, _, name = target.partition(":")
    assert getattr(importlib.import_module(module), name) is main
