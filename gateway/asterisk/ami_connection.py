"""The gateway's AMI connection: connect, log in, wait for FullyBooted, ping, reconnect.

Built on panoramisk for the wire format (gateway/asterisk/panoramisk_hooks.py lists the
internals it overrides), with the connection's life kept here, because panoramisk's own
handling does not fit a gateway (read in panoramisk/manager.py and ami_protocol.py):

- it reconnects every ``reconnect_timeout`` seconds forever, without backoff, and cannot tell
  a refused login from a dead server (a failed Login just leaves ``authenticated`` False);
- its ping writes ``Action: Ping`` every 10 s but never checks the answer, so a hung Asterisk
  with an open TCP connection is never noticed;
- actions unanswered when the connection drops are re-sent after the next FullyBooted, long
  after the caller gave up (an Originate could then ring a call nobody waits for);
- no action has a timeout.

So :class:`AmiConnection` opens each connection itself, logs in itself, waits for
``FullyBooted``, pings with a deadline, reconnects with exponential backoff, fails in-flight
actions with :class:`AmiNotConnected` when the connection drops (and drops panoramisk's
re-send queue), and wraps every action in ``asyncio.wait_for``. Every action it writes passes
:func:`~gateway.asterisk.ami_values.safe_action` first, in :meth:`AmiConnection._send`.

The typed actions (Originate, Getvar, Hangup, PlayDTMF, ...) are in gateway/asterisk/ami.py.
What to do once connected (the orphan sweep: gateway/calls/orphans.py) is not this module's
business: whoever owns that policy adds it to :attr:`AmiConnection.on_connect`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import defaultdict
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from panoramisk import Manager

from gateway.asterisk.ami_errors import AmiAuthError, AmiError, AmiNotConnected
from gateway.asterisk.ami_values import safe_action
from gateway.asterisk.panoramisk_hooks import GatewayAction, GatewayManager
from gateway.config import AmiSettings
from gateway.logs import RedactionFilter, Redactor

log = logging.getLogger("gateway.asterisk.ami")  # one logger for the whole AMI client

Event = dict[str, str]
"""An AMI event as plain headers: ``{"Event": "Hangup", "Uniqueid": "wa-...", "Cause": "16"}``."""

OnConnect = Callable[[], Awaitable[object]]
"""Run on every (re)connect, after login and FullyBooted, before anyone hears "connected"."""

PING_INTERVAL_S = 10.0
BOOT_TIMEOUT_S = 60.0
BACKOFF_FIRST_S = 0.5
BACKOFF_MAX_S = 5.0
"""Short: while AMI is down every new call is refused, so a returning Asterisk must be seen
within seconds; a connection attempt to it costs next to nothing."""


def plain(message: Mapping[str, Any]) -> Event:
    """A panoramisk Message as a plain dict; repeated headers are joined with newlines
    (a UserEvent header named like a channel header, e.g. ``Context``, arrives twice)."""
    event: Event = {}
    for key, value in message.items():
        if key == "content":
            continue
        if isinstance(value, list):
            value = "\n".join(dict.fromkeys(str(v) for v in value))
        event[key] = str(value)
    return event


class AmiConnection:
    """One AMI connection to Asterisk, kept up for the gateway's lifetime, and its events."""

    def __init__(self, settings: AmiSettings):
        self.settings = settings
        self.on_connect: list[OnConnect] = []
        """Awaited in order on every (re)connect before :meth:`connect` returns and before
        :attr:`on_connection_change` hears True; a failing one is logged, not fatal."""
        self.on_connection_change: list[Callable[[bool], None]] = []
        """Called with True once connected (after :attr:`on_connect`), False when it drops."""
        self.ping_interval_s = PING_INTERVAL_S
        self._manager: GatewayManager | None = None
        self._connected = False
        self._closing = False
        self._supervisor: asyncio.Task | None = None
        self._first_connect: asyncio.Future | None = None
        self._lost: asyncio.Event | None = None
        self._booted: asyncio.Event | None = None
        self._in_flight: set[asyncio.Future] = set()
        self._channel_listeners: dict[str, Callable[[Event], None]] = {}
        self._event_listeners: defaultdict[str, list[Callable[[Event], None]]] = \
            defaultdict(list)
        self._panoramisk_log = logging.getLogger(f"{log.name}.panoramisk")
        # panoramisk logs actions in some paths (``Fail to send %r``): the secret goes, as a
        # whole value only (the one redaction rule of gateway/logs.py).
        self._panoramisk_log.addFilter(RedactionFilter(Redactor([settings.secret])))

    # -- connection --------------------------------------------------------------------------

    @property
    def connected(self) -> bool:
        return self._connected

    @property
    def _where(self) -> str:
        return f"{self.settings.host}:{self.settings.port}"

    async def connect(self) -> None:
        """Connect, log in, wait for FullyBooted and run :attr:`on_connect`; then stay
        connected.

        Raises :class:`AmiError` if the first connection is not up within
        ``connect_timeout_s`` (wrong secret: :class:`AmiAuthError`); the client keeps trying
        in the background either way until :meth:`close`.
        """
        if self._supervisor is None:
            self._closing = False
            self._first_connect = asyncio.get_running_loop().create_future()
            self._supervisor = asyncio.create_task(self._supervise(), name="ami-supervisor")
        if self._connected:
            return
        assert self._first_connect is not None
        try:
            await asyncio.wait_for(asyncio.shield(self._first_connect),
                                   self.settings.connect_timeout_s)
        except TimeoutError:
            raise AmiNotConnected(
                f"AMI {self._where}: not connected after {self.settings.connect_timeout_s} s; "
                "still retrying") from None

    async def close(self) -> None:
        """Log off and stop reconnecting."""
        self._closing = True
        task, self._supervisor = self._supervisor, None
        manager = self._manager
        if manager is not None and self._connected:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._send({"Action": "Logoff"}), 1.0)
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if manager is not None:
            manager.close()
        self._manager = None
        self._connected = False
        self._fail_in_flight()

    async def _supervise(self) -> None:
        backoff = BACKOFF_FIRST_S
        reported_down = False
        while not self._closing:
            try:
                await self._open()
            except (OSError, TimeoutError, AmiError) as exc:
                self._drop_manager()
                if self._first_connect and not self._first_connect.done() \
                        and isinstance(exc, AmiAuthError):
                    self._first_connect.set_exception(exc)
                if not reported_down:
                    log.warning("AMI %s unavailable (%s); retrying with backoff up to %.0f s",
                                self._where, exc or type(exc).__name__, BACKOFF_MAX_S)
                    reported_down = True
                else:
                    log.debug("AMI %s still unavailable: %s", self._where, exc)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, BACKOFF_MAX_S)
                continue
            backoff = BACKOFF_FIRST_S
            reported_down = False
            log.info("AMI connected to %s as %r", self._where, self.settings.username)
            self._connected = True
            for hook in list(self.on_connect):
                try:
                    await hook()
                except AmiError as exc:
                    log.warning("AMI on-connect step %r failed: %s", hook, exc)
                except Exception:  # a bug there must not stop the connection's supervision
                    log.exception("AMI on-connect step %r failed", hook)
            if self._first_connect and not self._first_connect.done():
                self._first_connect.set_result(None)
            self._notify(True)
            await self._watch()
            if self._closing:
                break
            log.warning("AMI connection to %s lost; reconnecting", self._where)
            self._drop_manager()
            self._connected = False
            self._notify(False)

    async def _open(self) -> None:
        """One connection: TCP, Login, FullyBooted. Raises on any failure."""
        self._lost = asyncio.Event()
        self._booted = asyncio.Event()
        manager = GatewayManager(
            self._connection_lost, host=self.settings.host, port=self.settings.port,
            loop=asyncio.get_running_loop(), log=self._panoramisk_log)
        manager.register_event("*", self._on_event)
        self._manager = manager
        await asyncio.wait_for(manager.connect(), self.settings.connect_timeout_s)
        login = await asyncio.wait_for(self._send({
            "Action": "Login", "Username": self.settings.username,
            "Secret": self.settings.secret.reveal(), "Events": "on",
        }), self.settings.connect_timeout_s)
        if not login.success:
            raise AmiAuthError(f"AMI {self._where} refused login of "
                               f"{self.settings.username!r}: {login.get('Message', '')}")
        # Actions before FullyBooted may find the dialplan not loaded yet.
        await asyncio.wait_for(self._booted.wait(), BOOT_TIMEOUT_S)

    async def _watch(self) -> None:
        """Return when the connection is lost or stops answering pings."""
        assert self._lost is not None
        while not self._closing:
            try:
                await asyncio.wait_for(self._lost.wait(), self.ping_interval_s)
                return
            except TimeoutError:
                pass
            try:
                await asyncio.wait_for(self._send({"Action": "Ping"}),
                                       self.settings.action_timeout_s)
            except (TimeoutError, AmiError):
                log.warning("AMI %s did not answer a ping in %.1f s", self._where,
                            self.settings.action_timeout_s)
                return

    def _connection_lost(self, exc: object) -> None:
        if self._lost is not None:
            self._lost.set()
        self._fail_in_flight()

    def _drop_manager(self) -> None:
        manager, self._manager = self._manager, None
        if manager is not None:
            manager.close()
            manager.forget_unanswered()
        self._fail_in_flight()

    def _fail_in_flight(self) -> None:
        for future in self._in_flight:
            if not future.done():
                future.set_exception(AmiNotConnected(f"AMI connection to {self._where} lost"))
        self._in_flight.clear()

    def _notify(self, value: bool) -> None:
        for callback in list(self.on_connection_change):
            try:
                callback(value)
            except Exception:
                log.exception("AMI connection listener %r failed", callback)

    # -- sending -----------------------------------------------------------------------------

    def _send(self, action: dict[str, Any]) -> asyncio.Future:
        """Write one action: the only path to the socket, so every header value passes
        :func:`safe_action` here and nowhere else."""
        manager = self._manager
        if manager is None or manager.protocol is None or manager.protocol.closed:
            raise AmiNotConnected(f"AMI {self._where}: not connected")
        future = manager.send_action(GatewayAction(safe_action(action)))
        self._in_flight.add(future)
        future.add_done_callback(self._in_flight.discard)
        return future

    async def action(self, action: dict[str, Any], timeout_s: float | None = None) -> Any:
        """Send ``action`` and await Asterisk's answer (a Message, or a list of them for an
        event list), within ``timeout_s`` (default ``action_timeout_s``)."""
        if not self._connected:
            raise AmiNotConnected(f"AMI {self._where}: not connected")
        timeout = self.settings.action_timeout_s if timeout_s is None else timeout_s
        try:
            return await asyncio.wait_for(self._send(action), timeout)
        except TimeoutError:
            raise AmiError(f"AMI {action['Action']}: no answer in {timeout:.1f} s") from None

    # -- events ------------------------------------------------------------------------------

    def add_channel_listener(self, uniqueid: str, callback: Callable[[Event], None]) -> None:
        """Deliver every event whose ``Uniqueid`` is ``uniqueid`` (Hangup, DTMFEnd,
        UserEvent, BridgeEnter, ...) to ``callback``. One listener per channel."""
        self._channel_listeners[uniqueid] = callback

    def remove_channel_listener(self, uniqueid: str) -> None:
        self._channel_listeners.pop(uniqueid, None)

    def add_event_listener(self, event_name: str, callback: Callable[[Event], None]) -> None:
        """Deliver every event named ``event_name`` (``UserEvent``, ``Hangup``; ``*`` for
        all), from any channel, to ``callback``."""
        self._event_listeners[event_name.lower()].append(callback)

    def remove_event_listener(self, event_name: str, callback: Callable[[Event], None]) -> None:
        with contextlib.suppress(ValueError):
            self._event_listeners[event_name.lower()].remove(callback)

    def _on_event(self, manager: Manager, message: Any) -> None:
        event = plain(message)
        name = event.get("Event", "")
        if name == "FullyBooted" and self._booted is not None:
            self._booted.set()
        targets: list[Callable[[Event], None]] = []
        channel_listener = self._channel_listeners.get(event.get("Uniqueid", ""))
        if channel_listener is not None:
            targets.append(channel_listener)
        targets += self._event_listeners.get(name.lower(), [])
        targets += self._event_listeners.get("*", [])
        for callback in targets:
            try:
                callback(event)
            except Exception:
                log.exception("AMI listener %r failed on %s", callback, name)
