"""The WhatsApp user as Asterisk sees them: ``CALLERID`` name and number.

A call is handed to the dialplan like a call from a PSTN trunk (``"Name" <+E164>``), so
CallerID routing, queues and CDRs work unchanged. The name is the user's own WhatsApp text, so
it is tidied here; the AMI client then makes the header safe (gateway/asterisk/ami_values.py).
"""

from __future__ import annotations

import re

from gateway.asterisk.ami_values import format_caller_id
from gateway.calls.record import CallRecord
from gateway.config import NumberSettings, UsernameCallerId


def caller_id(profile_name: str, number: str) -> str:
    """``"Name" <+E164>``, as a PSTN trunk would present it. The WhatsApp profile name is the
    user's own text: line breaks and angle brackets go, quotes are escaped (Asterisk keeps
    them in ``CALLERID(name)``)."""
    name = re.sub(r"\s+", " ", re.sub(r"[<>]", "", profile_name)).strip()
    return format_caller_id(name, number if number.startswith("+") else f"+{number}")


def e164(number: str) -> str:
    """``+digits``, or empty when there is no number."""
    digits = number.lstrip("+")
    return f"+{digits}" if digits else ""


def user_caller_id(record: CallRecord, number: NumberSettings | None) -> str:
    """CALLERID of the WhatsApp user: ``"Profile name" <+E164>`` when Meta gave the number;
    for a username caller without one, what the number's ``username_caller_id`` says (the
    username as name and an empty number by default)."""
    if record.user_number:
        return caller_id(record.profile_name, record.user_number)
    template = number.username_caller_id if number is not None else UsernameCallerId()
    name, num = template.render(username=record.username, profile_name=record.profile_name,
                                user_id=record.user_id)
    name = re.sub(r"\s+", " ", re.sub(r"[<>]", "", name)).strip()
    return format_caller_id(name, num)
