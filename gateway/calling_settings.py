"""A business number's ``calling:`` block: checked at load, and obeyed on every call.

The YAML keeps each number's ``calling:`` block in Meta's own shape (docs/meta-calling.md §4,
tests/fixtures/payloads/request-settings-calling.json), so what an admin reads in Meta's docs
is what they write. This module checks it locally before Meta does (with errors that name the
key and the day), warns about what is valid but probably not meant, and answers "is the
business open now?" so a call outside the call hours goes to the number's ``closed_context``.

Pure on purpose: no I/O and no import of gateway.config, which validates every number's block
with it at load time (gateway/settings.py, which pushes the block to Meta, imports both).

YAML trap: an unquoted ``0800`` happens to stay a string but ``0700`` is read as the octal
number 448, so times below 1000 must be quoted; 1000-2359 unquoted are accepted.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Protocol
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

DAYS = ("MONDAY", "TUESDAY", "WEDNESDAY", "THURSDAY", "FRIDAY", "SATURDAY", "SUNDAY")
MAX_RANGES_PER_DAY = 2  # §4
MAX_HOLIDAYS = 20  # §4
ON_OFF = ("ENABLED", "DISABLED")
KEYS = {"status", "call_icon_visibility", "call_icons", "call_hours",
        "callback_permission_status", "srtp_key_exchange_protocol", "audio", "sip", "voicemail"}
VOICEMAIL_TRIGGERS = ("REJECT", "TIMEOUT")
VOICEMAIL_TIMEOUT_RANGE = (0, 30)  # docs/meta-2026-settings-events.md §1
CALL_HOURS_KEYS = {"status", "timezone_id", "weekly_operating_hours", "holiday_schedule"}
_HHMM = re.compile(r"([01]\d|2[0-3])([0-5]\d)")
_DATE = re.compile(r"\d{4}-\d{2}-\d{2}")


# ---- validation ----------------------------------------------------------------------------

def minutes(value: Any) -> tuple[int | None, str]:
    """HHMM -> minutes since midnight, or (None, what is wrong)."""
    if isinstance(value, bool):
        return None, f"{value!r} is not HHMM"
    if isinstance(value, int):
        if value < 1000:
            return None, (f"{value} is not HHMM: quote times before 10:00, e.g. \"0800\" "
                          f"(YAML reads 0700 unquoted as the number 448)")
        value = str(value)
    if not isinstance(value, str) or not _HHMM.fullmatch(value):
        return None, f"{value!r} is not HHMM (24 h, e.g. \"0800\" or \"1730\")"
    return int(value[:2]) * 60 + int(value[2:]), ""


def hhmm(value: Any) -> str:
    """A validated time as Meta writes it: "0800"."""
    return f"{value:04d}" if isinstance(value, int) else str(value)


def date_text(value: Any) -> str:
    """A date as Meta writes it: "2026-12-25" (YAML reads an unquoted date as a date)."""
    return value.isoformat() if isinstance(value, dt.date) else str(value)


def _enum(errors: list[str], raw: dict, key: str, path: str, allowed: Iterable[str]) -> None:
    if key in raw and raw[key] not in allowed:
        errors.append(f"{path}.{key}: must be one of {', '.join(allowed)}, got {raw[key]!r}")


def _unknown(errors: list[str], raw: dict, known: set[str], path: str) -> None:
    for key in raw:
        if key not in known:
            errors.append(f"{path}.{key}: unknown key (typo?)")


def validate_calling(raw: Any, path: str) -> list[str]:
    """Every problem of one number's ``calling:`` block, as ``key: problem`` lines."""
    if not raw:
        return []
    if not isinstance(raw, dict):
        return [f"{path}: must be a mapping of Meta calling settings"]
    errors: list[str] = []
    _unknown(errors, raw, KEYS, path)
    _enum(errors, raw, "status", path, ON_OFF)
    _enum(errors, raw, "call_icon_visibility", path, ("DEFAULT", "DISABLE_ALL"))
    _enum(errors, raw, "callback_permission_status", path, ON_OFF)
    if raw.get("srtp_key_exchange_protocol", "DTLS") != "DTLS":
        errors.append(f"{path}.srtp_key_exchange_protocol: must be DTLS: the gateway's WebRTC "
                      f"leg uses DTLS-SRTP (SDES drops ICE and DTLS), got "
                      f"{raw['srtp_key_exchange_protocol']!r}")
    sip = raw.get("sip")
    if sip is not None and (not isinstance(sip, dict) or sip.get("status") != "DISABLED"):
        errors.append(f"{path}.sip: status must be DISABLED: SIP mode stops every calls "
                      f"webhook this gateway lives on (§13)")

    icons = raw.get("call_icons")
    if icons is not None:
        if not isinstance(icons, dict):
            errors.append(f"{path}.call_icons: must be a mapping")
        else:
            _unknown(errors, icons, {"restrict_to_user_countries"}, f"{path}.call_icons")
            countries = icons.get("restrict_to_user_countries", [])
            if not isinstance(countries, list) or not all(
                    isinstance(c, str) and re.fullmatch(r"[A-Z]{2}", c) for c in countries):
                errors.append(f"{path}.call_icons.restrict_to_user_countries: must be a list of "
                              f"ISO 3166 two-letter codes like BR, got {countries!r}")

    audio = raw.get("audio")
    if audio is not None:
        if not isinstance(audio, dict):
            errors.append(f"{path}.audio: must be a mapping")
        else:
            _unknown(errors, audio, {"additional_codecs"}, f"{path}.audio")
            codecs = audio.get("additional_codecs", [])
            if not isinstance(codecs, list) or not set(codecs) <= {"PCMA", "PCMU"}:
                errors.append(f"{path}.audio.additional_codecs: must list PCMA and/or PCMU "
                              f"(Opus is always on), got {codecs!r}")

    hours = raw.get("call_hours")
    if hours is not None:
        errors += _validate_call_hours(hours, f"{path}.call_hours")
    voicemail = raw.get("voicemail")
    if voicemail is not None:
        errors += _validate_voicemail(voicemail, f"{path}.voicemail")
    return errors


def _validate_voicemail(voicemail: Any, path: str) -> list[str]:
    """``{status, triggers, audio: {default: {announcement_media_id, timeout_seconds}}}``
    (docs/meta-2026-settings-events.md §1)."""
    if not isinstance(voicemail, dict):
        return [f"{path}: must be a mapping with status, triggers, audio"]
    errors: list[str] = []
    _unknown(errors, voicemail, {"status", "triggers", "audio"}, path)
    if voicemail.get("status") not in ON_OFF:
        errors.append(f"{path}.status: must be ENABLED or DISABLED, got "
                      f"{voicemail.get('status')!r}")
    triggers = voicemail.get("triggers", [])
    if not isinstance(triggers, list) or not set(triggers) <= set(VOICEMAIL_TRIGGERS):
        errors.append(f"{path}.triggers: must list REJECT and/or TIMEOUT, got {triggers!r}")
    audio = voicemail.get("audio", {})
    if not isinstance(audio, dict):
        return [*errors, f"{path}.audio: must be a mapping with default"]
    _unknown(errors, audio, {"default"}, f"{path}.audio")
    default = audio.get("default", {})
    dpath = f"{path}.audio.default"
    if not isinstance(default, dict):
        return [*errors, f"{dpath}: must be a mapping with announcement_media_id, "
                         f"timeout_seconds"]
    _unknown(errors, default, {"announcement_media_id", "timeout_seconds"}, dpath)
    timeout = default.get("timeout_seconds")
    low, high = VOICEMAIL_TIMEOUT_RANGE
    if timeout is not None and (isinstance(timeout, bool) or not isinstance(timeout, int)
                                or not low <= timeout <= high):
        errors.append(f"{dpath}.timeout_seconds: must be a whole number of seconds "
                      f"{low}-{high}, got {timeout!r}")
    media = default.get("announcement_media_id")
    if media is not None and (isinstance(media, bool) or not str(media).isdigit()):
        errors.append(f"{dpath}.announcement_media_id: must be the id Meta returned for the "
                      f"uploaded announcement (POST /{{id}}/media with use_case="
                      f"call_voicemail_announcement), got {media!r}")
    return errors


def voicemail_timeout(calling: dict | None) -> int | None:
    """Seconds after which Meta's voicemail answers an unanswered call (TIMEOUT trigger on,
    voicemail ENABLED, ``timeout_seconds`` set), else None (docs/meta-2026-settings-events.md
    §1: without timeout_seconds the TIMEOUT trigger is disabled)."""
    voicemail = (calling or {}).get("voicemail")
    if not isinstance(voicemail, dict) or voicemail.get("status") != "ENABLED":
        return None
    if "TIMEOUT" not in (voicemail.get("triggers") or []):
        return None
    timeout = ((voicemail.get("audio") or {}).get("default") or {}).get("timeout_seconds")
    return timeout if isinstance(timeout, int) and not isinstance(timeout, bool) else None


def calling_warnings(raw: Any, path: str, media_connect_timeout_s: float | None = None
                     ) -> list[str]:
    """What is valid but probably not meant: ``key: warning`` lines for check-config,
    ``settings apply`` and the start-up log."""
    if not isinstance(raw, dict):
        return []
    warnings: list[str] = []
    voicemail = raw.get("voicemail")
    if isinstance(voicemail, dict) and voicemail.get("status") == "ENABLED":
        hours = raw.get("call_hours")
        if isinstance(hours, dict) and hours.get("status") == "ENABLED":
            warnings.append(f"{path}.voicemail: call_hours are ENABLED too; Meta asks to turn "
                            f"call hours off when voicemail is enabled")
        triggers = voicemail.get("triggers") or []
        timeout = voicemail_timeout(raw)
        if "TIMEOUT" in triggers and timeout is None:
            warnings.append(f"{path}.voicemail.triggers: TIMEOUT without "
                            f"audio.default.timeout_seconds is disabled by Meta")
        if timeout is not None and media_connect_timeout_s is not None \
                and timeout < media_connect_timeout_s:
            warnings.append(f"{path}.voicemail.audio.default.timeout_seconds: {timeout} s is "
                            f"shorter than media.connect_timeout ({media_connect_timeout_s:g} s): "
                            f"a call whose media is slow to connect goes to voicemail")
    return warnings


def _validate_call_hours(hours: Any, path: str) -> list[str]:
    if not isinstance(hours, dict):
        return [f"{path}: must be a mapping with status, timezone_id, weekly_operating_hours"]
    errors: list[str] = []
    _unknown(errors, hours, CALL_HOURS_KEYS, path)
    status = hours.get("status")
    if status not in ON_OFF:
        errors.append(f"{path}.status: must be ENABLED or DISABLED, got {status!r}")
    enabled = status == "ENABLED"

    tz = hours.get("timezone_id")
    if tz is None:
        if enabled:
            errors.append(f"{path}.timezone_id: missing (an IANA name like America/Sao_Paulo)")
    elif not isinstance(tz, str) or not _zone(tz):
        errors.append(f"{path}.timezone_id: {tz!r} is not an IANA time zone "
                      f"(e.g. America/Sao_Paulo, Europe/Berlin)")

    weekly = hours.get("weekly_operating_hours", [])
    wpath = f"{path}.weekly_operating_hours"
    if not isinstance(weekly, list):
        errors.append(f"{wpath}: must be a list of day_of_week/open_time/close_time entries")
        weekly = []
    if enabled and not weekly:
        errors.append(f"{wpath}: at least one range is needed when call hours are ENABLED "
                      f"(otherwise the business is always closed)")
    per_day: dict[str, list[tuple[int, int, str]]] = {}
    for i, entry in enumerate(weekly):
        epath = f"{wpath}[{i}]"
        if not isinstance(entry, dict):
            errors.append(f"{epath}: must be a mapping with day_of_week, open_time, close_time")
            continue
        _unknown(errors, entry, {"day_of_week", "open_time", "close_time"}, epath)
        day = entry.get("day_of_week")
        if day not in DAYS:
            errors.append(f"{epath}.day_of_week: {day!r} is not a day; use one of "
                          f"{', '.join(DAYS)}")
            day = f"entry {i}"
        opening, problem_open = minutes(entry.get("open_time"))
        closing, problem_close = minutes(entry.get("close_time"))
        if problem_open:
            errors.append(f"{epath}.open_time: {day}: {problem_open}")
        if problem_close:
            errors.append(f"{epath}.close_time: {day}: {problem_close}")
        if opening is None or closing is None:
            continue
        text = f"{hhmm(entry['open_time'])}-{hhmm(entry['close_time'])}"
        if closing <= opening:
            errors.append(f"{epath}: {day} {text}: close_time must be after open_time "
                          f"(ranges cannot cross midnight; split them over two days)")
            continue
        per_day.setdefault(day, []).append((opening, closing, text))
    for day in sorted(per_day, key=lambda d: DAYS.index(d) if d in DAYS else 99):
        ranges = sorted(per_day[day])
        if len(ranges) > MAX_RANGES_PER_DAY:
            errors.append(f"{wpath}: {day} has {len(ranges)} ranges, at most "
                          f"{MAX_RANGES_PER_DAY}")
        for (_, end_a, text_a), (start_b, _, text_b) in zip(ranges, ranges[1:], strict=False):
            if start_b < end_a:
                errors.append(f"{wpath}: {day} {text_a} overlaps {text_b}")

    holidays = hours.get("holiday_schedule", [])
    hpath = f"{path}.holiday_schedule"
    if not isinstance(holidays, list):
        errors.append(f"{hpath}: must be a list of date/start_time/end_time entries")
        holidays = []
    if len(holidays) > MAX_HOLIDAYS:
        errors.append(f"{hpath}: {len(holidays)} holidays, at most {MAX_HOLIDAYS}")
    for i, entry in enumerate(holidays):
        epath = f"{hpath}[{i}]"
        if not isinstance(entry, dict):
            errors.append(f"{epath}: must be a mapping with date, start_time, end_time")
            continue
        _unknown(errors, entry, {"date", "start_time", "end_time"}, epath)
        date = date_text(entry.get("date"))
        if not _DATE.fullmatch(date) or not _valid_date(date):
            errors.append(f"{epath}.date: {entry.get('date')!r} is not a date YYYY-MM-DD")
        start, problem_start = minutes(entry.get("start_time"))
        end, problem_end = minutes(entry.get("end_time"))
        if problem_start:
            errors.append(f"{epath}.start_time: {date}: {problem_start}")
        if problem_end:
            errors.append(f"{epath}.end_time: {date}: {problem_end}")
        if start is not None and end is not None and end <= start:
            errors.append(f"{epath}: {date} {hhmm(entry['start_time'])}-"
                          f"{hhmm(entry['end_time'])}: end_time must be after start_time")
    return errors


def _zone(name: str) -> ZoneInfo | None:
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        return None


def _valid_date(text: str) -> bool:
    try:
        dt.date.fromisoformat(text)
    except ValueError:
        return False
    return True


# ---- call hours at run time ----------------------------------------------------------------

def is_open(call_hours: dict | None, at: dt.datetime) -> bool:
    """Whether a call at ``at`` (timezone-aware) falls inside the call hours.

    No call hours, or status DISABLED, means always open. A holiday closes from start_time to
    end_time inclusive (Meta's whole-day example is 0000-2359); a weekly range is open from
    open_time up to, not including, close_time."""
    if not call_hours or call_hours.get("status") != "ENABLED":
        return True
    if at.tzinfo is None:
        raise ValueError("is_open needs a timezone-aware datetime")
    local = at.astimezone(ZoneInfo(call_hours["timezone_id"]))
    minute = local.hour * 60 + local.minute
    today = local.date().isoformat()
    for holiday in call_hours.get("holiday_schedule") or []:
        if date_text(holiday["date"]) == today:
            start, _ = minutes(holiday["start_time"])
            end, _ = minutes(holiday["end_time"])
            if start is not None and end is not None and start <= minute <= end:
                return False
    weekday = DAYS[local.weekday()]
    for entry in call_hours.get("weekly_operating_hours") or []:
        if entry.get("day_of_week") != weekday:
            continue
        opening, _ = minutes(entry["open_time"])
        closing, _ = minutes(entry["close_time"])
        if opening is not None and closing is not None and opening <= minute < closing:
            return True
    return False


class RoutedNumber(Protocol):
    """What :func:`route_for` reads of a business number (config.NumberSettings has it)."""

    @property
    def context(self) -> str: ...
    @property
    def extension(self) -> str: ...
    @property
    def closed_context(self) -> str | None: ...
    @property
    def closed_extension(self) -> str: ...
    @property
    def calling(self) -> dict[str, Any]: ...


@dataclass(frozen=True)
class CallRoute:
    context: str
    extension: str
    open: bool
    """False when the call came outside the call hours (set WA_OPEN=0 or similar)."""


def route_for(number: RoutedNumber, at: dt.datetime) -> CallRoute:
    """Where an inbound call goes: ``closed_context`` outside the call hours when one is
    configured, else the number's normal context."""
    open_now = is_open(number.calling.get("call_hours"), at)
    if not open_now and number.closed_context:
        return CallRoute(number.closed_context, number.closed_extension, False)
    return CallRoute(number.context, number.extension, open_now)

