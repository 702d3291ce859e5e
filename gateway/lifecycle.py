"""How a serving process lives: started, drained on the first stop signal, ended at once on a
second, reloaded on SIGHUP, with its pid in the pid file meanwhile (``whatsapp-gateway
reload`` and systemd's ``ExecReload`` signal that pid).

One loop for both shapes of ``serve``: a single gateway (gateway/app.py) and the supervisor
of ``serve --workers N`` (gateway/workers/supervisor.py), so a stop or a reload means the
same thing whichever runs.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

log = logging.getLogger("gateway")


class Service(Protocol):
    async def start(self) -> None: ...

    async def drain(self) -> None: ...

    async def stop(self) -> None: ...


async def run_until_stopped(service: Service, pid_file: Path, *,
                            on_reload: Callable[[], None],
                            on_second_stop: Callable[[], None] = lambda: None,
                            draining: str = "") -> None:
    """Run ``service`` until SIGTERM/SIGINT, which drain it (a second one stops it at once,
    after ``on_second_stop``); SIGHUP calls ``on_reload``. ``draining``: a line logged when
    the drain starts."""
    loop = asyncio.get_running_loop()
    drain, now = asyncio.Event(), asyncio.Event()

    def on_stop_signal() -> None:
        if drain.is_set():
            log.warning("second stop signal: ending every call now")
            on_second_stop()
            now.set()
        drain.set()

    for sig, handler in ((signal.SIGINT, on_stop_signal), (signal.SIGTERM, on_stop_signal),
                         (signal.SIGHUP, on_reload)):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, handler)
    try:
        await service.start()
        write_pid(pid_file)
        await drain.wait()
        if draining:
            log.info("%s", draining)
        draining_task = asyncio.ensure_future(service.drain())
        stop_now = asyncio.ensure_future(now.wait())
        await asyncio.wait({draining_task, stop_now}, return_when=asyncio.FIRST_COMPLETED)
        for task in (draining_task, stop_now):
            task.cancel()
    finally:
        log.info("stopping")
        await service.stop()
        remove_pid(pid_file)


def write_pid(pid_file: Path) -> None:
    """A few bytes on local disk, once at start: not worth a thread."""
    try:
        pid_file.write_text(f"{os.getpid()}\n")
    except OSError as exc:
        log.warning("cannot write the pid file %s (reload needs it): %s", pid_file, exc)


def remove_pid(pid_file: Path) -> None:
    """Only our own: a newer process may already have written its pid there."""
    with contextlib.suppress(OSError):
        if pid_file.read_text().strip() == str(os.getpid()):
            pid_file.unlink()
