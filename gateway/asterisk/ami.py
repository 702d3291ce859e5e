"""The gateway's AMI connection: Originate UnicastRTP, Getvar, PlayDTMF, Hangup, and events.

Built on panoramisk 1.4 for the wire format (actions, ActionID matching, event parsing), with
the connection's life kept here, because panoramisk's own handling does not fit a gateway
(read in panoramisk/manager.py and ami_protocol.py):

- it reconnects every ``reconnect_timeout`` seconds forever, without backoff, and cannot tell
  a refused login from a dead server (a failed Login just leaves ``authenticated`` False);
- its ping writes ``Action: Ping`` every 10 s but never checks the answer, so a hung Asterisk
  with an open TCP connection is never noticed;
- actions unanswered when the connection drops are re-sent after the next FullyBooted, long
  after the caller gave up (an Originate could then ring a call nobody waits for);
- no action has a timeout.

So :class:`AmiClient` opens each connection itself, logs in itself, waits for
``FullyBooted``, pings with a deadline, reconnects with exponential backoff, fails in-flight
actions with :class:`AmiNotConnected` when the connection drops (and drops panoramisk's
re-send queue), and wraps every action in ``asyncio.wait_for``.

Every action it writes passes :func:`safe_action` first, the one place header values are made
safe: text a WhatsApp user or an API client controls (a profile name, a CTA payload) can never
end a header and write AMI actions of its own.

On every (re)connect it sweeps orphans (unless ``sweep_on_connect`` is False, as for
``check-config --asterisk``): UnicastRTP channels whose Uniqueid carries our
``channel_prefix`` but that no call of this gateway owns any more. chan_rtp has no RTP
timeout, so without the sweep a crashed gateway would leave callers in queues forever
(docs/asterisk-handoff.md, "Hangups").
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
from collections import defaultdict
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from panoramisk import Manager, actions
from panoramisk.ami_protocol import AMIProtocol

from gateway.asterisk.causes import NORMAL_CLEARING, NORMAL_TEMPORARY_FAILURE
from gateway.config import CODECS, AmiSettings

log = logging.getLogger(__name__)

Event = dict[str, str]
"""An AMI event as plain headers: ``{"Event": "Hangup", "Uniqueid": "wa-...", "Cause": "16"}``."""

PING_INTERVAL_S = 10.0
BOOT_TIMEOUT_S = 60.0
BACKOFF_FIRST_S = 0.5
BACKOFF_MAX_S = 5.0
"""Short: while AMI is down every new call is refused, so a returning Asterisk must be seen
within seconds; a connection attempt to it costs next to nothing."""
ORPHAN_CAUSE = NORMAL_TEMPORARY_FAILURE
"""Cause for swept orphans: the call ended because the gateway lost it, not normally."""


class AmiError(Exception):
    """An AMI action failed; the message is Asterisk's own where it gave one."""


class AmiNotConnected(AmiError):
    """There is no logged-in AMI connection (or it dropped while the action was in flight)."""


class AmiAuthError(AmiError):
    """Asterisk refused the login: username/secret or the permit/deny ACL in manager.conf."""


class AmiUnsafeValue(AmiError):
    """An action header value holds a line break or another control character (or text that
    is not valid Unicode) and cannot be neutralised: sending it would let the text end the
    header and write AMI actions of its own, so the action is not sent at all."""

    def __init__(self, header: str, value: str):
        super().__init__(f"AMI header {header}: value {value[:60]!r} holds a control character "
                         "or invalid text; action not sent")
        self.header = header


@dataclass(frozen=True)
class OriginateResult:
    """Outcome of an Originate, from Asterisk's ``OriginateResponse`` event."""

    success: bool
    channel: str
    """Asterisk's channel name, e.g. ``UnicastRTP/127.0.0.1:40002-0x7f...``."""
    reason: int
    """Asterisk's originate reason: 4 answered, 0 failed, 1 hung up, 3 ringing, 5 busy,
    8 congestion."""
    message: str = ""
    """Asterisk's message when the action itself was refused (``Response: Error``)."""


def format_caller_id(name: str | None, number: str) -> str:
    """``"Maria" <+5511999990000>`` with the name's quotes and backslashes escaped."""
    if not name:
        return f"<{number}>"
    escaped = name.replace("\\", "\\\\").replace('"', '\\"')
    return f'"{escaped}" <{number}>'


def _variable_header(name: str, value: str) -> str:
    # Asterisk splits each Variable header on commas (AST_STANDARD_APP_ARGS in
    # astman_get_variables_order), honouring double quotes and backslashes: quote values
    # that could be split or mangled, e.g. a CTA payload with commas.
    if any(c in value for c in ',"\\|'):
        value = '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return f"{name}={value}"


_CONTROL = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")
"""What must never reach an AMI header value: Asterisk ends a header at LF (CR LF or a bare LF)
and an action at an empty line, so a value holding one writes headers (or whole actions) of its
own; the other C0 controls and DEL have no business in a header either. A tab is harmless
(Asterisk only trims it at the start) and is kept, as are UTF-8, quotes, commas, ``;``, ``|``
and ``)``: Asterisk carries those into the channel intact."""


def _unsafe(value: str) -> bool:
    if _CONTROL.search(value):
        return True
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:  # a lone surrogate: panoramisk's write would raise mid-action
        return True
    return False


def _neutral_caller_id(value: str) -> str:
    """A caller id shows text to an agent, so its control characters become spaces."""
    value = _CONTROL.sub(" ", value)
    return value.encode("utf-8", "replace").decode("utf-8")


def safe_action(action: Mapping[str, Any]) -> dict[str, Any]:
    """The action as it may be written to Asterisk: the one place every header value passes.

    - a ``Variable`` entry (``NAME=value``) whose value is unsafe is sent as ``NAME=`` with a
      warning naming the variable: the call still lands, only that variable is empty (a
      WhatsApp user's profile name or CTA payload must not be able to drop their call);
    - ``CallerID`` control characters become spaces;
    - any other unsafe header (Channel, Context, Exten, Application, Data, ...) raises
      :class:`AmiUnsafeValue`: there is no safe reading of a channel or a context with a line
      break in it, so the caller turns it into a refusal.
    """
    out: dict[str, Any] = {}
    for header, value in action.items():
        if _unsafe(str(header)):
            raise AmiUnsafeValue("(header name)", str(header))
        if header.lower() == "variable":
            entries = value if isinstance(value, list | tuple) else [value]
            out[header] = [_safe_variable(str(e), action) for e in entries]
        elif header.lower() == "callerid":
            out[header] = _neutral_caller_id(str(value))
        elif isinstance(value, list | tuple):
            for item in value:
                if _unsafe(str(item)):
                    raise AmiUnsafeValue(header, str(item))
            out[header] = list(value)
        else:
            if _unsafe(str(value)):
                raise AmiUnsafeValue(header, str(value))
            out[header] = value
    return out


def _safe_variable(entry: str, action: Mapping[str, Any]) -> str:
    name, _, value = entry.partition("=")
    if _unsafe(name):
        raise AmiUnsafeValue("Variable", name)
    if not _unsafe(value):
        return entry
    log.warning("AMI %s on %s: variable %s held a control character or invalid text; "
                "sent empty", action.get("Action", "?"), action.get("ChannelId") or
                action.get("Channel", "?"), name)
    return f"{name}="


def _plain(message: Mapping[str, Any]) -> Event:
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


class _Action(actions.Action):
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


class _Protocol(AMIProtocol):
    """AMIProtocol that tolerates losing a connection it was never handed to a Manager for
    (a connect cancelled by close() or a timeout)."""

    def connection_lost(self, exc: Exception | None) -> None:
        if self.factory is None:
            self.closed = True
            return
        super().connection_lost(exc)


class _Manager(Manager):
    """panoramisk's Manager with its own reconnect loop switched off: AmiClient reconnects."""

    def __init__(self, on_lost: Callable[[object], None], **config: Any):
        super().__init__(**config)
        self._on_lost = on_lost

    def connection_made(self, f: asyncio.Future) -> None:
        if f.cancelled() or f.exception() is not None:
            return  # AmiClient sees the failure where it awaits connect() and backs off.
        super().connection_made(f)

    def connection_lost(self, exc: object) -> None:
        self._connected = False
        if self.pinger:
            self.pinger.cancel()
            self.pinger = None
        self._on_lost(exc)


class _SecretFilter(logging.Filter):
    """panoramisk logs actions in some paths (``Fail to send %r``); keep the secret out."""

    def __init__(self, secret: str):
        super().__init__()
        self._secret = secret

    def filter(self, record: logging.LogRecord) -> bool:
        if self._secret and self._secret in record.getMessage():
            record.msg = record.getMessage().replace(self._secret, "***")
            record.args = ()
        return True


class AmiClient:
    """One AMI connection to Asterisk, kept up for the gateway's lifetime."""

    def __init__(self, settings: AmiSettings, *, channel_prefix: str = "wa-",
                 sweep_on_connect: bool = True):
        self.settings = settings
        self.channel_prefix = channel_prefix
        self.sweep_on_connect = sweep_on_connect
        """False for a client that is not the gateway (``check-config --asterisk``): it owns
        no call, so to its sweep every live call of the running gateway is an orphan."""
        self.owned: Callable[[str], bool] = lambda uniqueid: False
        """Does a live call own this channel id? Set by the app; the orphan sweep asks it."""
        self.sweeps: Callable[[str], bool] = lambda uniqueid: \
            uniqueid.startswith(self.channel_prefix)
        """Is a channel with this id this client's to sweep at all? Every ``channel_prefix``
        one by default; a worker of ``serve --workers N`` sweeps only its own
        (gateway/workers/identity.py ``is_mine``), never a live call of another worker."""
        self.on_connection_change: list[Callable[[bool], None]] = []
        """Called with True once connected (after the orphan sweep), False when it drops."""
        self.ping_interval_s = PING_INTERVAL_S
        self._manager: _Manager | None = None
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
        self._panoramisk_log = logging.getLogger(f"{__name__}.panoramisk")
        self._panoramisk_log.addFilter(_SecretFilter(settings.secret.reveal()))

    # -- connection --------------------------------------------------------------------------

    @property
    def connected(self) -> bool:
        return self._connected

    @property
    def _where(self) -> str:
        return f"{self.settings.host}:{self.settings.port}"

    async def connect(self) -> None:
        """Connect, log in, wait for FullyBooted and sweep orphans; then stay connected.

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
        self._set_connected(False)
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
            self._set_connected(True)
            if self.sweep_on_connect:
                try:
                    await self.sweep_orphans()
                except AmiError as exc:
                    log.warning("AMI orphan sweep failed: %s", exc)
            if self._first_connect and not self._first_connect.done():
                self._first_connect.set_result(None)
            self._notify(True)
            await self._watch()
            if self._closing:
                break
            log.warning("AMI connection to %s lost; reconnecting", self._where)
            self._drop_manager()
            self._set_connected(False)
            self._notify(False)

    async def _open(self) -> None:
        """One connection: TCP, Login, FullyBooted. Raises on any failure."""
        self._lost = asyncio.Event()
        self._booted = asyncio.Event()
        manager = _Manager(
            self._connection_lost,
            host=self.settings.host, port=self.settings.port,
            loop=asyncio.get_running_loop(), log=self._panoramisk_log, protocol_factory=_Protocol,
            # No username: panoramisk would log in itself and ignore a refusal.
            # Its pinger never reads the answer; _watch() pings with a deadline instead.
            ping_delay=10**7, ping_interval=10**7,
        )
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
            # panoramisk queued unanswered actions to re-send after reconnecting; their
            # callers have been told they failed, so they must never be sent again.
            manager.awaiting_actions.clear()
        self._fail_in_flight()

    def _fail_in_flight(self) -> None:
        for future in self._in_flight:
            if not future.done():
                future.set_exception(AmiNotConnected(f"AMI connection to {self._where} lost"))
        self._in_flight.clear()

    def _set_connected(self, value: bool) -> None:
        self._connected = value

    def _notify(self, value: bool) -> None:
        for callback in list(self.on_connection_change):
            try:
                callback(value)
            except Exception:
                log.exception("AMI connection listener %r failed", callback)

    # -- actions -----------------------------------------------------------------------------

    def _send(self, action: dict[str, Any]) -> asyncio.Future:
        manager = self._manager
        if manager is None or manager.protocol is None or manager.protocol.closed:
            raise AmiNotConnected(f"AMI {self._where}: not connected")
        future = manager.send_action(_Action(safe_action(action)))
        self._in_flight.add(future)
        future.add_done_callback(self._in_flight.discard)
        return future

    async def _action(self, action: dict[str, Any], timeout_s: float | None = None) -> Any:
        if not self._connected:
            raise AmiNotConnected(f"AMI {self._where}: not connected")
        timeout = self.settings.action_timeout_s if timeout_s is None else timeout_s
        try:
            return await asyncio.wait_for(self._send(action), timeout)
        except TimeoutError:
            raise AmiError(f"AMI {action['Action']}: no answer in {timeout:.1f} s") from None

    async def originate_unicast(
        self, *, channel_id: str, rtp_host: str, rtp_port: int, codec: str,
        context: str | None = None, exten: str | None = None, priority: int = 1,
        caller_id: str, variables: Mapping[str, str],
        application: str | None = None, data: str | None = None, timeout_s: float = 10,
        account: str | None = None,
    ) -> OriginateResult:
        """Create ``UnicastRTP/<rtp_host>:<rtp_port>/c(<codec>)`` with Uniqueid ``channel_id``.

        It runs the dialplan at ``context``/``exten``/``priority``, or ``application`` with
        ``data`` (``Bridge`` to an agent's channel for outbound calls). Asterisk sends its
        audio to ``rtp_host:rtp_port``; ask :meth:`getvar` for ``UNICASTRTP_LOCAL_PORT`` to
        learn where to send ours. ``Async: true`` always: panoramisk's response matching
        breaks without it, and the OriginateResponse event carries the outcome.
        """
        if codec not in CODECS:
            raise ValueError(f"codec must be one of {', '.join(CODECS)}, got {codec!r}")
        host = f"[{rtp_host}]" if ":" in rtp_host else rtp_host
        return await self.originate(
            f"UnicastRTP/{host}:{rtp_port}/c({codec})", channel_id=channel_id,
            context=context, exten=exten, priority=priority, caller_id=caller_id,
            variables=variables, application=application, data=data, timeout_s=timeout_s,
            account=account)

    async def originate(
        self, channel: str, *, channel_id: str | None = None,
        context: str | None = None, exten: str | None = None, priority: int = 1,
        caller_id: str = "", variables: Mapping[str, str] | None = None,
        application: str | None = None, data: str | None = None, timeout_s: float = 10,
        account: str | None = None,
    ) -> OriginateResult:
        """Originate any channel (e.g. ``Local/100@agents``) into the dialplan or an
        application, and wait for its OriginateResponse. See :meth:`originate_unicast`."""
        if (application is None) == (context is None or exten is None):
            raise ValueError("give either context and exten, or application (and data)")
        action: dict[str, Any] = {
            "Action": "Originate",
            "Channel": channel,
            "Timeout": str(int(timeout_s * 1000)),
            "Async": "true",
        }
        if channel_id:
            action["ChannelId"] = channel_id
        if caller_id:
            action["CallerID"] = caller_id
        if account:
            action["Account"] = account
        if application is not None:
            action["Application"] = application
            action["Data"] = data or ""
        else:
            action.update(Context=context, Exten=exten, Priority=str(priority))
        if variables:
            action["Variable"] = [_variable_header(k, v) for k, v in variables.items()]
        answer = await self._action(action, self.settings.action_timeout_s + timeout_s)
        messages = answer if isinstance(answer, list) else [answer]
        final = messages[-1]
        if final.get("Event") != "OriginateResponse":
            return OriginateResult(success=False, channel="", reason=0,
                                   message=str(final.get("Message", "")))
        try:
            reason = int(final.get("Reason", 0))
        except ValueError:
            reason = 0
        return OriginateResult(
            success=final.get("Response") == "Success",
            channel=str(final.get("Channel", "")),
            reason=reason,
            message=str(messages[0].get("Message", "")),
        )

    async def getvar(self, channel_id: str, variable: str) -> str | None:
        """A channel variable or function (``UNICASTRTP_LOCAL_PORT``, ``CHANNEL(state)``).

        Returns None when it is empty or unset; raises :class:`AmiError` when the channel
        does not exist.
        """
        resp = await self._action(
            {"Action": "Getvar", "Channel": channel_id, "Variable": variable})
        if not resp.success:
            raise AmiError(f"Getvar {variable} on {channel_id}: {resp.get('Message', '')}")
        value = resp.get("Value", "")
        return value if value and value != "(null)" else None

    async def setvar(self, channel: str, variable: str, value: str) -> None:
        resp = await self._action(
            {"Action": "Setvar", "Channel": channel, "Variable": variable, "Value": value})
        if not resp.success:
            raise AmiError(f"Setvar {variable} on {channel}: {resp.get('Message', '')}")

    async def play_dtmf(self, channel_id: str, digit: str, duration_ms: int = 120) -> None:
        """Queue ``digit`` on the channel as if the caller pressed it (``Receive: true``).

        A UnicastRTP channel has no SDP, so RFC 4733 events sent to it are dropped; this is
        how WhatsApp keypresses reach Read(), WaitExten() and queues (docs/asterisk-handoff.md).
        """
        if len(digit) != 1 or digit not in "0123456789*#ABCDabcd":
            raise ValueError(f"not a DTMF digit: {digit!r}")
        resp = await self._action({
            "Action": "PlayDTMF", "Channel": channel_id, "Digit": digit,
            "Duration": str(duration_ms), "Receive": "true",
        })
        if not resp.success:
            raise AmiError(f"PlayDTMF {digit} on {channel_id}: {resp.get('Message', '')}")

    async def hangup(self, channel_id: str, cause: int = NORMAL_CLEARING) -> bool:
        """Hang the channel up with a Q.850 cause. False if it no longer exists."""
        resp = await self._action(
            {"Action": "Hangup", "Channel": channel_id, "Cause": str(cause)})
        if resp.success:
            return True
        if "no such channel" in str(resp.get("Message", "")).lower():
            return False
        raise AmiError(f"Hangup {channel_id}: {resp.get('Message', '')}")

    async def dialplan_has(self, context: str, exten: str) -> bool:
        """Does the dialplan have ``exten`` (or a pattern matching it) in ``context``?
        ``ShowDialPlan`` answers an Error ("Did not find context ...") when it has not."""
        answer = await self._action({"Action": "ShowDialPlan", "Context": context,
                                     "Extension": exten})
        first = answer[0] if isinstance(answer, list) else answer
        return first.get("Response") == "Success"

    async def show_dialplan(self) -> list[Event]:
        """The whole dialplan, one ``ListDialplan`` event per priority or include."""
        answer = await self._action({"Action": "ShowDialPlan"})
        messages = answer if isinstance(answer, list) else [answer]
        if messages and messages[0].get("Response") == "Error":
            raise AmiError(f"ShowDialPlan: {messages[0].get('Message', '')}")
        return [_plain(m) for m in messages if m.get("Event") == "ListDialplan"]

    async def core_show_channels(self) -> list[Event]:
        """Every channel in Asterisk, one ``CoreShowChannel`` event each."""
        answer = await self._action({"Action": "CoreShowChannels"})
        messages = answer if isinstance(answer, list) else [answer]
        if messages and messages[0].get("Response") == "Error":
            raise AmiError(f"CoreShowChannels: {messages[0].get('Message', '')}")
        return [_plain(m) for m in messages if m.get("Event") == "CoreShowChannel"]

    async def sweep_orphans(self) -> list[str]:
        """Hang up our UnicastRTP channels that no live call owns; return their ids."""
        swept = []
        for channel in await self.core_show_channels():
            uniqueid = channel.get("Uniqueid", "")
            if not self.sweeps(uniqueid):
                continue
            if not channel.get("Channel", "").startswith("UnicastRTP/"):
                continue
            if self.owned(uniqueid):
                continue
            log.warning("AMI: hanging up orphaned channel %s (%s)", uniqueid,
                        channel.get("Channel"))
            if await self.hangup(uniqueid, ORPHAN_CAUSE):
                swept.append(uniqueid)
        return swept

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
        event = _plain(message)
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
