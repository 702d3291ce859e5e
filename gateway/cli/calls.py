"""``calls list``: the call records the gateway keeps, as a table or CSV (one row per call,
joinable with Asterisk's CDR)."""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import sys

from gateway.calls.record import CallRecord
from gateway.cli.common import NUMBER_HELP, add_config_option, load
from gateway.store import CallStore, filters_from_query


def add_parser(commands: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = commands.add_parser("calls", help="call records (one per call, joinable with "
                                          "Asterisk's CDR)")
    calls = p.add_subparsers(dest="calls_command", required=True)
    q = calls.add_parser("list", help="list call records, newest first (or CSV)")
    add_config_option(q)
    q.add_argument("--since", help="e.g. 24h, 2026-01-31, 2026-01-31T08:00, unix seconds")
    q.add_argument("--until", help="end of the time range, same forms as --since")
    q.add_argument("--direction", choices=["inbound", "outbound"],
                   help="only calls of this direction")
    q.add_argument("--outcome", help="only calls with this outcome (answered, failed, ...)")
    q.add_argument("--phone-number-id", help=NUMBER_HELP)
    q.add_argument("--limit", type=int, default=100, help="at most this many rows (default 100)")
    q.add_argument("--csv", action="store_true", help="CSV for a spreadsheet, oldest first")
    q.set_defaults(func=cmd_calls_list)


def cmd_calls_list(args: argparse.Namespace) -> int:
    config = load(args.config, secrets=False)
    query = {k: v for k, v in {"since": args.since, "until": args.until,
                               "direction": args.direction, "outcome": args.outcome,
                               "phone_number_id": args.phone_number_id}.items() if v}
    try:
        filters = filters_from_query(query)
    except ValueError as exc:
        raise SystemExit(f"calls list: {exc}") from None

    async def run() -> None:
        store = await CallStore.open(config.store.calls_at)
        try:
            if args.csv:
                await store.export_csv(sys.stdout, **filters)
                return
            records = await store.list(limit=args.limit, **filters)
            print(f"{'webhook (UTC)':19}  {'dir':8} {'from':>14} {'to':>14}  {'outcome':9} "
                  f"{'dur':>5}  {'side':8} {'q850':>4} {'meta':>6}  wacid / channel")
            for record in records:
                print(_row(record))
        finally:
            await store.close()

    asyncio.run(run())
    return 0


def _row(r: CallRecord) -> str:
    when = dt.datetime.fromtimestamp(r.webhook_at, dt.UTC).strftime("%Y-%m-%d %H:%M:%S")
    dur = f"{r.duration_seconds:.0f}" if r.duration_seconds is not None else "-"
    return (f"{when:19}  {r.direction.value:8} {r.from_number:>14} {r.to_number:>14}  "
            f"{r.outcome.value:9} {dur:>5}  "
            f"{r.hangup_side.value if r.hangup_side else '-':8} "
            f"{r.q850_cause if r.q850_cause is not None else '-':>4} "
            f"{r.meta_error_code or '-':>6}  {r.wacid} {r.channel_id or ''}")
