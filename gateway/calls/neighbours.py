"""This gateway among the others on a shared store: its heartbeat, and what it does when
another gateway goes quiet.

Several gateways on one PostgreSQL (docs/scaling.md) each write a heartbeat every
:data:`~gateway.instance.HEARTBEAT_S`; one silent for
:data:`~gateway.instance.GONE_AFTER_S` is gone (:class:`~gateway.instance.Neighbours`). Its
callers are then connected to nothing and nobody else would end their calls, so a live gateway
sweeps the gone one's Asterisk channels and takes over its active records (the store gives each
record to exactly one gateway), ending each call at Meta through the ending table
(gateway/calls/orphans.py). Alone on SQLite a gateway has no neighbours: the beat is written
and nothing is ever taken over.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING

from gateway.asterisk.ami import AmiError
from gateway.instance import HEARTBEAT_S, Neighbours
from gateway.store import StoreClosed

if TYPE_CHECKING:
    from gateway.calls.manager import CallManager
    from gateway.calls.orphans import OrphanSweep
    from gateway.store import CallStore

log = logging.getLogger(__name__)


class NeighbourWatch:
    """Beats for this gateway and takes over the calls of gateways gone quiet."""

    def __init__(self, neighbours: Neighbours, store: CallStore, calls: CallManager,
                 sweeps: Sequence[OrphanSweep], heartbeat_s: float = HEARTBEAT_S):
        self.neighbours = neighbours
        self.store = store
        self.calls = calls
        self.sweeps = sweeps
        """One per Asterisk server (asterisk.servers): a gone gateway's channels may be on
        any of them."""
        self.heartbeat_s = heartbeat_s
        self._task: asyncio.Task | None = None

    def start(self) -> None:
        """Beat every ``heartbeat_s`` until :meth:`stop`."""
        self._task = asyncio.ensure_future(self._keep_beating())

    def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            self._task = None

    async def beat(self, *, take_over: bool = True) -> None:
        """Tell the store this gateway is alive and read who else is; when a gateway has
        gone quiet (``take_over``), sweep its channels and end its calls: its callers are
        left where nobody else would end them."""
        try:
            last_seen = await self.store.heartbeat()
        except (*self.store.backend.storage_errors, StoreClosed) as exc:
            log.warning("heartbeat not written (%s); other gateways may take this one for gone "
                        "after %g s", exc, self.neighbours.gone_after_s)
            return
        newly_gone = self.neighbours.update(last_seen, time.time())
        if not newly_gone or not self.neighbours.shared or not take_over:
            return
        log.warning("gateway(s) %s silent for over %g s: taking over their calls",
                    ", ".join(sorted(newly_gone)), self.neighbours.gone_after_s)
        for sweep in self.sweeps:
            if sweep.ami.connected:
                self.calls.spawn(self._sweep(sweep))
        self.calls.spawn(self.adopt(newly_gone))

    async def adopt(self, gone: set[str]) -> None:
        """The calls gone gateways left active: Meta still has them up, their callers hear
        nothing. This gateway (one only) ends them at Meta and closes their records."""
        names = ", ".join(sorted(gone))
        try:
            records = await self.store.adopt(gone)
        except (*self.store.backend.storage_errors, StoreClosed) as exc:
            log.warning("cannot take over the calls of %s: %s", names, exc)
            return
        if records:
            log.warning("%d call(s) left by gone gateway(s) %s: ending them", len(records),
                        names)
            await self.calls.end_orphaned_records(
                records, why=f"gateway {names} went silent during the call",
                when=f"on take-over by {self.neighbours.instance_id}")

    async def _sweep(self, sweep: OrphanSweep) -> None:
        try:
            await sweep.sweep()
        except AmiError as exc:
            log.warning("orphan sweep failed: %s", exc)

    async def _keep_beating(self) -> None:
        while True:
            await asyncio.sleep(self.heartbeat_s)
            await self.beat()
