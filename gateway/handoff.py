"""The seam that carries a call's later events to the gateway that runs it.

Behind a load balancer any gateway may get any webhook of any call (docs/scaling.md). A
``connect`` is claimed in the store by the gateway that received it, which then runs the call:
it holds the WebRTC leg, the Asterisk channel and the call object. A ``terminate`` or an
outbound call's status that lands on another gateway must reach that one, and so must an API
request for a live call (``GET``/``DELETE /v1/calls/{id}``): only the owner can act on it.

:class:`CallEventRouter` is the seam: deliver a :class:`HandOff` to the instance that owns a
call and bring back its answer. Two transports fit behind it: PostgreSQL LISTEN/NOTIFY between
gateways on one store (gateway/store/notify.py; why that and not HTTP: its docstring), and
the pipes between worker processes of one host. What the call manager and the API do with it
(who owns a call, what is sent, what arrives) is gateway/calls/routing.py. On SQLite (one
gateway, one box) there is no router and nothing is handed off.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Protocol

from gateway.whatsapp.events import CallEvent, MetaError, StatusEvent

__all__ = ["CallEventRouter", "HandOff", "HandOffHandler", "event_from_dict", "event_to_dict"]


@dataclass(frozen=True)
class HandOff:
    """One message for the gateway that owns a call."""

    kind: str
    """``event`` (a webhook event), ``get_call`` or ``delete_call`` (an API request)."""
    body: dict[str, Any]
    sender: str = ""
    """The instance it comes from (set by the transport)."""


HandOffHandler = Callable[[HandOff], Awaitable[dict[str, Any] | None]]
"""What the owner does with a hand-off; its answer goes back to the sender."""


class CallEventRouter(Protocol):
    """Carries hand-offs between the gateway instances (or worker processes) serving one
    business number."""

    async def start(self, handler: HandOffHandler) -> None:
        """Receive the hand-offs addressed to this instance from now on."""

    async def send(self, owner: str, message: HandOff, timeout_s: float) -> dict[str, Any] | None:
        """Deliver ``message`` to ``owner``'s handler; its answer, or None when none came
        within ``timeout_s`` (lost, or the owner is stuck or gone)."""

    async def close(self) -> None: ...


def event_to_dict(ev: CallEvent | StatusEvent) -> dict[str, Any]:
    """A call or status event as plain JSON values (the transports carry JSON)."""
    return {"type": "call" if isinstance(ev, CallEvent) else "status",
            **dataclasses.asdict(ev)}


def event_from_dict(data: dict[str, Any]) -> CallEvent | StatusEvent:
    """:func:`event_to_dict` read back; KeyError/TypeError on a body that is not one."""
    fields = dict(data)
    kind = fields.pop("type")
    fields["errors"] = tuple(MetaError(**e) for e in fields.get("errors", ()))
    if kind == "call":
        return CallEvent(**fields)
    if kind == "status":
        return StatusEvent(**fields)
    raise KeyError(f"unknown event type {kind!r}")
