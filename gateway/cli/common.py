"""What every command shares: the ``--config`` and logging options, loading the config file
the way the running gateway does, and picking the business number a command is for."""

from __future__ import annotations

import argparse
import os
import sys

from gateway.config import Config, ConfigError, load_config
from gateway.logs import config_secrets, setup_logging

DEFAULT_CONFIG = os.environ.get("WA_GATEWAY_CONFIG", "gateway.yaml")
"""``--config`` when not given: $WA_GATEWAY_CONFIG (the demo prints it), else gateway.yaml."""
CONFIG_HELP = f"YAML config file (default: {DEFAULT_CONFIG})"
NUMBER_HELP = "the business number's phone_number_id (needed when several are configured)"


def add_config_option(parser: argparse.ArgumentParser, help: str = CONFIG_HELP,
                      default: str | None = DEFAULT_CONFIG) -> None:
    parser.add_argument("--config", "-c", default=default, help=help)


def add_logging_options(parser: argparse.ArgumentParser) -> None:
    """For the commands that run for long (``serve``, ``demo``) and log rather than print."""
    parser.add_argument("--log-level", default="info",
                        choices=["debug", "info", "warning", "error"],
                        help="lowest level logged (default: info)")
    parser.add_argument("--log-format", default="text", choices=["text", "json"],
                        help="text (logfmt-style) or one JSON object per line (default: text)")
    parser.add_argument("--verbose-media", action="store_true",
                        help="let aioice/aiortc log below WARNING too (ICE checks, DTLS states)")


def start_logging(args: argparse.Namespace, config: Config | None = None) -> None:
    """Logging as ``add_logging_options`` asked, with the config's secrets masked."""
    setup_logging(args.log_level.upper(), args.log_format,
                  secrets=config_secrets(config) if config else [],
                  verbose_media=args.verbose_media)


def load(path: str, *, secrets: bool = True) -> Config:
    """The validated config, or exit 2 with every problem. ``secrets=False`` for commands that
    use none (``calls list``, ``permissions show``): an admin need not export them."""
    try:
        return load_config(path, secrets=secrets)
    except ConfigError as exc:
        print(f"{path}: {exc}", file=sys.stderr)
        raise SystemExit(2) from None


def number_id(config: Config, given: str | None) -> str:
    """``--phone-number-id``, checked against the config; optional with a single number."""
    if given:
        if config.number(given) is None:
            raise SystemExit(f"--phone-number-id {given} is not in the config's numbers")
        return given
    if len(config.numbers) != 1:
        raise SystemExit("several numbers are configured: give --phone-number-id")
    return config.numbers[0].phone_number_id
