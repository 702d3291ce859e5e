"""One worker of ``serve --workers N``: a whole :class:`~gateway.app.Gateway` behind the
supervisor, on a private Unix socket.

A worker is today's gateway with four differences, all set here through the app's hooks:

- its calls' channel ids name it (``wa-w1-...``, gateway/workers/identity.py), so its AMI
  orphan sweep and its restart clean-up touch only what it left, never another worker's call;
- it has its own slice of ``media.rtp_ports`` and ``media.webrtc_ports``, so workers never
  race for a port;
- of the AMI ``UserEvent(WhatsAppDial)`` every worker sees, it dials only those whose user is
  its own (:func:`gateway.workers.routing.user_worker`): exactly one worker makes the call;
- it listens on a Unix socket (mode 0700 directory of the supervisor) and takes webhook
  events already verified by the supervisor (``POST /_worker/events``: the signed body and
  which of its events are this worker's), plus the ``/v1`` API the supervisor forwards.

It exits when its supervisor does (stdin closes), drains on SIGTERM like ``serve`` and reloads
on SIGHUP.

    python -m gateway.workers.worker --config gateway.yaml --index 1 --count 2 \\
        --socket /run/.../w1.sock --ready-fd 5
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import dataclasses
import logging
import os
import signal
import sys
from collections import Counter

from aiohttp import web

from gateway.config import Config, ConfigError, PortRange, load_config
from gateway.workers import identity
from gateway.workers.routing import user_worker

log = logging.getLogger("gateway.workers.worker")


def port_slice(ports: PortRange, index: int, count: int) -> PortRange:
    """Worker ``index``'s share of a port range: ``count`` contiguous, disjoint slices."""
    size = len(ports)
    if size < count:
        raise ValueError(f"{ports.first}-{ports.last} has {size} port(s) for {count} workers")
    first = ports.first + index * size // count
    last = ports.first + (index + 1) * size // count - 1
    return PortRange(first, last)


def worker_config(config: Config, index: int, count: int) -> Config:
    """``config`` as worker ``index`` runs it: its own slice of the media ports, and its own
    instance id (``<instance_id>-w<index>``, gateway/workers/identity.py), which its channel
    ids and records carry."""
    media = config.media
    return dataclasses.replace(
        config,
        gateway=dataclasses.replace(config.gateway,
                                    instance_id=identity.worker_instance(
                                        config.gateway.instance_id, index)),
        media=dataclasses.replace(
            media, rtp_ports=port_slice(media.rtp_ports, index, count),
            webrtc_ports=port_slice(media.webrtc_ports, index, count)
            if media.webrtc_ports is not None else None))


def add_worker_routes(app: web.Application, gateway) -> None:
    """The supervisor's side door: events it verified, and what it needs to route."""
    from gateway.whatsapp.events import CallEvent, MalformedWebhook, ParsedWebhook, parse_body

    elsewhere: dict[str, int] = {}
    admitting: dict[str, str] = {}  # call id -> business number, until admitted or refused
    gateway.calls.elsewhere = lambda pnid: elsewhere.get(pnid, 0)

    async def events(request: web.Request) -> web.Response:
        message = await request.json()
        try:
            parsed = parse_body(base64.b64decode(message["body"]))
        except MalformedWebhook as exc:  # cannot happen: the supervisor parsed it first
            return web.json_response({"error": str(exc)}, status=400)
        elsewhere.clear()
        elsewhere.update(message.get("elsewhere") or {})
        mine = [parsed.events[i] for i in message["events"] if 0 <= i < len(parsed.events)]
        duplicates = gateway.calls.handle(ParsedWebhook(events=mine))
        for ev in mine:
            if isinstance(ev, CallEvent) and ev.call_id in gateway.calls._admitting:
                admitting[ev.call_id] = ev.phone_number_id
        return web.json_response({"duplicates": duplicates, **state()})

    def state() -> dict:
        """What the supervisor balances on: calls per business number, counting connects
        still being admitted (the store is asked whether they are replays first)."""
        for call_id in [c for c in admitting if c not in gateway.calls._admitting]:
            del admitting[call_id]
        by_number = Counter(admitting.values())
        by_number.update(c.record.phone_number_id for c in gateway.calls.live_calls())
        return {"index": identity.worker().index, "pid": os.getpid(),
                "active": gateway.calls.active_count + len(admitting),
                "by_number": by_number,
                "calls": sorted(c.wacid or c.channel_id for c in gateway.calls.live_calls())}

    async def get_state(request: web.Request) -> web.Response:
        return web.json_response(state())

    app.router.add_post("/_worker/events", events)
    app.router.add_get("/_worker/state", get_state)


def build_worker(config: Config, index: int, count: int, socket_path: str):
    from gateway.app import Gateway

    identity.set_worker(index, count, config.gateway.instance_id)
    gateway = Gateway(worker_config(config, index, count))
    gateway.unix_path = socket_path
    gateway.claims_dial = lambda ev: user_worker(
        ev.get("Recipient") or ev.get("To") or "", count) == index
    gateway.owns_record = lambda record: identity.is_mine(record.channel_id) or (
        index == 0 and not record.channel_id)
    # The orphan sweep hangs up only this worker's own orphans: a sibling's channel is its
    # live call (worker 0 also takes those no running worker owns, identity.is_mine).
    owned = gateway.orphan_sweep.owned
    gateway.orphan_sweep.owned = lambda uid: not identity.is_mine(uid) or owned(uid)
    add_worker_routes(gateway.web, gateway)
    return gateway


async def run(args: argparse.Namespace) -> None:
    config = load_config(args.config)
    gateway = build_worker(config, args.index, args.count, args.socket)
    loop = asyncio.get_running_loop()
    drain, now = asyncio.Event(), asyncio.Event()

    def on_stop_signal() -> None:
        if drain.is_set():
            now.set()
        drain.set()

    def on_hangup() -> None:
        try:
            new = load_config(args.config)
        except ConfigError as exc:
            log.error("config reload refused, the running config is kept: %s", exc)
            return
        gateway.reload(worker_config(new, args.index, args.count))

    for sig, handler in ((signal.SIGTERM, on_stop_signal), (signal.SIGHUP, on_hangup)):
        loop.add_signal_handler(sig, handler)
    loop.add_signal_handler(signal.SIGINT, lambda: None)  # Ctrl-C reaches the supervisor too
    await _watch_parent(loop, now)
    await gateway.start()
    def tell(note: bytes) -> None:
        if args.ready_fd is not None:
            with contextlib.suppress(OSError):  # the supervisor is gone: stdin says so too
                os.write(args.ready_fd, note)

    tell(b"ready\n")  # to the supervisor (gateway/workers/process.py)
    try:
        first = asyncio.ensure_future(drain.wait())
        gone = asyncio.ensure_future(now.wait())
        await asyncio.wait({first, gone}, return_when=asyncio.FIRST_COMPLETED)
        if drain.is_set() and not now.is_set():
            draining = asyncio.ensure_future(gateway.drain())
            await asyncio.wait({draining, gone}, return_when=asyncio.FIRST_COMPLETED)
            draining.cancel()
            # Stay up, refusing new calls, until the supervisor says every worker is done: a
            # worker that left early would leave the calls routed to it unanswered.
            tell(b"drained\n")
            await gone
        for task in (first, gone):
            task.cancel()
    finally:
        await gateway.stop()


async def _watch_parent(loop: asyncio.AbstractEventLoop, now: asyncio.Event) -> None:
    """The supervisor holds our stdin open: end of file means it is gone (even SIGKILLed),
    and a worker alone would carry calls nobody can reach: stop now (ending them)."""
    class _Eof(asyncio.Protocol):
        def connection_lost(self, exc: Exception | None) -> None:
            if not now.is_set():
                log.warning("supervisor gone: stopping this worker")
            now.set()

    with contextlib.suppress(OSError, ValueError):
        await loop.connect_read_pipe(_Eof, sys.stdin)


class _NamedWorker(logging.Filter):
    """``... INFO w1/gateway.calls.manager ...``: which worker wrote the line."""

    def __init__(self, index: int):
        super().__init__()
        self.prefix = f"w{index}/"

    def filter(self, record: logging.LogRecord) -> bool:
        if not record.name.startswith(self.prefix):
            record.name = self.prefix + record.name
        return True


def main(argv: list[str] | None = None) -> int:
    from gateway.logs import config_secrets, setup_logging

    parser = argparse.ArgumentParser(prog="gateway.workers.worker")
    parser.add_argument("--config", required=True)
    parser.add_argument("--index", type=int, required=True)
    parser.add_argument("--count", type=int, required=True)
    parser.add_argument("--socket", required=True)
    parser.add_argument("--ready-fd", type=int)
    parser.add_argument("--log-level", default="info")
    parser.add_argument("--log-format", default="text")
    parser.add_argument("--verbose-media", action="store_true")
    args = parser.parse_args(argv)
    config = load_config(args.config)
    setup_logging(args.log_level.upper(), args.log_format, secrets=config_secrets(config),
                  verbose_media=args.verbose_media)
    for handler in logging.getLogger().handlers:  # the workers share the supervisor's stream
        handler.addFilter(_NamedWorker(args.index))
    asyncio.run(run(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
