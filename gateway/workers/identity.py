"""Which worker owns a call: written into the call's Asterisk channel id, read back from it.

With ``serve --workers N`` every worker process has its own AMI connection and sees every
Asterisk event, and a restarted worker must end (and sweep) only what it left behind. So the
owner is part of the id itself: a call of worker 1 has the channel id ``wa-w1-<hex>`` (also its
Uniqueid in Asterisk, its record's ``channel_id``, and the ``biz_opaque_callback_data`` Meta
echoes in that call's webhooks). A single-process gateway keeps today's ``wa-<hex>``.

:func:`owner_id` is the one seam: the PostgreSQL branch's ``instance_id`` (several gateway
instances) will name the owner the same way, so channel ids, records and webhook routing keep
one format. The slot is process-wide on purpose: one worker process runs one gateway.
"""

from __future__ import annotations

import re
import uuid
from dataclasses import dataclass

CHANNEL_PREFIX = "wa-"
"""Every channel the gateway originates starts with this (asterisk.ami orphan sweep)."""
_OWNED = re.compile(r"^wa-w(\d{1,4})-")


@dataclass(frozen=True)
class WorkerSlot:
    index: int
    """0 .. count-1."""
    count: int


_slot: WorkerSlot | None = None


def set_worker(index: int, count: int) -> None:
    """This process is worker ``index`` of ``count`` (called once, before any call starts)."""
    global _slot
    if not 0 <= index < count:
        raise ValueError(f"worker index {index} not in 0..{count - 1}")
    _slot = WorkerSlot(index, count)


def worker() -> WorkerSlot | None:
    """This process's slot, or None in a single-process gateway."""
    return _slot


def owner_id() -> str:
    """``w<index>`` in a worker process, ``""`` in a single-process gateway."""
    return f"w{_slot.index}" if _slot is not None else ""


def new_channel_id() -> str:
    """A fresh channel id that names its owner: ``wa-w1-<hex>``, or ``wa-<hex>``."""
    owner = owner_id()
    return f"{CHANNEL_PREFIX}{owner + '-' if owner else ''}{uuid.uuid4().hex}"


def owner_of(channel_id: str | None) -> int | None:
    """The worker index a channel id (or callback data) names; None when it names none."""
    match = _OWNED.match(channel_id or "")
    return int(match.group(1)) if match else None


def is_mine(channel_id: str | None, slot: WorkerSlot | None = None) -> bool:
    """Is this gateway id (channel, record) this worker's to end or sweep?

    Its own ids, of course. Worker 0 also takes the ids no running worker owns: ``wa-<hex>``
    from a single-process run, and ``wa-w5-...`` from a run with more workers than now, so
    nothing a previous run left behind is orphaned for good. Without a slot: every ``wa-`` id
    (a single-process gateway owns them all)."""
    slot = slot if slot is not None else _slot
    if not (channel_id or "").startswith(CHANNEL_PREFIX):
        return False
    if slot is None:
        return True
    owner = owner_of(channel_id)
    if owner == slot.index:
        return True
    return slot.index == 0 and (owner is None or owner >= slot.count)
