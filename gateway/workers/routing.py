"""Which process gets a call's events: the seam between the public HTTP side and the workers.

One webhook endpoint, one API, N media processes: each call is owned by one worker for its
whole life, so every later event of that call must reach that worker, and nothing else may
start a second copy of it. The rules, in the order :meth:`Router.targets` applies them:

- An event naming a gateway id (``biz_opaque_callback_data``: the channel id the gateway gave
  Meta on accept / connect, gateway/workers/identity.py) goes to the worker that id names.
- An event of a call the router has seen before goes to the worker it went to then.
- A user's ``connect`` of a new call goes to the least loaded running worker, which owns it.
- Permission replies and user-id changes go to the user's worker (:meth:`Router.for_user`):
  every permission decision of one user is taken in one process, where the ledger's pair lock
  serialises check-then-act (Meta's 1 request per 24 h, gateway/calls/permissions.py); the
  API's outbound calls and permission requests, and the dialplan's WhatsAppDial, use the same
  worker for the same reason.
- Any other call event of an unknown call (a ``terminate`` that overtook its ``connect``, or
  arrived after the router forgot the call) goes to every worker: the owner ends its call,
  the others tombstone the id, which is what one gateway would have done.
- Everything else (account notices, recordings of ended calls) goes to worker 0.

Issue 10 (several gateway instances on PostgreSQL) reuses this: an instance is an owner whose
id is in the channel id (gateway/workers/identity.py ``owner_id``), :class:`Router` decides, and
a :class:`CallOwner` delivers -- a Unix socket to a worker here, another host there. Pure logic:
no I/O, tested in tests/unit/test_workers_routing.py.
"""

from __future__ import annotations

import zlib
from collections import Counter, OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

from gateway.whatsapp.events import (
    CallEvent,
    CallMediaAvailable,
    Event,
    PermissionReply,
    StatusEvent,
    UserIdChanged,
    Voicemail,
)
from gateway.whatsapp.identity import canonical_number, is_bsuid
from gateway.workers.identity import owner_of

REMEMBERED_CALLS = 20000
"""Calls whose owner is remembered. A forgotten call's events go to every worker, which is
still correct, so this only bounds memory (a day of a busy gateway)."""


def pair_key(user: str) -> str:
    """A WhatsApp user as the ledger keys them: the canonical number, or the BSUID."""
    user = (user or "").strip().lstrip("+")
    if is_bsuid(user):
        return user
    return canonical_number(user) or user


def user_worker(user: str, count: int) -> int:
    """The worker every permission decision about ``user`` is taken in. crc32, not ``hash``:
    the supervisor and each worker must agree, and ``hash`` of a str differs per process."""
    return zlib.crc32(pair_key(user).encode("utf-8")) % count


class Router:
    """Routes events and API requests to worker indexes; the supervisor delivers them."""

    def __init__(self, count: int, *, remember: int = REMEMBERED_CALLS):
        if count < 1:
            raise ValueError("at least one worker")
        self.count = count
        self.remember = remember
        self.owners: OrderedDict[str, int] = OrderedDict()
        """Meta's call id -> the worker that owns the call."""
        self.load: list[int | None] = [None] * count
        """Live calls per worker as it last reported them; None: not running (a dead worker
        takes no new call)."""
        self.numbers: list[Counter[str]] = [Counter() for _ in range(count)]
        """Live calls per worker and business number, as it last reported them."""
        self.pending: list[Counter[str]] = [Counter() for _ in range(count)]
        """New calls (per business number) routed to each worker that its reports do not
        count yet: without them two connects a few ms apart would both go to one worker, or
        both pass a number's ``max_calls``."""

    # -- workers ---------------------------------------------------------------------------

    def worker_up(self, index: int, active: int = 0) -> None:
        self.load[index] = active
        self.numbers[index] = Counter()
        self.pending[index] = Counter()

    def worker_down(self, index: int) -> None:
        self.load[index] = None
        self.numbers[index] = Counter()

    def report(self, index: int, active: int, by_number: dict[str, int] | None = None,
               delivered: Counter[str] | None = None) -> None:
        """A worker carries ``active`` calls now (``by_number``: inbound, per business
        number), counting the ``delivered`` new calls of the delivery it answered."""
        if delivered:
            self.pending[index] -= delivered  # Counter subtraction drops what reaches 0
        if self.load[index] is not None:
            self.load[index] = active
            self.numbers[index] = Counter(by_number or {})

    def least_loaded(self) -> int | None:
        """The running worker with the fewest calls (the lowest index on a tie)."""
        running = [(load + self.pending[i].total(), i) for i, load in enumerate(self.load)
                   if load is not None]
        return min(running)[1] if running else None

    def elsewhere(self, index: int) -> dict[str, int]:
        """Calls per business number that the other workers carry or are being handed."""
        total: Counter[str] = Counter()
        for other in range(self.count):
            if other != index:
                total += self.numbers[other] + self.pending[other]
        return dict(total)

    def for_user(self, user: str) -> int:
        return user_worker(user, self.count)

    # -- calls -----------------------------------------------------------------------------

    def own(self, call_id: str, index: int) -> None:
        self.owners[call_id] = index
        self.owners.move_to_end(call_id)
        while len(self.owners) > self.remember:
            self.owners.popitem(last=False)

    def owner_of_call(self, call_id: str) -> int | None:
        """Who owns a call named by Meta's id or by the gateway's own id (``wa-w1-...``)."""
        owner = owner_of(call_id)
        if owner is not None and owner < self.count:
            return owner
        return self.owners.get(call_id)

    def targets(self, event: Event) -> tuple[int, ...]:
        """The workers ``event`` is delivered to (see the module doc for the rules)."""
        every = tuple(range(self.count))
        if isinstance(event, CallEvent | StatusEvent):
            owner = owner_of(event.biz_opaque_callback_data)
            if owner is None or owner >= self.count:
                owner = self.owners.get(event.call_id)
            if owner is not None:
                self.own(event.call_id, owner)
                return (owner,)
            if isinstance(event, CallEvent) and event.event == "connect" \
                    and event.direction == "USER_INITIATED":
                chosen = self.least_loaded()
                if chosen is None:
                    chosen = 0  # none running: it waits for worker 0 to come back
                self.pending[chosen][event.phone_number_id] += 1
                self.own(event.call_id, chosen)
                return (chosen,)
            return every
        if isinstance(event, PermissionReply):
            return (self.for_user(event.user or event.user_id),)
        if isinstance(event, UserIdChanged):
            return (self.for_user(event.wa_id or event.old_user_id),)
        if isinstance(event, CallMediaAvailable | Voicemail):
            owner = self.owners.get(event.call_id)
            return (owner if owner is not None else 0,)
        return (0,)

    def split(self, events: Sequence[Event]) -> dict[int, Batch]:
        """worker -> the events (indexes in ``events``, in order) it gets."""
        out: dict[int, Batch] = {}
        for i, event in enumerate(events):
            before = [p.copy() for p in self.pending]
            for worker in self.targets(event):
                batch = out.setdefault(worker, Batch())
                batch.events.append(i)
                batch.new_calls.update(self.pending[worker] - before[worker])
        for worker, batch in out.items():
            batch.elsewhere = self.elsewhere(worker)
        return out


@dataclass
class Delivery:
    """A signed webhook body and which of its events one owner gets."""

    body: bytes
    events: list[int]
    new_calls: Counter[str] = field(default_factory=Counter)
    elsewhere: dict[str, int] = field(default_factory=dict)


class CallOwner(Protocol):
    """Where the events of the calls one owner carries are sent: a worker process over its
    Unix socket here (gateway/workers/process.py); another gateway instance in issue 10."""

    def deliver(self, delivery: Delivery) -> None:
        """Queue the delivery; deliveries to one owner arrive in the order given."""


@dataclass
class Batch:
    """What one delivery carries to one worker."""

    events: list[int] = field(default_factory=list)
    """Indexes into the webhook's parsed events."""
    new_calls: Counter[str] = field(default_factory=Counter)
    """Per business number, how many of them start a call there (:attr:`Router.pending`
    until the worker answers)."""
    elsewhere: dict[str, int] = field(default_factory=dict)
    """Calls per number the other workers carry: the worker adds them to its own before it
    compares with ``max_calls``."""
