"""The WhatsApp user as Asterisk sees them: ``CALLERID`` name and number, and the ``WA_*``
channel variables.

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


def channel_variables(rec: CallRecord, **extra: str) -> dict[str, str]:
    """What the dialplan learns about the call. A user without a number (a username caller,
    docs/meta-2026-identity.md §1) has ``WA_FROM``/``WA_USER`` empty -- never a made-up number
    -- and is told apart by ``WA_USER_ID`` (the BSUID) and ``WA_USERNAME``."""
    return {
        "WA_CALL_ID": rec.wacid,
        "WA_FROM": e164(rec.from_number),
        "WA_TO": e164(rec.to_number),
        "WA_USER": e164(rec.user_number),
        "WA_USER_ID": rec.user_id,
        "WA_USERNAME": rec.username,
        "WA_PHONE_NUMBER_ID": rec.phone_number_id,
        "WA_DIRECTION": rec.direction.value,
        "WA_CHANNEL_ID": rec.channel_id,
        # Meta's call id in the CDR, to join Asterisk's CDR to our record: in userfield
        # (cdr_csv and every back end) and as the CDR variable wa_call_id (a column of that
        # name in cdr_pgsql / cdr_adaptive_odbc tables). README "CDR".
        "CDR(userfield)": rec.wacid,
        "CDR(wa_call_id)": rec.wacid,
        **extra,
    }
