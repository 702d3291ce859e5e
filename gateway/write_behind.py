"""Writes that a full or failing disk must never turn into a dropped call or a lost record.

The call store and the permission ledger write to SQLite (or PostgreSQL). When the disk is
full (or the file is briefly unwritable, or the server is restarting) a write raises; raised
inside a call, that used to end the call, and the record was gone. :class:`WriteBehind` keeps
every write that failed for a storage reason in memory, in order, and retries it with a
bounded backoff until the disk is back; at shutdown it tries once more and logs what it still
could not write, so nothing disappears silently.

One outage is logged once (and once when it is over), not once per write; every failed
attempt is counted (``on_error``) and the number of writes waiting is reported
(``on_pending``), for the ``store_errors_total`` / ``store_pending_records`` metrics.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import sqlite3
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Hashable

log = logging.getLogger(__name__)

Write = Callable[[], Awaitable[object]]

STORAGE_ERRORS: tuple[type[BaseException], ...] = (sqlite3.OperationalError, OSError)
"""Failures that say "the disk / file cannot take this now" (SQLITE_FULL, SQLITE_IOERR,
SQLITE_BUSY, ENOSPC): worth keeping the write and trying again. Anything else is a bug
in the write itself; it is logged and dropped, since retrying it would fail the same way."""

RETRY_FIRST_S = 0.5
RETRY_MAX_S = 10.0


class WriteBehind:
    """An ordered queue of writes that failed, retried until they succeed.

    ``write(key, op)`` tries ``op()`` at once when nothing is waiting, so a reader right after
    it sees the write in the normal case; when writes are already waiting it queues behind them
    (order kept). A queued write with the same ``key`` as a newer one is replaced by it (the
    call store's upsert: only the latest row of a call matters). Never raises a storage error.
    """

    def __init__(self, what: str, *, on_error: Callable[[], None] | None = None,
                 on_pending: Callable[[int], None] | None = None,
                 retry_first_s: float = RETRY_FIRST_S, retry_max_s: float = RETRY_MAX_S,
                 storage_errors: tuple[type[BaseException], ...] = STORAGE_ERRORS):
        self.what = what
        self.storage_errors = storage_errors
        """What is kept and retried; PostgreSQL adds a lost or refused connection."""
        self._on_error = on_error or (lambda: None)
        self._on_pending = on_pending or (lambda n: None)
        self.retry_first_s = retry_first_s
        self.retry_max_s = retry_max_s
        self._queue: OrderedDict[Hashable, Write] = OrderedDict()
        self._worker: asyncio.Task | None = None
        self._failing = False
        self._unique = itertools.count()
        self.errors = 0
        """Failed attempts so far (each retry of a waiting write counts)."""
        self.drained = asyncio.Event()
        """Set while no write is waiting (cleared as soon as one is kept)."""
        self.drained.set()
        self.waiting = asyncio.Event()
        """The opposite of :attr:`drained`: set while at least one write is kept."""

    @property
    def pending(self) -> int:
        return len(self._queue)

    def set_hooks(self, *, on_error: Callable[[], None] | None = None,
                  on_pending: Callable[[int], None] | None = None) -> None:
        """Where failures and the backlog are reported (the gateway's metrics)."""
        if on_error is not None:
            self._on_error = on_error
        if on_pending is not None:
            self._on_pending = on_pending
            on_pending(self.pending)

    def key(self) -> Hashable:
        """A key no other write has (for writes that must each happen, such as ledger rows)."""
        return ("unique", next(self._unique))

    async def write(self, key: Hashable, op: Write) -> None:
        """Write now, or keep it for later if the disk refuses it (or others are waiting)."""
        if self._queue:
            self._enqueue(key, op)
            return
        try:
            await op()
        except self.storage_errors as exc:
            self._failed(exc)
            self._enqueue(key, op)
        else:
            self._recovered()

    def write_soon(self, key: Hashable, op: Write) -> None:
        """Queue a write without awaiting it (synchronous callers such as call observers)."""
        self._enqueue(key, op)

    def _enqueue(self, key: Hashable, op: Write) -> None:
        self._queue[key] = op  # a replaced key keeps its place: its latest row is written
        self.drained.clear()
        self.waiting.set()
        self._on_pending(self.pending)
        if self._worker is None or self._worker.done():
            self._worker = asyncio.ensure_future(self._drain())

    def _failed(self, exc: BaseException) -> None:
        self.errors += 1
        self._on_error()
        if not self._failing:
            self._failing = True
            log.error("%s: cannot write (%s); keeping the records in memory and retrying "
                      "until it works (calls are not affected)", self.what, exc)

    def _recovered(self) -> None:
        if self._failing:
            self._failing = False
            log.warning("%s: writable again; %d waiting write(s) are being written",
                        self.what, self.pending)

    async def _drain(self) -> None:
        delay = self.retry_first_s
        while self._queue:
            key, op = next(iter(self._queue.items()))
            try:
                await op()
            except self.storage_errors as exc:
                self._failed(exc)
                await asyncio.sleep(delay)
                delay = min(delay * 2, self.retry_max_s)
                continue
            except Exception:
                log.exception("%s: a write failed and is dropped (not a storage fault)",
                              self.what)
            else:
                self._recovered()
                delay = self.retry_first_s
            if self._queue.get(key) is op:  # not replaced by a newer write meanwhile
                del self._queue[key]
            self._on_pending(self.pending)
        self.waiting.clear()
        self.drained.set()

    async def close(self, timeout_s: float = 5.0) -> int:
        """Shutdown: give the waiting writes one last chance (the disk may be back), then log
        each one still not written; returns how many were left unwritten."""
        worker, self._worker = self._worker, None
        if worker is not None:
            worker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await worker
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        left = 0
        for key, op in list(self._queue.items()):
            try:
                await asyncio.wait_for(op(), max(0.1, deadline - loop.time()))
            except Exception as exc:  # noqa: BLE001 - reported below, nothing else to do
                left += 1
                describe = getattr(op, "describe", None)
                log.error("%s: not written at shutdown (%s): %s", self.what, exc,
                          describe() if describe else repr(key))
            del self._queue[key]
        self._on_pending(self.pending)
        self.waiting.clear()
        self.drained.set()
        return left
