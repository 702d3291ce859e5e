"""AMI header values: the one place text is made safe to write to Asterisk.

Text a WhatsApp user or an API client controls (a profile name, a CTA payload) ends up in AMI
headers (CallerID, Variable). Asterisk ends a header at LF and an action at an empty line, so
such text could otherwise end the header and write AMI actions of its own.
:meth:`gateway.asterisk.ami_connection.AmiConnection._send` passes every action through
:func:`safe_action` before panoramisk writes it; nothing else writes to the socket.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping
from typing import Any

from gateway.asterisk.ami_errors import AmiUnsafeValue

log = logging.getLogger("gateway.asterisk.ami")  # one logger for the whole AMI client

_CONTROL = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")
"""What must never reach an AMI header value: Asterisk ends a header at LF (CR LF or a bare LF)
and an action at an empty line, so a value holding one writes headers (or whole actions) of its
own; the other C0 controls and DEL have no business in a header either. A tab is harmless
(Asterisk only trims it at the start) and is kept, as are UTF-8, quotes, commas, ``;``, ``|``
and ``)``: Asterisk carries those into the channel intact."""


def format_caller_id(name: str | None, number: str) -> str:
    """``"Maria" <+5511999990000>`` with the name's quotes and backslashes escaped."""
    if not name:
        return f"<{number}>"
    escaped = name.replace("\\", "\\\\").replace('"', '\\"')
    return f'"{escaped}" <{number}>'


def variable_header(name: str, value: str) -> str:
    """One ``Variable`` header entry, ``NAME=value``, quoted so Asterisk reads it whole."""
    # Asterisk splits each Variable header on commas (AST_STANDARD_APP_ARGS in
    # astman_get_variables_order), honouring double quotes and backslashes: quote values
    # that could be split or mangled, e.g. a CTA payload with commas.
    if any(c in value for c in ',"\\|'):
        value = '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return f"{name}={value}"


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
