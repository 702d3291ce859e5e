"""One worker process as the supervisor sees it: started, watched, restarted, talked to.

The local channel is HTTP over the worker's Unix socket (aiohttp on both ends, as the public
side already is), in a directory only the gateway's user can enter. Webhook events go through a
FIFO per worker, one request at a time, so a call's ``connect`` always reaches its worker before
its ``terminate`` (Meta may send them a few milliseconds apart). A worker that dies is started
again; events for it wait for the new one (up to :data:`DELIVERY_WAIT_S`), which ends the calls
the dead one carried (its start-up clean-up) and takes the rest.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
import os
import sys
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

import aiohttp

from gateway.workers.routing import Delivery

log = logging.getLogger("gateway.workers")

START_TIMEOUT_S = 60.0
"""A worker opens the store, connects AMI (up to its connect timeout) and listens."""
DELIVERY_WAIT_S = 30.0
"""How long events for a restarting worker are held before they are dropped (logged)."""
RESTART_BACKOFF_S = (0.0, 0.5, 1.0, 2.0, 5.0)
"""Delay before each restart of a worker that keeps dying within :data:`STABLE_S`."""
STABLE_S = 10.0


@dataclass
class WorkerProcess:
    index: int
    count: int
    config_path: str
    socket_path: str
    env: dict[str, str]
    args: list[str] = field(default_factory=list)
    """Extra worker arguments (log level and format)."""
    on_state: Callable[[int, dict | None, Counter[str]], None] = \
        lambda index, state, new_calls: None
    """Told the worker's state after each delivery (and how many new calls that delivery
    carried), and None when it dies."""

    def __post_init__(self) -> None:
        self.proc: asyncio.subprocess.Process | None = None
        self.ready = asyncio.Event()
        self.drained = asyncio.Event()
        """Set when the worker has drained (SIGTERM) or is gone."""
        self._notes: asyncio.Task | None = None
        self.restarts = 0
        self.restarts_in_a_row = 0
        self.started_at = 0.0
        self.queue: asyncio.Queue[Delivery] = asyncio.Queue()
        self.session: aiohttp.ClientSession | None = None
        self._sender: asyncio.Task | None = None

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    @property
    def url(self) -> str:
        return "http://worker"

    # -- life ------------------------------------------------------------------------------

    async def start(self) -> None:
        """Start the process and return once it listens (raises if it dies first)."""
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.socket_path)
        self.drained.clear()
        read_fd, write_fd = os.pipe()
        try:
            self.proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "gateway.workers.worker", "--config", self.config_path,
                "--index", str(self.index), "--count", str(self.count),
                "--socket", self.socket_path, "--ready-fd", str(write_fd), *self.args,
                stdin=asyncio.subprocess.PIPE, pass_fds=(write_fd,), env=self.env)
        finally:
            os.close(write_fd)
        self.started_at = time.monotonic()
        notes = asyncio.StreamReader()
        transport, _ = await asyncio.get_running_loop().connect_read_pipe(
            lambda: asyncio.StreamReaderProtocol(notes), os.fdopen(read_fd, "rb", 0))
        try:
            line = await asyncio.wait_for(notes.readline(), START_TIMEOUT_S)
        except BaseException:
            transport.close()
            raise
        if line != b"ready\n":
            transport.close()
            raise RuntimeError(f"worker {self.index} (pid {self.pid}) exited before it was "
                               "ready")
        self._notes = asyncio.ensure_future(self._read_notes(notes, transport))
        if self.session is None:
            self.session = aiohttp.ClientSession(
                connector=aiohttp.UnixConnector(path=self.socket_path),
                timeout=aiohttp.ClientTimeout(total=30))
        self.ready.set()
        if self._sender is None:
            self._sender = asyncio.ensure_future(self._send_loop())
        log.info("worker %d running (pid %d)", self.index, self.pid)

    async def _read_notes(self, notes: asyncio.StreamReader,
                          transport: asyncio.BaseTransport) -> None:
        """The worker's later notes on the ready pipe: ``drained``, then end of file when it
        exits (which counts as drained too: it carries nothing any more)."""
        try:
            while line := await notes.readline():
                if line == b"drained\n":
                    self.drained.set()
        finally:
            self.drained.set()
            transport.close()

    async def wait_exit(self) -> int:
        assert self.proc is not None
        code = await self.proc.wait()
        self.ready.clear()
        self.on_state(self.index, None, Counter())
        return code

    def restart_delay(self) -> float:
        """No delay after a worker that ran a while; growing delays for one that keeps dying."""
        if time.monotonic() - self.started_at >= STABLE_S:
            self.restarts_in_a_row = 0
        else:
            self.restarts_in_a_row += 1
        return RESTART_BACKOFF_S[min(self.restarts_in_a_row, len(RESTART_BACKOFF_S) - 1)]

    def signal(self, sig: int) -> None:
        if self.proc is not None and self.proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(sig)

    async def close(self) -> None:
        if self._notes is not None:
            self._notes.cancel()
            self._notes = None
        if self._sender is not None:
            self._sender.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sender
            self._sender = None
        if self.proc is not None and self.proc.returncode is None:
            self.proc.kill()
            await self.proc.wait()
        if self.proc is not None and self.proc.stdin is not None:
            self.proc.stdin.close()
        if self.session is not None:
            await self.session.close()
            self.session = None

    # -- talking to it ---------------------------------------------------------------------

    def deliver(self, delivery: Delivery) -> None:
        """Queue webhook events (indexes into the signed body) for this worker."""
        self.queue.put_nowait(delivery)

    async def _send_loop(self) -> None:
        while True:
            delivery = await self.queue.get()
            for attempt in (1, 2):
                try:
                    await asyncio.wait_for(self.ready.wait(), DELIVERY_WAIT_S)
                    state = await self._post_events(delivery)
                except (TimeoutError, aiohttp.ClientError, OSError) as exc:
                    if attempt == 2:
                        log.error("worker %d: %d webhook event(s) not delivered: %s",
                                  self.index, len(delivery.events), exc or type(exc).__name__)
                    continue
                self.on_state(self.index, state, delivery.new_calls)
                break

    async def _post_events(self, delivery: Delivery) -> dict:
        assert self.session is not None
        message = {"body": base64.b64encode(delivery.body).decode("ascii"),
                   "events": delivery.events, "elsewhere": delivery.elsewhere}
        async with self.session.post(f"{self.url}/_worker/events", json=message) as resp:
            resp.raise_for_status()
            return await resp.json()

    async def request(self, method: str, path_qs: str, *, body: bytes | None,
                      headers: dict[str, str]) -> tuple[int, bytes, dict[str, str]]:
        """Forward one HTTP request (an authorised /v1 call); raises when the worker is down."""
        if not self.ready.is_set() or self.session is None:
            raise ConnectionError(f"worker {self.index} is restarting")
        async with self.session.request(method, f"{self.url}{path_qs}", data=body,
                                        headers=headers) as resp:
            keep = {k: v for k, v in resp.headers.items()
                    if k.lower() in ("content-type", "location")}
            return resp.status, await resp.read(), keep

    async def get_json(self, path: str, timeout: float = 3.0) -> tuple[int, dict]:
        if not self.ready.is_set() or self.session is None:
            raise ConnectionError(f"worker {self.index} is restarting")
        async with self.session.get(f"{self.url}{path}",
                                    timeout=aiohttp.ClientTimeout(total=timeout)) as resp:
            return resp.status, await resp.json()

