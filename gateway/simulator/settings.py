"""A business number's settings at Meta: ``GET|POST /{PHONE_NUMBER_ID}/settings`` (§4).

Starts from tests/fixtures/payloads/response-get-settings-calling.json, minus its
``restrictions`` (the sample's
restriction expired long ago; tests add one when they want it) and its ``audio`` (G.711 is an
opt-in beside Opus, docs/meta-2026-settings-events.md §1: a number starts Opus-only, and tests
that want PCMU/PCMA offered set ``audio.additional_codecs``). POST replaces each calling key
it names, and ``call_hours`` as a whole (leaving out ``holiday_schedule`` deletes it).
"""

from __future__ import annotations

import copy
import datetime
import re
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

DEFAULT_CALLING: dict[str, Any] = {
    "status": "ENABLED",
    "call_icon_visibility": "DEFAULT",
    "callback_permission_status": "ENABLED",
    "call_hours": {
        "status": "ENABLED",
        "timezone_id": "America/Sao_Paulo",
        "weekly_operating_hours": [
            {"day_of_week": "MONDAY", "open_time": "0800", "close_time": "1800"},
        ],
        "holiday_schedule": [
            {"date": "2026-12-25", "start_time": "0000", "end_time": "2359"},
        ],
    },
    "sip": {"status": "DISABLED", "servers": []},
}
DAYS = ("MONDAY", "TUESDAY", "WEDNESDAY", "THURSDAY", "FRIDAY", "SATURDAY", "SUNDAY")
MAX_RANGES_PER_DAY = 2
MAX_HOLIDAYS = 20
ENUMS = {
    "status": ("ENABLED", "DISABLED"),
    "call_icon_visibility": ("DEFAULT", "DISABLE_ALL"),
    "callback_permission_status": ("ENABLED", "DISABLED"),
    "srtp_key_exchange_protocol": ("DTLS", "SDES"),
}
CALLING_KEYS = (*ENUMS, "call_icons", "call_hours", "audio", "sip", "voicemail")
VOICEMAIL_TRIGGERS = ("REJECT", "TIMEOUT")
VOICEMAIL_TIMEOUT_S = (0, 30)
"""docs/meta-2026-settings-events.md §1: ``timeout_seconds`` 0-30; without it TIMEOUT is
disabled."""
TRACKED_BY_SETTINGS_WEBHOOK = ("status", "call_icon_visibility", "callback_permission_status",
                               "srtp_key_exchange_protocol", "sip")
"""docs/meta-2026-settings-events.md §3: what ``account_settings_update`` reports (sip only by
status)."""


def default_settings() -> dict[str, Any]:
    return {"calling": copy.deepcopy(DEFAULT_CALLING)}


def additional_codecs(calling: dict[str, Any]) -> tuple[str, ...]:
    """The G.711 codecs a caller's offer carries beside Opus (``audio.additional_codecs``)."""
    return tuple((calling.get("audio") or {}).get("additional_codecs") or ())


def _enum(where: str, value: Any, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ValueError(f"{where} must be one of {', '.join(allowed)}; got {value!r}")


def _hhmm(where: str, value: Any) -> int:
    if not isinstance(value, str) or not re.fullmatch(r"\d{4}", value):
        raise ValueError(f"{where} must be a time as HHMM, got {value!r}")
    hours, minutes = int(value[:2]), int(value[2:])
    if hours > 23 or minutes > 59:
        raise ValueError(f"{where} {value!r} is not a time of day")
    return hours * 60 + minutes


def _object(where: str, value: Any) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise ValueError(f"{where} must be an object")
    return value


def validate_call_hours(hours: Any) -> None:
    hours = _object("call_hours", hours)
    unknown = set(hours) - {"status", "timezone_id", "weekly_operating_hours",
                            "holiday_schedule"}
    if unknown:
        raise ValueError(f"call_hours has unknown field(s) {', '.join(sorted(unknown))}")
    _enum("call_hours.status", hours.get("status"), ENUMS["status"])
    tz = hours.get("timezone_id")
    try:
        if not isinstance(tz, str) or not tz:
            raise ValueError
        ZoneInfo(tz)
    except (ValueError, ZoneInfoNotFoundError):
        raise ValueError(f"call_hours.timezone_id must be an IANA time zone, got {tz!r}") \
            from None
    weekly = hours.get("weekly_operating_hours")
    if not isinstance(weekly, list) or (hours["status"] == "ENABLED" and not weekly):
        raise ValueError("call_hours.weekly_operating_hours must be a list of "
                         "{day_of_week, open_time, close_time}")
    per_day: dict[str, list[tuple[int, int]]] = {}
    for i, entry in enumerate(weekly):
        where = f"call_hours.weekly_operating_hours[{i}]"
        entry = _object(where, entry)
        _enum(f"{where}.day_of_week", entry.get("day_of_week"), DAYS)
        start = _hhmm(f"{where}.open_time", entry.get("open_time"))
        end = _hhmm(f"{where}.close_time", entry.get("close_time"))
        if end <= start:
            raise ValueError(f"{where}: close_time must be after open_time")
        per_day.setdefault(entry["day_of_week"], []).append((start, end))
    for day, ranges in per_day.items():
        if len(ranges) > MAX_RANGES_PER_DAY:
            raise ValueError(f"call_hours: at most {MAX_RANGES_PER_DAY} operating ranges per "
                             f"day, {day} has {len(ranges)}")
        ranges.sort()
        for (_, end), (start, _) in zip(ranges, ranges[1:], strict=False):
            if start < end:
                raise ValueError(f"call_hours: operating ranges of {day} overlap")
    holidays = hours.get("holiday_schedule", [])
    if not isinstance(holidays, list):
        raise ValueError("call_hours.holiday_schedule must be a list")
    if len(holidays) > MAX_HOLIDAYS:
        raise ValueError(f"call_hours.holiday_schedule: at most {MAX_HOLIDAYS} entries, "
                         f"got {len(holidays)}")
    for i, entry in enumerate(holidays):
        where = f"call_hours.holiday_schedule[{i}]"
        entry = _object(where, entry)
        try:
            datetime.date.fromisoformat(str(entry.get("date")))
            if not re.fullmatch(r"\d{4}-\d{2}-\d{2}", str(entry.get("date"))):
                raise ValueError
        except ValueError:
            raise ValueError(f"{where}.date must be YYYY-MM-DD, got {entry.get('date')!r}") \
                from None
        if _hhmm(f"{where}.end_time", entry.get("end_time")) <= \
                _hhmm(f"{where}.start_time", entry.get("start_time")):
            raise ValueError(f"{where}: end_time must be after start_time")


def validate_voicemail(voicemail: Any) -> None:
    """``{status, triggers: [REJECT|TIMEOUT], audio: {default: {announcement_media_id,
    timeout_seconds}}}`` (docs/meta-2026-settings-events.md §1).

    ASSUMPTION: the error Meta answers for a bad voicemail object is not documented; it is
    reported as an invalid parameter like every other settings problem."""
    voicemail = _object("voicemail", voicemail)
    unknown = set(voicemail) - {"status", "triggers", "audio"}
    if unknown:
        raise ValueError(f"voicemail has unknown field(s) {', '.join(sorted(unknown))}")
    _enum("voicemail.status", voicemail.get("status"), ENUMS["status"])
    triggers = voicemail.get("triggers", [])
    if not isinstance(triggers, list) or not set(triggers) <= set(VOICEMAIL_TRIGGERS):
        raise ValueError("voicemail.triggers may only list REJECT and TIMEOUT")
    audio = _object("voicemail.audio", voicemail.get("audio", {}))
    default = _object("voicemail.audio.default", audio.get("default", {}))
    timeout = default.get("timeout_seconds")
    low, high = VOICEMAIL_TIMEOUT_S
    if timeout is not None and (not isinstance(timeout, int) or isinstance(timeout, bool)
                                or not low <= timeout <= high):
        raise ValueError(f"voicemail.audio.default.timeout_seconds must be {low}-{high}, "
                         f"got {timeout!r}")
    media = default.get("announcement_media_id")
    if media is not None and not str(media).isdigit():
        raise ValueError("voicemail.audio.default.announcement_media_id must be a media id")


def voicemail_timeout(calling: dict[str, Any]) -> float | None:
    """Seconds of ringing after which Meta's voicemail takes an unanswered call, or None."""
    voicemail = calling.get("voicemail") or {}
    if voicemail.get("status") != "ENABLED" or "TIMEOUT" not in (voicemail.get("triggers") or []):
        return None
    timeout = ((voicemail.get("audio") or {}).get("default") or {}).get("timeout_seconds")
    return float(timeout) if isinstance(timeout, int) else None


def voicemail_on_reject(calling: dict[str, Any]) -> bool:
    voicemail = calling.get("voicemail") or {}
    return voicemail.get("status") == "ENABLED" and "REJECT" in (voicemail.get("triggers") or [])


def tracked_settings(calling: dict[str, Any]) -> dict[str, Any]:
    """What an ``account_settings_update`` webhook shows of the calling settings, shaped like
    tests/fixtures/payloads/webhook-account-settings-update.json (which also shows
    ``call_hours.status``)."""
    out: dict[str, Any] = {k: calling[k] for k in TRACKED_BY_SETTINGS_WEBHOOK[:4] if k in calling}
    # Meta's default (docs/meta-2026-settings-events.md §1)
    out.setdefault("srtp_key_exchange_protocol", "DTLS")
    if "call_hours" in calling:
        out["call_hours"] = {"status": calling["call_hours"].get("status")}
    if "sip" in calling:
        out["sip"] = {"status": calling["sip"].get("status"),
                      "servers": calling["sip"].get("servers", [])}
    return out


def validate_calling(calling: Any) -> None:
    """Check a POSTed ``calling`` object like Meta would; ValueError names the problem."""
    calling = _object("calling", calling)
    unknown = set(calling) - set(CALLING_KEYS)
    if unknown:
        raise ValueError(f"calling has unknown or read-only field(s) "
                         f"{', '.join(sorted(unknown))}")
    for key, allowed in ENUMS.items():
        if key in calling:
            _enum(f"calling.{key}", calling[key], allowed)
    if "call_icons" in calling:
        icons = _object("call_icons", calling["call_icons"])
        countries = icons.get("restrict_to_user_countries", [])
        if not isinstance(countries, list) or not all(
                isinstance(c, str) and re.fullmatch(r"[A-Z]{2}", c) for c in countries):
            raise ValueError("call_icons.restrict_to_user_countries must be a list of ISO "
                             "3166 alpha-2 codes")
    if "call_hours" in calling:
        validate_call_hours(calling["call_hours"])
    if "audio" in calling:
        audio = _object("audio", calling["audio"])
        codecs = audio.get("additional_codecs", [])
        if not isinstance(codecs, list) or not set(codecs) <= {"PCMA", "PCMU"}:
            raise ValueError("audio.additional_codecs may only list PCMA and PCMU (Opus is "
                             "always on)")
    if "voicemail" in calling:
        validate_voicemail(calling["voicemail"])
    if "sip" in calling:
        sip = _object("sip", calling["sip"])
        _enum("sip.status", sip.get("status"), ENUMS["status"])
        servers = sip.get("servers", [])
        if not isinstance(servers, list):
            raise ValueError("sip.servers must be a list")
        if sip["status"] == "ENABLED" and not servers:
            raise ValueError("sip.servers must name a SIP server to enable SIP")


def apply_settings(current: dict[str, Any], body: Any) -> list[str]:
    """Validate and apply a POST body; returns the calling keys that changed value."""
    body = _object("body", body)
    if "calling" not in body and not body:
        raise ValueError("nothing to update: the body has no settings")
    if "calling" in body:
        validate_calling(body["calling"])
    for key, value in body.items():
        if key != "calling" and not isinstance(value, dict):
            raise ValueError(f"{key} must be an object")
    changed: list[str] = []
    for key, value in body.items():
        if key != "calling":
            current[key] = copy.deepcopy(value)
            continue
        calling = current.setdefault("calling", {})
        for ckey, cvalue in value.items():
            if calling.get(ckey) != cvalue:
                changed.append(ckey)
            calling[ckey] = copy.deepcopy(cvalue)
    return changed


def business_calling_paused(settings: dict[str, Any], now: float) -> dict[str, Any] | None:
    """The RESTRICTED_BUSINESS_INITIATED_CALLING restriction in force (GET settings shows
    it), or None."""
    calling = settings.get("calling") or {}
    return next((r for r in (calling.get("restrictions") or {}).get("restrictions_list") or []
                 if r.get("type") == "RESTRICTED_BUSINESS_INITIATED_CALLING"
                 and float(r.get("expiration") or 0) > now), None)
