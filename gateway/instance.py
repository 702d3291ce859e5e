"""Which gateway instance this is, and which Asterisk channels belong to which instance.

Several gateways may serve one business number against one Asterisk (docs/scaling.md). Each has
an id (``gateway.instance_id``, or one derived from the host), written into every channel id it
creates (``wa-<instance>-<32 hex>``, the Originate ChannelId, hence the channel's Uniqueid and
``WA_CHANNEL_ID``) and into its call records (``owner``). The orphan sweep then hangs up only
channels this instance made and no longer owns: another live gateway's calls are not its to end.

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
    if not _HEX32.fullmatch(unique) or not INSTANCE_ID.fullmatch(instance):
        return None
    return instance


def sweep_spares(instance_id: str, owned: Callable[[str], bool]) -> Callable[[str], bool]:
    """What the AMI orphan sweep must leave up: channels a live call of ours owns, and every
    channel another instance made (that gateway may be running the call right now)."""

    def spared(channel_id: str) -> bool:
        maker = channel_instance(channel_id)
        return (maker is not None and maker != instance_id) or owned(channel_id)

    return spared
