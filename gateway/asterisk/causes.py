"""Q.850 hangup causes, as Asterisk names them (``Cause`` / ``Cause-txt`` in AMI events).

Asterisk carries ITU-T Q.850 cause values on every hangup: the AMI ``Hangup`` event has
``Cause: 16`` and ``Cause-txt: Normal Clearing``, the dialplan sees ``${HANGUPCAUSE}``, and
``Hangup(<cause>)`` / AMI ``Hangup Cause:`` set one. The names below are Asterisk's
``AST_CAUSE_*`` constants without the prefix (include/asterisk/causes.h), which is also what
``HANGUPCAUSE_KEYS``/CDRs show admins. The gateway maps them to and from WhatsApp's call
outcomes in ``calls/``; this module only knows the numbers.
"""

from __future__ import annotations

NORMAL_CLEARING = 16
USER_BUSY = 17
NO_ANSWER = 19
CALL_REJECTED = 21
NORMAL_TEMPORARY_FAILURE = 41

Q850_CAUSES: dict[int, str] = {
    0: "NOT_DEFINED",
    1: "UNALLOCATED",
    2: "NO_ROUTE_TRANSIT_NET",
    3: "NO_ROUTE_DESTINATION",
    5: "MISDIALLED_TRUNK_PREFIX",
    6: "CHANNEL_UNACCEPTABLE",
    7: "CALL_AWARDED_DELIVERED",
    8: "PRE_EMPTED",
    14: "NUMBER_PORTED_NOT_HERE",
    16: "NORMAL_CLEARING",
    17: "USER_BUSY",
    18: "NO_USER_RESPONSE",
    19: "NO_ANSWER",
    20: "SUBSCRIBER_ABSENT",
    21: "CALL_REJECTED",
    22: "NUMBER_CHANGED",
    23: "REDIRECTED_TO_NEW_DESTINATION",
    26: "ANSWERED_ELSEWHERE",
    27: "DESTINATION_OUT_OF_ORDER",
    28: "INVALID_NUMBER_FORMAT",
    29: "FACILITY_REJECTED",
    30: "RESPONSE_TO_STATUS_ENQUIRY",
    31: "NORMAL_UNSPECIFIED",
    34: "NORMAL_CIRCUIT_CONGESTION",
    38: "NETWORK_OUT_OF_ORDER",
    41: "NORMAL_TEMPORARY_FAILURE",
    42: "SWITCH_CONGESTION",
    43: "ACCESS_INFO_DISCARDED",
    44: "REQUESTED_CHAN_UNAVAIL",
    50: "FACILITY_NOT_SUBSCRIBED",
    52: "OUTGOING_CALL_BARRED",
    54: "INCOMING_CALL_BARRED",
    57: "BEARERCAPABILITY_NOTAUTH",
    58: "BEARERCAPABILITY_NOTAVAIL",
    65: "BEARERCAPABILITY_NOTIMPL",
    66: "CHAN_NOT_IMPLEMENTED",
    69: "FACILITY_NOT_IMPLEMENTED",
    81: "INVALID_CALL_REFERENCE",
    88: "INCOMPATIBLE_DESTINATION",
    95: "INVALID_MSG_UNSPECIFIED",
    96: "MANDATORY_IE_MISSING",
    97: "MESSAGE_TYPE_NONEXIST",
    98: "WRONG_MESSAGE",
    99: "IE_NONEXIST",
    100: "INVALID_IE_CONTENTS",
    101: "WRONG_CALL_STATE",
    102: "RECOVERY_ON_TIMER_EXPIRE",
    103: "MANDATORY_IE_LENGTH_ERROR",
    111: "PROTOCOL_ERROR",
    127: "INTERWORKING",
}


def cause_name(code: int | str | None) -> str:
    """``16`` -> ``"NORMAL_CLEARING"``; unknown or unparsable codes give ``"UNKNOWN(<code>)"``."""
    try:
        number = int(code)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return f"UNKNOWN({code})"
    return Q850_CAUSES.get(number, f"UNKNOWN({number})")
