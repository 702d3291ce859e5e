"""``serve`` runs the gateway until a stop signal; ``reload`` makes a running one re-read its
config (the same as ``systemctl reload``: SIGHUP to the pid in the pid file)."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys

from gateway.app import Gateway
from gateway.cli.common import (
    DEFAULT_CONFIG,
    add_config_option,
    add_logging_options,
    load,
    start_logging,
)
from gateway.config import ConfigError, load_config
from gateway.lifecycle import run_until_stopped

log = logging.getLogger("gateway")


def add_parser(commands: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = commands.add_parser("serve", help="run the gateway")
    add_config_option(p)
    add_logging_options(p)
    p.add_argument("--workers", type=int, metavar="N",
                   help="media processes behind one webhook/API/metrics endpoint (default: "
                        "the number of cores; 1 runs the gateway in this one process)")
    p.set_defaults(func=cmd_serve)

    p = commands.add_parser("reload", help="check the config file, then make the running "
                                           "gateway re-read it (numbers, routes, limits, "
                                           "tokens; calls in progress are untouched)")
    add_config_option(p, help=f"YAML config file of the running gateway (default: "
                              f"{DEFAULT_CONFIG})")
    p.set_defaults(func=cmd_reload)


def cmd_serve(args: argparse.Namespace) -> int:
    config = load(args.config)
    start_logging(args, config)
    workers = args.workers if args.workers is not None else (os.cpu_count() or 1)
    if workers < 1:
        raise SystemExit("serve: --workers must be at least 1")
    if workers > 1:  # one supervisor, N media processes (gateway/workers/)
        from gateway.workers.supervisor import serve

        worker_args = ["--log-level", args.log_level, "--log-format", args.log_format,
                       *(["--verbose-media"] if args.verbose_media else [])]
        try:
            asyncio.run(serve(config, args.config, workers, worker_args))
        except ValueError as exc:
            raise SystemExit(f"serve: {exc}") from None
        return 0
    asyncio.run(_serve(Gateway(config), args.config))
    return 0


async def _serve(gateway: Gateway, config_path: str) -> None:
    """Run until SIGTERM/SIGINT, which drain (a second one stops at once); SIGHUP reloads."""
    reloads: set[asyncio.Task] = set()

    def on_hangup() -> None:
        task = asyncio.ensure_future(_reload(gateway, config_path))
        reloads.add(task)
        task.add_done_callback(reloads.discard)

    await run_until_stopped(gateway, gateway.config.pid_file, on_reload=on_hangup)


async def _reload(gateway: Gateway, config_path: str) -> None:
    """SIGHUP: re-read the file; an invalid one is refused and the running config kept."""
    log.info("SIGHUP: re-reading %s", config_path)
    try:
        new = await asyncio.to_thread(load_config, config_path)
    except ConfigError as exc:
        log.error("config reload refused, the running config is kept: %s has %d problem(s):\n%s",
                  config_path, len(exc.problems), "\n".join(f"  - {p}" for p in exc.problems))
        return
    gateway.reload(new)


def cmd_reload(args: argparse.Namespace) -> int:
    """Check the file, then ask the running gateway (pid file beside the store) to re-read it."""
    config = load(args.config)  # an invalid file is reported here, and nothing is signalled
    pid_file = config.pid_file
    try:
        pid = int(pid_file.read_text().strip())
    except (OSError, ValueError) as exc:
        print(f"no running gateway found: cannot read {pid_file} ({exc})", file=sys.stderr)
        return 1
    try:
        os.kill(pid, signal.SIGHUP)
    except ProcessLookupError:
        print(f"no running gateway: pid {pid} from {pid_file} is gone", file=sys.stderr)
        return 1
    print(f"{args.config}: OK; asked gateway pid {pid} to reload it (see its log)")
    return 0
