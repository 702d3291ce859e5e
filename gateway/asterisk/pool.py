"""The Asterisk servers a gateway places calls on (``asterisk.servers``), one AMI client each.

A new call asks :meth:`AsteriskPool.pick` for a connected server once, at admission (or when
dialed), and keeps that client for its whole life: its Originate, Getvar, PlayDTMF and Hangup
go to it, and its channel's events come from it, because a channel exists on one Asterisk
only. So when a server dies only the calls on it are lost; new calls go to the others.

``policy: failover`` takes the first connected server in list order (a primary with spares);
``round_robin`` lets the connected servers take turns (several equal servers). The pool only
chooses: what to do when a server goes (end its calls after ``asterisk.ami_down_grace``) is
the app's (gateway/app.py), the sweep of orphaned channels on each connect the call policy's
(gateway/calls/orphans.py).
"""

from __future__ import annotations

import asyncio
import itertools
import logging
from collections.abc import Sequence

from gateway.asterisk.ami import AmiClient, AmiError
from gateway.config_types import AMI_POLICIES, AmiSettings

log = logging.getLogger(__name__)


class AsteriskPool:
    """One :class:`AmiClient` per configured server, and the choice of one for a new call."""

    def __init__(self, clients: Sequence[AmiClient], policy: str = "failover"):
        if not clients:
            raise ValueError("an Asterisk pool needs at least one server")
        if policy not in AMI_POLICIES:
            raise ValueError(f"unknown policy {policy!r}")
        self.policy = policy
        self.clients: tuple[AmiClient, ...] = tuple(clients)
        """In ``asterisk.servers`` order; the first is the primary."""
        self._turn = itertools.count()

    @classmethod
    def from_settings(cls, servers: Sequence[AmiSettings],
                      policy: str = "failover") -> AsteriskPool:
        return cls([AmiClient(s) for s in servers], policy)

    @property
    def primary(self) -> AmiClient:
        return self.clients[0]

    @property
    def connected(self) -> bool:
        """Can a new call be placed at all (some server connected)?"""
        return any(c.connected for c in self.clients)

    @staticmethod
    def name(client: AmiClient) -> str:
        """The server's name in logs, /readyz and the ``server`` metric label."""
        return client.settings.label

    def pick(self) -> AmiClient | None:
        """The server a new call goes to, by the policy; None when none is connected."""
        up = [c for c in self.clients if c.connected]
        if not up:
            return None
        if self.policy == "round_robin":
            return up[next(self._turn) % len(up)]
        return up[0]

    def states(self) -> dict[str, bool]:
        """Each server's name and whether it is connected, in list order."""
        return {self.name(c): c.connected for c in self.clients}

    async def connect(self) -> None:
        """Connect every server; raises :class:`AmiError` only when none came up (each
        client keeps retrying in the background either way, until :meth:`close`)."""
        results = await asyncio.gather(*(c.connect() for c in self.clients),
                                       return_exceptions=True)
        failed = [(c, r) for c, r in zip(self.clients, results, strict=True)
                  if isinstance(r, BaseException)]
        for client, exc in failed:
            if not isinstance(exc, AmiError):
                raise exc
            if len(failed) < len(self.clients):
                log.warning("Asterisk %s not connected at start (%s); calls go to the others "
                            "until it is", self.name(client), exc)
        if len(failed) == len(self.clients):
            raise failed[0][1]

    async def close(self) -> None:
        await asyncio.gather(*(c.close() for c in self.clients))
