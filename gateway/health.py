"""/healthz and /readyz: is the process alive, and can it take a call right now.

``/healthz`` answers 200 as long as the event loop runs (a hung loop never answers, which is
what a liveness probe wants to notice). ``/readyz`` answers 200 only when a new call could be
taken: AMI connected, ports left in every range, the call store writable; otherwise 503. A
ready gateway with warnings (a configured dialplan context missing) answers 200 with status
``degraded`` and the warnings listed. Both
bodies are JSON with the reasons in words, so ``curl`` tells the operator what to fix.

The app supplies a probe coroutine returning :class:`ReadinessInputs`; this module knows
nothing of AMI, sockets or SQLite.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web


@dataclass(frozen=True)
class PortUsage:
    name: str
    """What the ports are for, e.g. ``asterisk_rtp`` (media.rtp_ports)."""
    free: int
    total: int


@dataclass(frozen=True)
class ReadinessInputs:
    ami_connected: bool
    store_writable: bool
    port_pools: tuple[PortUsage, ...] = ()
    ami_detail: str = ""
    """E.g. 'connection refused by 127.0.0.1:5038' when not connected."""
    ami_servers: dict[str, bool] = field(default_factory=dict)
    """With several Asterisk servers (asterisk.servers): each one's name and whether its AMI
    is connected. Ready while one is; the app lists those down as warnings."""
    store_detail: str = ""
    """Why the store is not writable (CallStore.check_writable's message)."""
    draining: bool = False
    """The gateway is shutting down and takes no new calls."""
    warnings: tuple[str, ...] = ()
    """Problems that do not stop new calls in general but hurt some (a configured context
    missing from the dialplan): status ``degraded``, still 200 so the gateway stays in
    rotation for the numbers that work."""
    extra: dict[str, Any] = field(default_factory=dict)
    """Anything else worth showing (e.g. active calls); does not affect readiness."""


def liveness(started_at: float, now: float | None = None) -> dict[str, Any]:
    """Alive, since when, and how many asyncio tasks the loop holds: a number that keeps
    growing between quiet periods is a leak (benchmarks/soak.py watches it)."""
    now = time.time() if now is None else now
    try:
        tasks = len(asyncio.all_tasks())
    except RuntimeError:  # no running loop (called outside the server)
        tasks = 0
    return {"status": "alive", "uptime_seconds": round(now - started_at, 1),
            "asyncio_tasks": tasks}


def readiness(inputs: ReadinessInputs, min_free_ports: int = 1) -> tuple[bool, dict[str, Any]]:
    """(ready, body): body lists every check with ok/detail and the reasons it is not ready."""
    checks: dict[str, dict[str, Any]] = {}
    reasons: list[str] = []

    def check(name: str, ok: bool, detail: str, **more: Any) -> None:
        checks[name] = {"ok": ok, "detail": detail, **more}
        if not ok:
            reasons.append(f"{name}: {detail}")

    check("ami", inputs.ami_connected,
          "connected" if inputs.ami_connected
          else f"not connected to Asterisk{': ' + inputs.ami_detail if inputs.ami_detail else ''}",
          **({"servers": {name: "connected" if up else "not connected"
                          for name, up in inputs.ami_servers.items()}}
             if inputs.ami_servers else {}))
    check("store", inputs.store_writable,
          "writable" if inputs.store_writable else (inputs.store_detail or "not writable"))
    for pool in inputs.port_pools:
        ok = pool.free >= min_free_ports
        check(f"ports.{pool.name}", ok,
              f"{pool.free} of {pool.total} free" if ok
              else f"exhausted: {pool.free} of {pool.total} free", free=pool.free,
              total=pool.total)
    if inputs.draining:
        check("draining", False, "draining: finishing the calls in progress, taking no new "
              "calls (shutting down)")

    status = "not ready" if reasons else "degraded" if inputs.warnings else "ready"
    body: dict[str, Any] = {"status": status, "reasons": reasons, "checks": checks}
    if inputs.warnings:
        body["warnings"] = list(inputs.warnings)
    if inputs.extra:
        body["info"] = inputs.extra
    return not reasons, body


def add_health_routes(app: web.Application,
                      probe: Callable[[], Awaitable[ReadinessInputs]], *,
                      min_free_ports: int = 1, probe_deadline_s: float = 3.0,
                      started_at: float | None = None) -> None:
    """Add ``GET /healthz`` and ``GET /readyz``; ``probe`` gathers the readiness inputs."""
    born = time.time() if started_at is None else started_at

    async def healthz(request: web.Request) -> web.Response:
        return web.json_response(liveness(born))

    async def readyz(request: web.Request) -> web.Response:
        try:
            inputs = await asyncio.wait_for(probe(), probe_deadline_s)
        except TimeoutError:
            return _not_ready(f"readiness probe did not answer within {probe_deadline_s:g} s")
        except Exception as exc:  # the probe itself broke: say so, stay up
            return _not_ready(f"readiness probe failed: {type(exc).__name__}: {exc}")
        ready, body = readiness(inputs, min_free_ports)
        return web.json_response(body, status=200 if ready else 503)

    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)


def _not_ready(reason: str) -> web.Response:
    return web.json_response({"status": "not ready", "reasons": [reason], "checks": {}},
                             status=503)
