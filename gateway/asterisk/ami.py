"""The gateway's AMI client: the typed actions a call uses (Originate UnicastRTP, Getvar,
Setvar, PlayDTMF, Hangup, ShowDialPlan, CoreShowChannels), over one supervised connection.

The connection's life (connect, login, FullyBooted, ping, reconnect with backoff) and the
event listeners are :class:`~gateway.asterisk.ami_connection.AmiConnection`'s; every header
value passes :func:`~gateway.asterisk.ami_values.safe_action` there, on its one path to the
socket. This module only builds actions and reads their answers. Which channels to hang up
after a reconnect (the orphan sweep) is a call policy: gateway/calls/orphans.py.

The names other modules import from here stay here: the errors
(gateway/asterisk/ami_errors.py), :data:`Event`, :func:`format_caller_id`, :func:`safe_action`.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from gateway.asterisk.ami_connection import AmiConnection, Event, plain
from gateway.asterisk.ami_errors import AmiAuthError, AmiError, AmiNotConnected, AmiUnsafeValue
from gateway.asterisk.ami_values import format_caller_id, safe_action, variable_header
from gateway.asterisk.causes import NORMAL_CLEARING
from gateway.media.codecs import ASTERISK_CODECS

__all__ = ["AmiAuthError", "AmiClient", "AmiError", "AmiNotConnected", "AmiUnsafeValue",
           "Event", "OriginateResult", "format_caller_id", "safe_action"]

log = logging.getLogger(__name__)


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


def _messages(answer: Any) -> list[Any]:
    return answer if isinstance(answer, list) else [answer]


class AmiClient(AmiConnection):
    """One AMI connection to Asterisk and the actions the gateway sends on it."""

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
        if codec not in ASTERISK_CODECS:
            raise ValueError(f"codec must be one of {', '.join(ASTERISK_CODECS)}, "
                             f"got {codec!r}")
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
            action["Variable"] = [variable_header(k, v) for k, v in variables.items()]
        messages = _messages(await self.action(action,
                                               self.settings.action_timeout_s + timeout_s))
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
        resp = await self.action(
            {"Action": "Getvar", "Channel": channel_id, "Variable": variable})
        if not resp.success:
            raise AmiError(f"Getvar {variable} on {channel_id}: {resp.get('Message', '')}")
        value = resp.get("Value", "")
        return value if value and value != "(null)" else None

    async def setvar(self, channel: str, variable: str, value: str) -> None:
        resp = await self.action(
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
        resp = await self.action({
            "Action": "PlayDTMF", "Channel": channel_id, "Digit": digit,
            "Duration": str(duration_ms), "Receive": "true",
        })
        if not resp.success:
            raise AmiError(f"PlayDTMF {digit} on {channel_id}: {resp.get('Message', '')}")

    async def hangup(self, channel_id: str, cause: int = NORMAL_CLEARING) -> bool:
        """Hang the channel up with a Q.850 cause. False if it no longer exists."""
        resp = await self.action(
            {"Action": "Hangup", "Channel": channel_id, "Cause": str(cause)})
        if resp.success:
            return True
        if "no such channel" in str(resp.get("Message", "")).lower():
            return False
        raise AmiError(f"Hangup {channel_id}: {resp.get('Message', '')}")

    async def dialplan_has(self, context: str, exten: str) -> bool:
        """Does the dialplan have ``exten`` (or a pattern matching it) in ``context``?
        ``ShowDialPlan`` answers an Error ("Did not find context ...") when it has not."""
        answer = await self.action({"Action": "ShowDialPlan", "Context": context,
                                    "Extension": exten})
        return _messages(answer)[0].get("Response") == "Success"

    async def show_dialplan(self) -> list[Event]:
        """The whole dialplan, one ``ListDialplan`` event per priority or include."""
        return await self._event_list({"Action": "ShowDialPlan"}, "ListDialplan")

    async def core_show_channels(self) -> list[Event]:
        """Every channel in Asterisk, one ``CoreShowChannel`` event each."""
        return await self._event_list({"Action": "CoreShowChannels"}, "CoreShowChannel")

    async def _event_list(self, action: dict[str, Any], event: str) -> list[Event]:
        messages = _messages(await self.action(action))
        if messages and messages[0].get("Response") == "Error":
            raise AmiError(f"{action['Action']}: {messages[0].get('Message', '')}")
        return [plain(m) for m in messages if m.get("Event") == event]
