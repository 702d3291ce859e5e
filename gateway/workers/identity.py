"""Which worker owns a call: written into the call's Asterisk channel id, read back from it.

With ``serve --workers N`` every worker process has its own AMI connection and sees every
Asterisk event, and a restarted worker must end (and sweep) only what it left behind. So the
owner is part of the id itself. A gateway instance writes its id into every channel id it makes
(``wa-<instance>-<32 hex>``, gateway/instance.py); worker ``k`` of that instance runs as the
instance ``<instance>-w<k>`` (:func:`worker_instance`), so its calls' ids read
``wa-<instance>-w1-<32 hex>`` (also their Uniqueid in Asterisk, their record's ``channel_id``
and ``owner``, and the ``biz_opaque_callback_data`` Meta echoes in that call's webhooks). A
single-process gateway keeps ``wa-<instance>-<32 hex>``; config refuses an instance id that
itself ends in ``-w<digits>``, so the two never read alike.

The slot is process-wide on purpose: one worker process runs one gateway.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from gateway.instance import CHANNEL_PREFIX, channel_instance

_WORKER = re.compile(r"^(.+)-w(\d{1,4})$")
"""An instance id of a worker: ``<instance>-w<k>``."""


def worker_instance(instance_id: str, index: int) -> str:
    """The instance id worker ``index`` of the gateway ``instance_id`` runs as."""
    return f"{instance_id}-w{index}"


@dataclass(frozen=True)
class WorkerSlot:
    index: int
    """0 .. count-1."""
    count: int
    base: str = ""
    """The instance id of the gateway the workers make up (``gateway.instance_id``)."""


_slot: WorkerSlot | None = None


def set_worker(index: int, count: int, base: str = "") -> None:
    """This process is worker ``index`` of ``count`` of the gateway instance ``base`` (called
    once, before any call starts)."""
    global _slot
    if not 0 <= index < count:
        raise ValueError(f"worker index {index} not in 0..{count - 1}")
    _slot = WorkerSlot(index, count, base)


def worker() -> WorkerSlot | None:
    """This process's slot, or None in a single-process gateway."""
    return _slot


def owner_of(channel_id: str | None) -> int | None:
    """The worker index a channel id (or callback data) names; None when it names none."""
    instance = channel_instance(channel_id or "")
    match = _WORKER.match(instance or "")
    return int(match.group(2)) if match else None


def is_mine(channel_id: str | None, slot: WorkerSlot | None = None) -> bool:
    """Is this gateway id (channel, record) this worker's to end or sweep?

    Its own ids, of course. Worker 0 also takes the ids of this instance no running worker
    owns: ``wa-<instance>-<hex>`` from a single-process run, ``wa-<instance>-w5-...`` from a
    run with more workers than now, and ids from before instance ids, so nothing a previous
    run left behind is orphaned for good. Another instance's ids are never a worker's (the
    shared store's takeover ends those, gateway/instance.py). Without a slot: every ``wa-``
    id (a single-process gateway owns them all, and gateway/instance.py decides)."""
    slot = slot if slot is not None else _slot
    if not (channel_id or "").startswith(CHANNEL_PREFIX):
        return False
    if slot is None:
        return True
    instance = channel_instance(channel_id or "")
    if instance is None:
        return slot.index == 0
    if instance == worker_instance(slot.base, slot.index):
        return True
    if slot.index != 0:
        return False
    match = _WORKER.match(instance)
    if match is None:
        return instance == slot.base
    return match.group(1) == slot.base and int(match.group(2)) >= slot.count
