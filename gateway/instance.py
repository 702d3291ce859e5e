"""Which gateway instance this is, and which Asterisk channels belong to which instance.

Several gateways may serve one business number against one Asterisk (docs/scaling.md). Each has
an id (``gateway.instance_id``, or one derived from the host), written into every channel id it
creates (``wa-<instance>-<32 hex>``, the Originate ChannelId, hence the channel's Uniqueid and
``WA_CHANNEL_ID``) and into its call records (``owner``). The orphan sweep then hangs up only
channels this instance made and no longer owns, and those of instances that are gone (silent in
the shared store for ``gateway.gone_after_s``, default :data:`GONE_AFTER_S`): another live
gateway's calls are not its to end.
A gateway alone on its SQLite file sweeps every channel of ours, as before instance ids.

Channel ids from before instance ids (``wa-<32 hex>``) belong to no instance; any gateway
sweeps them, as before.
"""

from __future__ import annotations

import hashlib
import re
import socket
import uuid
from collections.abc import Callable
from pathlib import Path

INSTANCE_ID = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,30}[a-z0-9])?")
"""Lower-case letters, digits and inner hyphens, at most 32: safe in an AMI header, a
Prometheus label and a channel id (Asterisk allows 149 characters; ours stay under 70)."""
_CHANNEL_INSTANCE = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,30}[a-z0-9])?(?:-w\d{1,4})?")
"""An instance id as channel ids carry it: a worker of ``serve --workers N`` runs as
``<instance>-w<k>`` (gateway/workers/identity.py), a few characters past the 32 of config."""
CHANNEL_PREFIX = "wa-"
_HEX32 = re.compile(r"[0-9a-f]{32}")
MACHINE_ID_FILES = ("/etc/machine-id", "/var/lib/dbus/machine-id")


def derive_instance_id(discriminator: str = "", hostname: str | None = None) -> str:
    """``<hostname>-<6 hex>``: readable in ``core show channels``, stable across restarts,
    and distinct for two gateways on one host (``discriminator``: what differs between them,
    such as the HTTP listen address)."""
    host = (hostname if hostname is not None else socket.gethostname()).lower()
    host = re.sub(r"[^a-z0-9-]+", "-", host.split(".")[0]).strip("-")[:24].strip("-") or "gw"
    suffix = hashlib.sha256(f"{_machine_id()}|{host}|{discriminator}".encode()).hexdigest()[:6]
    return f"{host}-{suffix}"


def _machine_id() -> str:
    for name in MACHINE_ID_FILES:
        try:
            return Path(name).read_text().strip()
        except OSError:
            continue
    return ""


def new_channel_id(instance_id: str) -> str:
    """A fresh id for a channel this instance creates."""
    return f"{CHANNEL_PREFIX}{instance_id}-{uuid.uuid4().hex}"


def channel_instance(channel_id: str) -> str | None:
    """The instance that made ``channel_id``; None for an id of no instance (not ours at all,
    or from before instance ids)."""
    if not channel_id.startswith(CHANNEL_PREFIX):
        return None
    instance, _, unique = channel_id[len(CHANNEL_PREFIX):].rpartition("-")
    if not _HEX32.fullmatch(unique) or not _CHANNEL_INSTANCE.fullmatch(instance):
        return None
    return instance


HEARTBEAT_S = 10.0
"""How often a gateway tells the store it is alive: the default ``gateway.heartbeat_s``."""
GONE_AFTER_S = 60.0
"""Silence after which a gateway counts as gone (the default ``gateway.gone_after_s``): six
missed heartbeats, far past a slow database write, short enough that its callers are not left
in silence for long (hosts keep their clocks with NTP, as Meta's signed webhook timestamps need
anyway)."""


class Neighbours:
    """The gateways on this store, from their heartbeats (``gateway_instances``)."""

    def __init__(self, instance_id: str, gone_after_s: float = GONE_AFTER_S):
        self.instance_id = instance_id
        self.gone_after_s = gone_after_s
        self.shared = False
        """Set once the store is open: is it shared (PostgreSQL)? On its own SQLite file a
        gateway is alone by definition, so every channel of ours is its to clean up."""
        self.last_seen: dict[str, float] = {}
        self.seen_at = 0.0
        """When :attr:`last_seen` was read (time.time())."""

    def update(self, last_seen: dict[str, float], now: float) -> set[str]:
        """Take a fresh reading; returns the instances that went quiet since the last one."""
        before = self.gone()
        self.last_seen, self.seen_at = dict(last_seen), now
        return self.gone() - before

    def gone(self) -> set[str]:
        """Instances known to the store that have been silent too long (never this one)."""
        return {i for i, at in self.last_seen.items()
                if i != self.instance_id and at < self.seen_at - self.gone_after_s}

    def alive_others(self) -> set[str]:
        """The other instances that beat recently: where a draining gateway may pass a new
        call (gateway/calls/pass_on.py; one that is stopping too refuses it)."""
        return {i for i in self.last_seen if i != self.instance_id} - self.gone()

    def spares(self, instance: str) -> bool:
        """Must this gateway leave another instance's channels up? On a shared store, yes
        unless that instance is gone; one the store never heard of may have started since
        the last reading. Alone on SQLite, no: any channel of ours is an orphan of an
        earlier run (whose id may have differed)."""
        return self.shared and instance not in self.gone()


def sweep_spares(instance_id: str, owned: Callable[[str], bool],
                 spares_other: Callable[[str], bool] = lambda instance: True
                 ) -> Callable[[str], bool]:
    """What the AMI orphan sweep must leave up: channels a live call of ours owns, and the
    channels of other instances ``spares_other`` keeps (:meth:`Neighbours.spares`)."""

    def spared(channel_id: str) -> bool:
        maker = channel_instance(channel_id)
        if maker is not None and maker != instance_id:
            return spares_other(maker)
        return owned(channel_id)

    return spared
