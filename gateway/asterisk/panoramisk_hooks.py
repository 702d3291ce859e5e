"""Where the gateway reaches into panoramisk: pinned exactly, like aiortc.

panoramisk gives the AMI wire format (actions, ActionID matching, event parsing), but its
connection handling does not fit a gateway (gateway/asterisk/ami_connection.py says why), so
these classes override its internals. Read in panoramisk 1.4's manager.py, ami_protocol.py
and actions.py; an upgrade may rename or rework any of them, so pyproject.toml pins
``panoramisk==`` :data:`PANORAMISK_VERSION` and tests/unit/test_panoramisk_hooks.py fails,
naming what to re-check, when the installed version or any internal listed here changes:

- ``Manager.__init__``'s config keys (``protocol_factory``, ``ping_delay``, ``ping_interval``,
  ``log``) and attributes ``pinger``, ``_connected``, ``protocol``, ``awaiting_actions``;
- ``Manager.connection_made`` / ``Manager.connection_lost``: overridden to stop panoramisk's
  own reconnect loop (:class:`GatewayManager`);
- ``AMIProtocol.connection_lost`` and its ``factory`` / ``closed`` attributes
  (:class:`GatewayProtocol`); ``AMIProtocol.close``, which moves unanswered actions to
  ``Manager.awaiting_actions`` for re-sending after the next FullyBooted (the client clears
  that queue: see ``AmiConnection._drop_manager``);
- ``Action.multi`` (:class:`GatewayAction`), and ``Action.responses`` / ``as_list`` it reads.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from panoramisk import Manager, actions
from panoramisk.ami_protocol import AMIProtocol

PANORAMISK_VERSION = "1.4"
"""The one version these overrides were read against (pyproject.toml pins it)."""


class GatewayAction(actions.Action):
    """panoramisk's Action, minus a crash: any reply ending in "successfully queued"
    (PlayDTMF's "DTMF successfully queued") makes its ``multi`` read ``self['async']``,
    which raises KeyError when the action has no Async header, inside data_received, which
    kills the connection. Only an Originate with Async true gets more than one message."""

    @property
    def multi(self) -> bool:
        if self.get("Action", "").lower() == "originate":
            return str(self.get("Async", "false")).lower() == "true" and len(self.responses) > 0 \
                and self.responses[0].get("Response") == "Success"
        resp = self.responses[0]
        if self.as_list is not None:
            return bool(self.as_list)
        return resp.get("EventList") == "start" or "will follow" in resp.message.lower()


class GatewayProtocol(AMIProtocol):
    """AMIProtocol that tolerates losing a connection it was never handed to a Manager for
    (a connect cancelled by close() or a timeout)."""

    def connection_lost(self, exc: Exception | None) -> None:
        if self.factory is None:
            self.closed = True
            return
        super().connection_lost(exc)


class GatewayManager(Manager):
    """panoramisk's Manager with its own reconnect loop switched off: the client reconnects.

    Made without ``username`` (panoramisk would log in itself and ignore a refusal) and with
    pings a week apart (its pinger never reads the answer; the client pings with a deadline).
    """

    def __init__(self, on_lost: Callable[[object], None], **config: Any):
        super().__init__(protocol_factory=GatewayProtocol, ping_delay=10**7,
                         ping_interval=10**7, **config)
        self._on_lost = on_lost

    def connection_made(self, f: asyncio.Future) -> None:
        if f.cancelled() or f.exception() is not None:
            return  # the client sees the failure where it awaits connect() and backs off.
        super().connection_made(f)

    def connection_lost(self, exc: object) -> None:
        self._connected = False
        if self.pinger:
            self.pinger.cancel()
            self.pinger = None
        self._on_lost(exc)

    def forget_unanswered(self) -> None:
        """Drop what ``AMIProtocol.close`` queued to re-send after reconnecting: the callers
        of those actions were told they failed, so they must never be sent again (an
        Originate could otherwise ring a call nobody waits for)."""
        self.awaiting_actions.clear()
