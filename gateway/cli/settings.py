"""``settings apply`` pushes each number's ``calling:`` block to Meta after showing the diff;
``settings upload-announcement`` uploads the voicemail announcement that block names."""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path

from gateway.cli.common import add_config_option, load, number_id
from gateway.settings import announcement_problem, apply_settings
from gateway.whatsapp.graph import GraphClient, GraphError


def add_parser(commands: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = commands.add_parser("settings", help="Meta calling settings kept in the config")
    settings = p.add_subparsers(dest="settings_command", required=True)
    q = settings.add_parser("upload-announcement",
                            help="upload the voicemail announcement (Ogg Opus, < 60 s) and "
                                 "print its media id for calling.voicemail")
    q.add_argument("file", help="the announcement, e.g. voicemail.ogg")
    add_config_option(q)
    q.add_argument("--phone-number-id",
                   help="the business number it is for (needed when several are configured)")
    q.set_defaults(func=cmd_settings_upload_announcement)

    q = settings.add_parser("apply", help="show the diff against Meta, then apply it")
    add_config_option(q)
    q.add_argument("--dry-run", action="store_true", help="only show the diff")
    q.add_argument("--phone-number-id", action="append",
                   help="only this business number (repeatable; default: all)")
    q.set_defaults(func=cmd_settings_apply)


def cmd_settings_apply(args: argparse.Namespace) -> int:
    config = load(args.config)

    async def run() -> int:
        async with GraphClient(config.whatsapp) as graph:
            return await apply_settings(config, graph, args.dry_run, sys.stdout,
                                        args.phone_number_id)

    return asyncio.run(run())


def cmd_settings_upload_announcement(args: argparse.Namespace) -> int:
    config = load(args.config)
    pnid = number_id(config, args.phone_number_id)
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
        async with GraphClient(config.whatsapp) as graph:
            try:
                media_id = await graph.upload_media(pnid, content, "audio/ogg",
                                                    Path(args.file).name,
                                                    use_case="call_voicemail_announcement")
            except GraphError as exc:
                print(f"not uploaded: {exc}", file=sys.stderr)
                return 1
        print(f"announcement uploaded for {pnid}: media id {media_id}")
        print("  in the config: calling.voicemail.audio.default.announcement_media_id: "
              f"{media_id}")
        return 0

    return asyncio.run(run())
