"""One SQLite connection, used from one dedicated thread, for coroutines.

sqlite3 blocks, and the event loop must not: every statement runs on this thread, in order, so
writes stay ordered and a slow disk delays only the database, never the calls. The call store
and the permission ledger each own one (on the same WAL-mode file).
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

from gateway.errors import StorageError

T = TypeVar("T")


class DatabaseClosed(StorageError, RuntimeError):
    """The database was closed (or never opened)."""


class SqliteThread:
    def __init__(self, path: str | Path, name: str,
                 closed_error: type[DatabaseClosed] = DatabaseClosed):
        self.path = str(path)
        self.name = name
        self._closed_error = closed_error
        self._executor: ThreadPoolExecutor | None = None
        self._db: sqlite3.Connection | None = None

    async def open(self, setup: Callable[[sqlite3.Connection], None]) -> None:
        """Connect (creating the file's folder), WAL mode, then ``setup(db)`` (schema)."""
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=self.name)
        try:
            await self.run(self._connect, setup)
        except BaseException:
            self._executor.shutdown(wait=False)
            self._executor = None
            raise

    def _connect(self, setup: Callable[[sqlite3.Connection], None]) -> None:
        if self.path != ":memory:":
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        db = sqlite3.connect(self.path, timeout=5.0, isolation_level=None)
        db.row_factory = sqlite3.Row
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=NORMAL")  # WAL + NORMAL: durable across process crash
        try:
            setup(db)
        except BaseException:
            db.close()
            raise
        self._db = db

    async def close(self) -> None:
        """Wait for queued work, then close the connection. Safe to call twice."""
        executor, self._executor = self._executor, None
        if executor is None:
            return
        await asyncio.get_running_loop().run_in_executor(executor, self._disconnect)
        executor.shutdown(wait=True)

    def _disconnect(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None

    @property
    def conn(self) -> sqlite3.Connection:
        """The connection: only for functions running on this thread."""
        if self._db is None:
            raise self._closed_error(f"{self.name} database {self.path} is closed")
        return self._db

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        """``fn(*args)`` on the database thread."""
        if self._executor is None:
            raise self._closed_error(f"{self.name} database {self.path} is closed")
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    def submit(self, fn: Callable[..., T], *args: Any) -> Future[T]:
        """Queue ``fn(*args)`` without waiting (in order with everything else)."""
        if self._executor is None:
            raise self._closed_error(f"{self.name} database {self.path} is closed")
        return self._executor.submit(fn, *args)
