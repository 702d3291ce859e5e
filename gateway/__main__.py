"""``whatsapp-gateway``: serve, check-config, demo, and the simulator's commands.

    whatsapp-gateway serve --config gateway.yaml [--workers N]
    whatsapp-gateway check-config --config gateway.yaml [--asterisk]
    whatsapp-gateway reload --config gateway.yaml   # re-read the config (SIGHUP to serve)
    whatsapp-gateway demo                       # local Asterisk + simulator + gateway
    whatsapp-gateway init DIR                   # write the sample configs into DIR
    whatsapp-gateway sim serve|call ...         # the WhatsApp Cloud API / phone simulator
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import signal
import sys
from pathlib import Path

from gateway.config import Config, ConfigError, graph_version_warning, load_config

log = logging.getLogger("gateway")

DEFAULT_CONFIG = os.environ.get("WA_GATEWAY_CONFIG", "gateway.yaml")
"""``--config`` when not given: $WA_GATEWAY_CONFIG (the demo prints it), else gateway.yaml."""
CONFIG_HELP = f"YAML config file (default: {DEFAULT_CONFIG})"
NUMBER_HELP = "the business number's phone_number_id (needed when several are configured)"


def _setup_logging(level: str, fmt: str = "text", config: Config | None = None,
                   verbose_media: bool = False) -> None:
    from gateway.logs import config_secrets, setup_logging

    setup_logging(level.upper(), fmt, secrets=config_secrets(config) if config else [],
                  verbose_media=verbose_media)


def _load(path: str, *, secrets: bool = True) -> Config:
    """The validated config, or exit 2 with every problem. ``secrets=False`` for commands that
    use none (``calls list``, ``permissions show``): an admin need not export them."""
    try:
        return load_config(path, secrets=secrets)
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
    warning = graph_version_warning(config.whatsapp.graph_url)
    if warning:
        print(f"  warning: {warning}", file=sys.stderr)
    if args.asterisk:
        return asyncio.run(_check_asterisk(config, args.guard_context))
    from gateway.settings import calling_warnings

    for i, n in enumerate(config.numbers):
        for warning in calling_warnings(n.calling, f"numbers[{i}].calling",
                                        config.media.connect_timeout_s):
            print(f"  warning: {warning}")
    return 0


async def _check_asterisk(config: Config, guard_contexts: list[str]) -> int:
    """``check-config --asterisk``: routes exist, and no WhatsApp context reaches a trunk.
    Exit 1 when a route is missing or AMI is unreachable; PSTN risks are warnings (exit 0)."""
    from gateway.asterisk.ami import AmiClient, AmiError, AmiNotConnected
    from gateway.asterisk.dialplan import check_dialplan

    ami_cfg = config.asterisk.ami
    # No orphan sweep: this client owns no call, and a gateway may be serving live ones.
    ami = AmiClient(ami_cfg, sweep_on_connect=False)
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


async def _serve(gateway, config_path: str) -> None:
    """Run until SIGTERM/SIGINT, which drain (a second one stops at once); SIGHUP reloads."""
    loop = asyncio.get_running_loop()
    drain, now = asyncio.Event(), asyncio.Event()
    reloads: set[asyncio.Task] = set()

    def on_stop_signal() -> None:
        if drain.is_set():
            log.warning("second stop signal: ending every call now")
            now.set()
        drain.set()

    def on_hangup() -> None:
        task = asyncio.ensure_future(_reload(gateway, config_path))
        reloads.add(task)
        task.add_done_callback(reloads.discard)

    for sig, handler in ((signal.SIGINT, on_stop_signal), (signal.SIGTERM, on_stop_signal),
                         (signal.SIGHUP, on_hangup)):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, handler)
    await gateway.start()
    pid_file = gateway.config.pid_file
    try:
        pid_file.write_text(f"{os.getpid()}\n")
    except OSError as exc:
        log.warning("cannot write the pid file %s (reload needs it): %s", pid_file, exc)
    try:
        await drain.wait()
        draining = asyncio.ensure_future(gateway.drain())
        stop_now = asyncio.ensure_future(now.wait())
        await asyncio.wait({draining, stop_now}, return_when=asyncio.FIRST_COMPLETED)
        for task in (draining, stop_now):
            task.cancel()
    finally:
        log.info("stopping")
        await gateway.stop()
        with contextlib.suppress(OSError):
            if pid_file.read_text().strip() == str(os.getpid()):
                pid_file.unlink()


async def _reload(gateway, config_path: str) -> None:
    """SIGHUP: re-read the file; an invalid one is refused and the running config kept."""
    log.info("SIGHUP: re-reading %s", config_path)
    try:
        new = await asyncio.to_thread(load_config, config_path)
    except ConfigError as exc:
        log.error("config reload refused, the running config is kept: %s has %d problem(s):\n%s",
                  config_path, len(exc.problems), "\n".join(f"  - {p}" for p in exc.problems))
        return
    gateway.reload(new)


def cmd_serve(args: argparse.Namespace) -> int:
    config = _load(args.config)
    _setup_logging(args.log_level, args.log_format, config, args.verbose_media)
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
    from gateway.app import Gateway

    asyncio.run(_serve(Gateway(config), args.config))
    return 0


def cmd_reload(args: argparse.Namespace) -> int:
    """Check the file, then ask the running gateway (pid file beside the store) to re-read it."""
    config = _load(args.config)  # an invalid file is reported here, and nothing is signalled
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


def cmd_demo(args: argparse.Namespace) -> int:
    _setup_logging(args.log_level, args.log_format, verbose_media=args.verbose_media)
    from gateway.sandbox.demo import DemoError, run_demo

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
    from gateway.resources import write_init

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


def build_parser() -> argparse.ArgumentParser:
    from gateway.version import version

    parser = argparse.ArgumentParser(prog="whatsapp-gateway",
                                     description="WhatsApp Business Calling <-> Asterisk gateway")
    parser.add_argument("--version", action="version", version=f"%(prog)s {version()}",
                        help="print the installed version and exit")
    sub = parser.add_subparsers(dest="command", required=True)

    def common(p: argparse.ArgumentParser, config_default: str | None = DEFAULT_CONFIG) -> None:
        p.add_argument("--config", "-c", default=config_default,
                       help=f"YAML config file (default: {config_default})")
        p.add_argument("--log-level", default="info",
                       choices=["debug", "info", "warning", "error"],
                       help="lowest level logged (default: info)")
        p.add_argument("--log-format", default="text", choices=["text", "json"],
                       help="text (logfmt-style) or one JSON object per line (default: text)")
        p.add_argument("--verbose-media", action="store_true",
                       help="let aioice/aiortc log below WARNING too (ICE checks, DTLS states)")

    p = sub.add_parser("serve", help="run the gateway")
    common(p)
    p.add_argument("--workers", type=int, metavar="N",
                   help="media processes behind one webhook/API/metrics endpoint (default: "
                        "the number of cores; 1 runs the gateway in this one process)")
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser("check-config", help="validate the config file and show what it means")
    p.add_argument("--config", "-c", default=DEFAULT_CONFIG, help=CONFIG_HELP)
    p.add_argument("--asterisk", action="store_true",
                   help="also connect to AMI: every configured context/extension must exist, "
                        "and warn when a WhatsApp context can reach a Dial() to a trunk "
                        "(Meta forbids PSTN on any leg). Hangs up nothing.")
    p.add_argument("--guard-context", action="append", default=["to-whatsapp"],
                   metavar="CONTEXT",
                   help="another context WhatsApp calls run in, for the PSTN guard "
                        "(repeatable; default: to-whatsapp, where agents dial users)")
    p.set_defaults(func=cmd_check_config)

    p = sub.add_parser("reload", help="check the config file, then make the running gateway "
                                      "re-read it (numbers, routes, limits, tokens; calls "
                                      "in progress are untouched)")
    p.add_argument("--config", "-c", default=DEFAULT_CONFIG,
                   help=f"YAML config file of the running gateway (default: {DEFAULT_CONFIG})")
    p.set_defaults(func=cmd_reload)

    p = sub.add_parser("demo", help="local Asterisk + WhatsApp simulator + gateway, no Meta "
                                    "account needed")
    common(p, config_default=None)
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
    p = sub.add_parser("init", help=what, description=what)
    p.add_argument("directory", help="where to write them (created if missing)")
    p.add_argument("--force", action="store_true",
                   help="overwrite files that are already there")
    p.set_defaults(func=cmd_init)

    try:
        from gateway.simulator.cli import add_subcommands
    except ImportError:  # pragma: no cover
        pass
    else:
        p = sub.add_parser("sim", help="the WhatsApp Cloud API and phone simulator")
        add_subcommands(p.add_subparsers(dest="sim_command", required=True))

    p = sub.add_parser("calls", help="call records (one per call, joinable with Asterisk's CDR)")
    calls_sub = p.add_subparsers(dest="calls_command", required=True)
    q = calls_sub.add_parser("list", help="list call records, newest first (or CSV)")
    q.add_argument("--config", "-c", default=DEFAULT_CONFIG, help=CONFIG_HELP)
    q.add_argument("--since", help="e.g. 24h, 2026-01-31, 2026-01-31T08:00, unix seconds")
    q.add_argument("--until", help="end of the time range, same forms as --since")
    q.add_argument("--direction", choices=["inbound", "outbound"],
                   help="only calls of this direction")
    q.add_argument("--outcome", help="only calls with this outcome (answered, failed, ...)")
    q.add_argument("--phone-number-id", help=NUMBER_HELP)
    q.add_argument("--limit", type=int, default=100, help="at most this many rows (default 100)")
    q.add_argument("--csv", action="store_true", help="CSV for a spreadsheet, oldest first")
    q.set_defaults(func=cmd_calls_list)

    p = sub.add_parser("settings", help="Meta calling settings kept in the config")
    settings_sub = p.add_subparsers(dest="settings_command", required=True)
    q = settings_sub.add_parser("upload-announcement",
                                help="upload the voicemail announcement (Ogg Opus, < 60 s) and "
                                     "print its media id for calling.voicemail")
    q.add_argument("file", help="the announcement, e.g. voicemail.ogg")
    q.add_argument("--config", "-c", default=DEFAULT_CONFIG, help=CONFIG_HELP)
    q.add_argument("--phone-number-id",
                   help="the business number it is for (needed when several are configured)")
    q.set_defaults(func=cmd_settings_upload_announcement)
    q = settings_sub.add_parser("apply", help="show the diff against Meta, then apply it")
    q.add_argument("--config", "-c", default=DEFAULT_CONFIG, help=CONFIG_HELP)
    q.add_argument("--dry-run", action="store_true", help="only show the diff")
    q.add_argument("--phone-number-id", action="append",
                   help="only this business number (repeatable; default: all)")
    q.set_defaults(func=cmd_settings_apply)

    p = sub.add_parser("permissions", help="outbound call permissions (ledger and requests)")
    perm_sub = p.add_subparsers(dest="permissions_command", required=True)
    q = perm_sub.add_parser("show", help="what the ledger knows of one user")
    q.add_argument("user", help="the WhatsApp user, E.164")
    q.add_argument("--config", "-c", default=DEFAULT_CONFIG, help=CONFIG_HELP)
    q.add_argument("--phone-number-id", help=NUMBER_HELP)
    q.set_defaults(func=cmd_permissions_show)
    q = perm_sub.add_parser("request", help="send a call-permission request message")
    q.add_argument("user", help="the WhatsApp user, E.164")
    q.add_argument("--body", default="May we call you on WhatsApp about your request?",
                   help="the message text the user sees")
    q.add_argument("--config", "-c", default=DEFAULT_CONFIG, help=CONFIG_HELP)
    q.add_argument("--phone-number-id", help=NUMBER_HELP)
    q.set_defaults(func=cmd_permissions_request)
    q = perm_sub.add_parser("button", help="send the voice-call button message (user calls you)")
    q.add_argument("user", help="the WhatsApp user, E.164")
    q.add_argument("--body", default="Tap to call us on WhatsApp.",
                   help="the message text above the button")
    q.add_argument("--display-text", default="Call Now", help="button text, at most 20 chars")
    q.add_argument("--ttl-minutes", type=int, default=10080,
                   help="how long the button works, 1-43200 minutes (default a week)")
    q.add_argument("--payload", help="comes back as WA_CTA_PAYLOAD on the user's call")
    q.add_argument("--config", "-c", default=DEFAULT_CONFIG, help=CONFIG_HELP)
    q.add_argument("--phone-number-id", help=NUMBER_HELP)
    q.set_defaults(func=cmd_permissions_button)
    return parser


def cmd_permissions_button(args: argparse.Namespace) -> int:
    from gateway.calls.permissions import send_call_button
    from gateway.whatsapp.graph import GraphClient, GraphError

    config = _load(args.config)
    pnid = _number_id(config, args.phone_number_id)

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


def _number_id(config: Config, given: str | None) -> str:
    if given:
        if config.number(given) is None:
            raise SystemExit(f"--phone-number-id {given} is not in the config's numbers")
        return given
    if len(config.numbers) != 1:
        raise SystemExit("several numbers are configured: give --phone-number-id")
    return config.numbers[0].phone_number_id


def cmd_calls_list(args: argparse.Namespace) -> int:
    from gateway.store import CallStore, filters_from_query

    config = _load(args.config, secrets=False)
    query = {k: v for k, v in {"since": args.since, "until": args.until,
                               "direction": args.direction, "outcome": args.outcome,
                               "phone_number_id": args.phone_number_id}.items() if v}
    try:
        filters = filters_from_query(query)
    except ValueError as exc:
        raise SystemExit(f"calls list: {exc}") from None

    async def run() -> None:
        store = await CallStore.open(config.store.path)
        try:
            if args.csv:
                await store.export_csv(sys.stdout, **filters)
                return
            records = await store.list(limit=args.limit, **filters)
            print(f"{'webhook (UTC)':19}  {'dir':8} {'from':>14} {'to':>14}  {'outcome':9} "
                  f"{'dur':>5}  {'side':8} {'q850':>4} {'meta':>6}  wacid / channel")
            import datetime as dt

            for r in records:
                when = dt.datetime.fromtimestamp(r.webhook_at, dt.UTC).strftime("%Y-%m-%d %H:%M:%S")
                dur = f"{r.duration_seconds:.0f}" if r.duration_seconds is not None else "-"
                print(f"{when:19}  {r.direction.value:8} {r.from_number:>14} {r.to_number:>14}  "
                      f"{r.outcome.value:9} {dur:>5}  "
                      f"{r.hangup_side.value if r.hangup_side else '-':8} "
                      f"{r.q850_cause if r.q850_cause is not None else '-':>4} "
                      f"{r.meta_error_code or '-':>6}  {r.wacid} {r.channel_id or ''}")
        finally:
            await store.close()

    asyncio.run(run())
    return 0


def cmd_settings_apply(args: argparse.Namespace) -> int:
    import aiohttp

    from gateway.settings import apply_settings

    config = _load(args.config)

    async def run() -> int:
        async with aiohttp.ClientSession() as session:
            return await apply_settings(config, session, args.dry_run, sys.stdout,
                                        args.phone_number_id)

    return asyncio.run(run())


def cmd_settings_upload_announcement(args: argparse.Namespace) -> int:
    from pathlib import Path

    from gateway.settings import announcement_problem
    from gateway.whatsapp.graph import GraphClient, GraphError

    config = _load(args.config)
    pnid = _number_id(config, args.phone_number_id)
    try:
        content = Path(args.file).read_bytes()
    except OSError as exc:
        print(f"{args.file}: cannot read ({exc.strerror})", file=sys.stderr)
        return 1
    problem = announcement_problem(content)
    if problem:
        print(f"{args.file}: not uploaded: {problem}", file=sys.stderr)
        return 1

    async def run() -> int:
        graph = GraphClient(config.whatsapp)
        try:
            media_id = await graph.upload_media(pnid, content, "audio/ogg", Path(args.file).name,
                                                use_case="call_voicemail_announcement")
        except GraphError as exc:
            print(f"not uploaded: {exc}", file=sys.stderr)
            return 1
        finally:
            await graph.close()
        print(f"announcement uploaded for {pnid}: media id {media_id}")
        print("  in the config: calling.voicemail.audio.default.announcement_media_id: "
              f"{media_id}")
        return 0

    return asyncio.run(run())


def cmd_permissions_show(args: argparse.Namespace) -> int:
    import json

    from gateway.calls.permissions import PermissionLedger

    config = _load(args.config, secrets=False)
    pnid = _number_id(config, args.phone_number_id)
    user = args.user.lstrip("+")

    async def run() -> None:
        ledger = await PermissionLedger.open(config.store.path)
        try:  # get() includes the can_call / can_request decisions
            print(json.dumps(await ledger.get(pnid, user), indent=2, default=str))
        finally:
            await ledger.close()

    asyncio.run(run())
    return 0


def cmd_permissions_request(args: argparse.Namespace) -> int:
    from gateway.calls.permissions import PermissionLedger, request_permission
    from gateway.whatsapp.graph import GraphClient

    config = _load(args.config)
    pnid = _number_id(config, args.phone_number_id)

    async def run() -> int:
        ledger = await PermissionLedger.open(config.store.path)
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


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        result = args.func(args)
    except BrokenPipeError:  # e.g. `calls list | head`: the reader has all it wanted
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    return int(result or 0)


if __name__ == "__main__":
    sys.exit(main())
