"""``whatsapp-gateway``: serve, check-config, demo, and the simulator's commands.

    whatsapp-gateway serve --config gateway.yaml
    whatsapp-gateway check-config --config gateway.yaml
    whatsapp-gateway demo                       # local Asterisk + simulator + gateway
    whatsapp-gateway sim serve|call ...         # the WhatsApp Cloud API / phone simulator
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import signal
import sys
from pathlib import Path

from gateway.config import Config, ConfigError, load_config

log = logging.getLogger("gateway")

DEFAULT_CONFIG = "gateway.yaml"


def _setup_logging(level: str, fmt: str = "text", secrets: list[str] | None = None) -> None:
    try:
        from gateway.logs import setup_logging
    except ImportError:  # pragma: no cover - logs module arrives with the operators issue
        logging.basicConfig(level=level.upper(),
                            format="%(asctime)s %(levelname)s %(name)s: %(message)s")
        return
    setup_logging(level.upper(), fmt, secrets=secrets or [])


def _secrets(config: Config) -> list[str]:
    wa = config.whatsapp
    values = [wa.access_token, wa.app_secret, wa.verify_token, config.asterisk.ami.secret,
              *config.api.tokens]
    return [s.reveal() for s in values if s.reveal()]


def _load(path: str) -> Config:
    try:
        return load_config(path)
    except ConfigError as exc:
        print(f"{path}: {exc}", file=sys.stderr)
        raise SystemExit(2) from None


def cmd_check_config(args: argparse.Namespace) -> int:
    config = _load(args.config)
    print(f"{args.config}: OK")
    for n in config.numbers:
        print(f"  number {n.phone_number_id} -> {n.context},{n.extension},1 "
              f"(max {n.max_calls} calls)")
    print(f"  Asterisk AMI {config.asterisk.ami.host}:{config.asterisk.ami.port} as "
          f"{config.asterisk.ami.username}, codec {config.asterisk.codec}")
    print(f"  Graph API {config.whatsapp.graph_url}; webhook on "
          f"http://{config.http.host}:{config.http.port}/webhook")
    return 0


async def _run_until_signal(start, stop) -> None:
    loop = asyncio.get_running_loop()
    stopping = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, stopping.set)
    await start()
    try:
        await stopping.wait()
    finally:
        log.info("stopping")
        await stop()


def cmd_serve(args: argparse.Namespace) -> int:
    config = _load(args.config)
    _setup_logging(args.log_level, args.log_format, _secrets(config))
    from gateway.app import Gateway

    gateway = Gateway(config)
    asyncio.run(_run_until_signal(gateway.start, gateway.stop))
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    _setup_logging(args.log_level, args.log_format)
    from gateway.sandbox.demo import run_demo

    asyncio.run(run_demo(Path(args.config) if args.config else None))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="whatsapp-gateway",
                                     description="WhatsApp Business Calling <-> Asterisk gateway")
    sub = parser.add_subparsers(dest="command", required=True)

    def common(p: argparse.ArgumentParser, config_default: str | None = DEFAULT_CONFIG) -> None:
        p.add_argument("--config", "-c", default=config_default,
                       help=f"YAML config file (default: {config_default})")
        p.add_argument("--log-level", default="info",
                       choices=["debug", "info", "warning", "error"])
        p.add_argument("--log-format", default="text", choices=["text", "json"])

    p = sub.add_parser("serve", help="run the gateway")
    common(p)
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser("check-config", help="validate the config file and show what it means")
    p.add_argument("--config", "-c", default=DEFAULT_CONFIG)
    p.set_defaults(func=cmd_check_config)

    p = sub.add_parser("demo", help="local Asterisk + WhatsApp simulator + gateway, no Meta "
                                    "account needed")
    common(p, config_default=None)
    p.set_defaults(func=cmd_demo)

    try:
        from gateway.simulator.cli import add_subcommands
    except ImportError:  # pragma: no cover
        pass
    else:
        p = sub.add_parser("sim", help="the WhatsApp Cloud API and phone simulator")
        add_subcommands(p.add_subparsers(dest="sim_command", required=True))

    for extra in ("gateway.calls_cli", "gateway.settings_cli"):
        try:
            module = __import__(extra, fromlist=["add_subcommands"])
        except ImportError:
            continue
        module.add_subcommands(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    result = args.func(args)
    return int(result or 0)


if __name__ == "__main__":
    sys.exit(main())
