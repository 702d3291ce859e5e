"""``serve --workers N``: one public HTTP side, N media processes behind it.

A gateway process spends its core on media (Opus, SRTP, RTP: about 20 calls per core, README
"Capacity"), so one process cannot use a host's other cores. The supervisor is the one process
the outside world talks to — ``/webhook`` (the signature is checked here, so nothing
unauthenticated ever reaches a worker), ``/v1`` (the bearer token too), ``/metrics`` (every
worker's, combined), ``/healthz`` and ``/readyz`` — and it carries no media. It starts N
workers (gateway/workers/worker.py), hands each call's events to the worker that owns it
(gateway/workers/routing.py), and starts a worker again when it dies: the new one ends the
calls the dead one carried, on both sides, as a restarted gateway does.

The call store stays the SQLite file of ``store.path``: the workers and the supervisor each open
it (WAL mode, busy timeout), each writing only its own calls' records. The permission ledger's
decisions about one user are all taken in that user's worker (routing.py), so its
once-per-24 h rules hold across processes.

SIGTERM drains every worker (a second one ends their calls now), SIGHUP makes the supervisor
and every worker re-read the config, like ``serve``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web

from gateway import strict_json
from gateway.api import bearer_auth
from gateway.config import Config, ConfigError, load_config
from gateway.health import liveness
from gateway.lifecycle import run_until_stopped
from gateway.whatsapp.events import ParsedWebhook
from gateway.whatsapp.webhook import add_webhook_routes
from gateway.workers import metrics as worker_metrics
from gateway.workers.process import WorkerProcess
from gateway.workers.routing import Delivery, Router

log = logging.getLogger("gateway.workers")


def _error(status: int, message: str, **fields: Any) -> web.Response:
    return web.json_response({"error": {"message": message, **fields}}, status=status)


class Supervisor:
    def __init__(self, config: Config, config_path: str, count: int,
                 worker_args: list[str] | None = None):
        from gateway.metrics import GatewayMetrics

        if count < 1:
            raise ValueError("--workers must be at least 1")
        for name, ports in (("media.rtp_ports", config.media.rtp_ports),
                            ("media.webrtc_ports", config.media.webrtc_ports)):
            if ports is not None and len(ports) < count:
                raise ValueError(f"{name} has {len(ports)} port(s): not enough for {count} "
                                 "workers (each gets its own slice)")
        self.config = config
        self.config_path = str(Path(config_path).resolve())
        self.count = count
        self.router = Router(count)
        self.metrics = GatewayMetrics.from_config(config)  # webhook results, process_*
        self.metrics_dir = worker_metrics.new_metrics_dir()
        self.aggregated = worker_metrics.AggregatedMetrics(self.metrics_dir,
                                                           self.metrics.registry)
        self.socket_dir = tempfile.mkdtemp(prefix="wa-gateway-workers-")  # mode 0700
        env = {**os.environ, worker_metrics.ENV: self.metrics_dir}
        self.workers = [WorkerProcess(i, count, self.config_path,
                                      os.path.join(self.socket_dir, f"w{i}.sock"), env,
                                      list(worker_args or ()), on_state=self._worker_state)
                        for i in range(count)]
        self.stopping = False
        self.started_at = time.time()
        self._watchers: list[asyncio.Task] = []
        self._runner: web.AppRunner | None = None
        self.port: int | None = None
        self.web = web.Application(middlewares=[bearer_auth(lambda: self.config)])
        add_webhook_routes(self.web, lambda: self.config.whatsapp, self._deliver,
                           self.metrics.webhook)
        self.web.router.add_get("/metrics", self._metrics)
        self.web.router.add_get("/healthz", self._healthz)
        self.web.router.add_get("/readyz", self._readyz)
        self.web.router.add_route("*", "/v1/{tail:.*}", self._api)

    @property
    def url(self) -> str:
        return f"http://{self.config.http.host}:{self.port}"

    # -- life ------------------------------------------------------------------------------

    async def start(self) -> None:
        await self._prepare_store()
        await asyncio.gather(*(w.start() for w in self.workers))
        for w in self.workers:
            self.router.worker_up(w.index)
            self._watchers.append(asyncio.ensure_future(self._watch(w)))
        self._runner = web.AppRunner(self.web, access_log=None, lingering_time=2.0)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.config.http.host, self.config.http.port)
        await site.start()
        sockets = getattr(site._server, "sockets", None) or []
        self.port = sockets[0].getsockname()[1] if sockets else self.config.http.port
        log.info("gateway listening on %s (webhook %s/webhook) with %d workers", self.url,
                 self.url, self.count)

    async def _prepare_store(self) -> None:
        """Create or migrate the store and the ledger's tables once, before N processes open
        the file at the same moment."""
        from gateway.calls.permissions import PermissionLedger
        from gateway.store import CallStore

        store = await CallStore.open(self.config.store.path)
        await store.close()
        ledger = await PermissionLedger.open(self.config.store.path)
        await ledger.close()

    async def _watch(self, worker: WorkerProcess) -> None:
        """Start a dead worker again (its calls are ended by the new one's start-up)."""
        while True:
            pid = worker.pid
            code = await worker.wait_exit()
            self.router.worker_down(worker.index)
            if pid is not None:
                worker_metrics.worker_died(self.metrics_dir, pid)
            if self.stopping:
                return
            delay = worker.restart_delay()
            log.error("worker %d (pid %s) exited with %s; starting it again%s", worker.index,
                      pid, code, f" in {delay:g} s" if delay else "")
            await asyncio.sleep(delay)
            while not self.stopping:
                try:
                    await worker.start()
                except (RuntimeError, TimeoutError, OSError) as exc:
                    log.error("worker %d did not start: %s", worker.index, exc)
                    await asyncio.sleep(worker.restart_delay())
                    continue
                worker.restarts += 1
                self.router.worker_up(worker.index)
                break
            if self.stopping:
                return

    def _worker_state(self, index: int, state: dict | None, new_calls: Counter[str]) -> None:
        if state is None:
            self.router.worker_down(index)
        else:
            self.router.report(index, int(state.get("active", 0)), state.get("by_number"),
                               new_calls)

    def signal_workers(self, sig: int) -> None:
        for w in self.workers:
            w.signal(sig)

    async def drain(self) -> None:
        """SIGTERM: every worker drains (no new call, the live ones go on for up to
        ``service.shutdown_grace``); once all have, they stop together. Until then a new
        call still reaches a worker, which passes it to a gateway still taking calls on a
        shared store (gateway/calls/pass_on.py), or else refuses it (Meta gets its reject)."""
        self.stopping = True
        self.signal_workers(signal.SIGTERM)
        await asyncio.gather(*(w.drained.wait() for w in self.workers))
        self.signal_workers(signal.SIGTERM)
        await asyncio.gather(*(w.proc.wait() for w in self.workers if w.proc is not None))

    async def stop(self) -> None:
        self.stopping = True
        for task in self._watchers:
            task.cancel()
        for w in self.workers:  # SIGTERM twice: drain, then end the calls now
            w.signal(signal.SIGTERM)
            w.signal(signal.SIGTERM)
        for w in self.workers:
            if w.proc is not None:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(w.proc.wait(), 15)
            await w.close()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        worker_metrics.remove_metrics_dir(self.metrics_dir)
        for w in self.workers:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(w.socket_path)
        with contextlib.suppress(OSError):
            os.rmdir(self.socket_dir)

    def reload(self) -> None:
        """SIGHUP: the supervisor's own part (secrets, tokens), then every worker."""
        try:
            new = load_config(self.config_path)
        except ConfigError as exc:
            log.error("config reload refused, the running config is kept: %s", exc)
            return
        self.config, _restart = self.config.reloaded(new)
        self.signal_workers(signal.SIGHUP)

    # -- webhook ---------------------------------------------------------------------------

    def _deliver(self, parsed: ParsedWebhook) -> int:
        """Signed and parsed: each worker gets the body and which of its events are its own.
        Duplicates are the owner's to tell (it keeps the call's history): counted as 0 here."""
        for what in parsed.ignored:
            log.info("webhook: ignored %s", what)
        for index, batch in self.router.split(parsed.events).items():
            self.workers[index].deliver(Delivery(parsed.raw, batch.events, batch.new_calls,
                                                 batch.elsewhere))
        return 0

    # -- /v1 -------------------------------------------------------------------------------

    async def _api(self, request: web.Request) -> web.Response:
        body = await request.read() if request.can_read_body else None
        index = self._api_worker(request, body)
        if index is None:
            return _error(503, "no worker is running", reason="workers_down")
        headers = {k: v for k, v in request.headers.items()
                   if k.lower() in ("authorization", "content-type", "accept")}
        try:
            status, data, keep = await self.workers[index].request(
                request.method, request.path_qs, body=body, headers=headers)
        except (TimeoutError, ConnectionError, OSError, aiohttp.ClientError) as exc:
            return _error(503, f"worker {index} is not available ({exc}); try again",
                          reason="worker_restarting")
        return web.Response(status=status, body=data, headers=keep)

    def _api_worker(self, request: web.Request, body: bytes | None) -> int | None:
        """Outbound calls and permission requests to the user's worker (one place decides
        each user's permissions); a call by id to its owner; anything else to any worker."""
        parts = request.path.strip("/").split("/")
        if request.method == "POST" and parts[1:] in (["calls"], ["permission-requests"]):
            user = _body_user(body)
            if user:
                return self.router.for_user(user)
        if parts[1:2] == ["calls"] and len(parts) == 3:
            owner = self.router.owner_of_call(parts[2])
            if owner is not None:
                return owner
        if parts[1:2] == ["permissions"] and len(parts) == 4:
            return self.router.for_user(parts[3])
        return self.router.least_loaded()

    # -- metrics and health ----------------------------------------------------------------

    async def _metrics(self, request: web.Request) -> web.Response:
        from gateway.metrics import CONTENT_TYPE

        body = await asyncio.to_thread(self.aggregated.exposition)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE})

    async def _healthz(self, request: web.Request) -> web.Response:
        return web.json_response(liveness(self.started_at))

    async def _readyz(self, request: web.Request) -> web.Response:
        """Ready when every worker is: each worker's own /readyz (AMI, ports, store), under
        ``checks.worker<i>``; ``info.workers`` says which process is which."""
        async def one(w: WorkerProcess) -> tuple[int, dict]:
            try:
                return await w.get_json("/readyz")
            except (TimeoutError, ConnectionError, OSError, ValueError, aiohttp.ClientError) as exc:
                return 503, {"status": "not ready", "reasons": [f"not running: {exc}"]}

        answers = await asyncio.gather(*(one(w) for w in self.workers))
        reasons: list[str] = []
        warnings: list[str] = []
        checks = {}
        for w, (status, body) in zip(self.workers, answers, strict=True):
            checks[f"worker{w.index}"] = {"ok": status == 200, "status": body.get("status"),
                                          "checks": body.get("checks", {}),
                                          **({"info": body["info"]} if body.get("info") else {})}
            reasons += [f"worker {w.index}: {r}" for r in body.get("reasons", [])]
            warnings += [x for x in body.get("warnings", []) if x not in warnings]
        if self.stopping:
            reasons.append("draining: finishing the calls in progress, taking no new calls")
        out: dict[str, Any] = {
            "status": "not ready" if reasons else "degraded" if warnings else "ready",
            "reasons": reasons, "checks": checks,
            "info": {"workers": [{"index": w.index, "pid": w.pid, "restarts": w.restarts,
                                  "calls": self.router.load[w.index]} for w in self.workers]}}
        if warnings:
            out["warnings"] = warnings
        return web.json_response(out, status=503 if reasons else 200)


def _body_user(body: bytes | None) -> str:
    """The user a /v1 request body names (``to`` or ``recipient``), or "" (the worker will
    answer the 400 with the field named)."""
    try:
        data = strict_json.loads(body or b"")
    except (strict_json.StrictJsonError, ValueError):
        return ""
    if not isinstance(data, dict):
        return ""
    user = data.get("to") if data.get("to") is not None else data.get("recipient")
    return user if isinstance(user, str) else ""


async def serve(config: Config, config_path: str, count: int, worker_args: list[str]) -> None:
    """Run the supervisor until SIGTERM/SIGINT (drain; a second one ends calls now)."""
    supervisor = Supervisor(config, config_path, count, worker_args)
    await run_until_stopped(
        supervisor, config.pid_file, on_reload=supervisor.reload,
        on_second_stop=lambda: supervisor.signal_workers(signal.SIGTERM),
        draining=f"draining {count} workers")

