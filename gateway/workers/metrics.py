"""One ``/metrics`` for N workers: prometheus_client's multiprocess mode.

Each worker writes its metric values into files in ``PROMETHEUS_MULTIPROC_DIR`` (set in its
environment before prometheus_client is imported); the supervisor reads them all with
:class:`~prometheus_client.multiprocess.MultiProcessCollector`, which sums counters and
histograms over the workers, and combines each gauge as its ``multiprocess_mode`` says
(gateway/metrics.py). The files of a dead worker stay: its counters keep counting in the sum, so
a worker restart is never a counter reset to Prometheus; its "live" gauges are dropped
(:func:`worker_died`).

Two families come from the supervisor itself, because only it has them: webhook requests (it
serves ``/webhook``; the workers' copies stay 0 and are left out), and ``process_*`` (of the
supervisor process, as a single-process gateway reports its own).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterable

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.metrics_core import Metric
from prometheus_client.multiprocess import MultiProcessCollector, mark_process_dead
from prometheus_client.registry import Collector

ENV = "PROMETHEUS_MULTIPROC_DIR"
SUPERVISOR_FAMILIES = ("whatsapp_gateway_webhook_requests",)
"""Served from the supervisor's own registry, not from the workers' files."""


def new_metrics_dir() -> str:
    """A fresh, private directory for one supervisor's run (stale files would be summed in)."""
    return tempfile.mkdtemp(prefix="wa-gateway-metrics-")


def remove_metrics_dir(path: str) -> None:
    shutil.rmtree(path, ignore_errors=True)


def worker_died(path: str, pid: int) -> None:
    """Drop a dead worker's live gauges (active calls, free ports) from the sum."""
    mark_process_dead(pid, path)


class _Combined(Collector):
    def __init__(self, path: str, own: CollectorRegistry):
        self.workers = MultiProcessCollector(None, path=path)
        self.own = own

    def collect(self) -> Iterable[Metric]:
        for family in self.workers.collect():
            if family.name not in SUPERVISOR_FAMILIES:
                yield family
        for family in self.own.collect():
            if family.name in SUPERVISOR_FAMILIES or family.name.startswith("process_"):
                yield family


class AggregatedMetrics:
    """The supervisor's ``/metrics``: every worker's metrics plus the supervisor's own."""

    def __init__(self, path: str, own: CollectorRegistry):
        if not os.path.isdir(path):
            raise ValueError(f"{path}: no such metrics directory")
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(_Combined(path, own))

    def exposition(self) -> bytes:
        return generate_latest(self.registry)
