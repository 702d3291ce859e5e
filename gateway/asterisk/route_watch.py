"""The routes the config sends calls to, checked against the live dialplan of every connected
Asterisk: a typo (``from-whatsap``) would otherwise only show as callers being hung up at once.

Checked on every AMI connect (the admin may have changed the dialplan meanwhile), after an AMI
``Reload`` of pbx_config, after a config reload, and every :data:`RECHECK_S` while something is
missing (``dialplan reload`` sends no AMI event, and /readyz should recover once it is fixed).
Problems go to the log once each, to ``/readyz`` (``degraded``) and to the
``dialplan_problems`` metric.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from gateway.asterisk.ami_errors import AmiError
from gateway.asterisk.dialplan import configured_routes

if TYPE_CHECKING:
    from gateway.asterisk.pool import AsteriskPool
    from gateway.config import Config
    from gateway.metrics import GatewayMetrics

log = logging.getLogger("gateway.app")

RECHECK_S = 60.0
"""How often configured routes missing from the dialplan are looked for again."""


class RouteWatch:
    """Keeps :attr:`problems`: every configured route the dialplan lacks, per server."""

    def __init__(self, pool: AsteriskPool, config: Callable[[], Config],
                 metrics: GatewayMetrics, spawn: Callable[[Awaitable[Any]], Any]):
        self.pool = pool
        self.config = config
        self.metrics = metrics
        self.spawn = spawn
        self.recheck_s = RECHECK_S
        self.problems: list[str] = []
        self._watch: asyncio.Task | None = None

    async def check(self) -> None:
        problems = []
        several = len(self.pool.clients) > 1
        for ami in [c for c in self.pool.clients if c.connected]:
            on = f" on {self.pool.name(ami)}" if several else ""
            for key, context, exten in configured_routes(self.config()):
                try:
                    found = await ami.dialplan_has(context, exten)
                except AmiError as exc:
                    log.warning("cannot check the dialplan for %s%s: %s", key, on, exc)
                    continue
                if not found:
                    problems.append(f"{key}: extension {exten!r} in context {context!r} does "
                                    f"not exist in Asterisk's dialplan{on}")
        for problem in problems:
            if problem not in self.problems:  # rechecks do not repeat the warning
                log.warning("%s: calls to this number will be hung up at once", problem)
        for fixed in [p for p in self.problems if p not in problems]:
            log.info("dialplan fixed: no longer %s", fixed.split(": ", 1)[0] + " missing")
        self.problems = problems
        self.metrics.dialplan_problems.set(len(problems))

    def on_reload(self, ev: dict[str, str]) -> None:
        """``module reload pbx_config`` / ``core reload``: the dialplan may have changed."""
        if ev.get("Module", "pbx_config").startswith("pbx_config"):
            self.spawn(self.check())

    def start(self) -> None:
        self._watch = asyncio.ensure_future(self._recheck())

    def stop(self) -> None:
        if self._watch is not None:
            self._watch.cancel()
            self._watch = None

    async def _recheck(self) -> None:
        while True:
            await asyncio.sleep(self.recheck_s)
            if self.problems and self.pool.connected:
                await self.check()
