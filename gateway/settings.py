"""A business number's calling settings: validated from the YAML, pushed to Meta, and obeyed.

The YAML keeps each number's ``calling:`` block in Meta's own shape (docs/meta-calling.md §4,
tests/fixtures/payloads/request-settings-calling.json), so what an admin reads in Meta's docs
is what they write. This module checks it locally before Meta does (with errors that name the
key and the day), turns it into the POST body, shows what would change against Meta's current
settings (``settings apply``, ``--dry-run``), and answers "is the business open now?" so a
call outside the call hours goes to the number's ``closed_context``.

YAML trap: an unquoted ``0800`` happens to stay a string but ``0700`` is read as the octal
number 448, so times below 1000 must be quoted; 1000-2359 unquoted are accepted.
"""

from __future__ import annotations

import copy
import datetime as dt
import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import IO, TYPE_CHECKING, Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import aiohttp

if TYPE_CHECKING:
    from gateway.config import Config, NumberSettings

DAYS = ("MONDAY", "TUESDAY", "WEDNESDAY", "THURSDAY", "FRIDAY", "SATURDAY", "SUNDAY")
MAX_RANGES_PER_DAY = 2  # §4
MAX_HOLIDAYS = 20  # §4
ON_OFF = ("ENABLED", "DISABLED")
KEYS = {"status", "call_icon_visibility", "call_icons", "call_hours",
        "callback_permission_status", "srtp_key_exchange_protocol", "audio", "sip"}
CALL_HOURS_KEYS = {"status", "timezone_id", "weekly_operating_hours", "holiday_schedule"}
_HHMM = re.compile(r"([01]\d|2[0-3])([0-5]\d)")
_DATE = re.compile(r"\d{4}-\d{2}-\d{2}")


# ---- validation ----------------------------------------------------------------------------

def _minutes(value: Any) -> tuple[int | None, str]:
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


def _hhmm(value: Any) -> str:
    """A validated time as Meta writes it: "0800"."""
    return f"{value:04d}" if isinstance(value, int) else str(value)


def _date_text(value: Any) -> str:
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
    return errors


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
        opening, problem_open = _minutes(entry.get("open_time"))
        closing, problem_close = _minutes(entry.get("close_time"))
        if problem_open:
            errors.append(f"{epath}.open_time: {day}: {problem_open}")
        if problem_close:
            errors.append(f"{epath}.close_time: {day}: {problem_close}")
        if opening is None or closing is None:
            continue
        text = f"{_hhmm(entry['open_time'])}-{_hhmm(entry['close_time'])}"
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
        date = _date_text(entry.get("date"))
        if not _DATE.fullmatch(date) or not _valid_date(date):
            errors.append(f"{epath}.date: {entry.get('date')!r} is not a date YYYY-MM-DD")
        start, problem_start = _minutes(entry.get("start_time"))
        end, problem_end = _minutes(entry.get("end_time"))
        if problem_start:
            errors.append(f"{epath}.start_time: {date}: {problem_start}")
        if problem_end:
            errors.append(f"{epath}.end_time: {date}: {problem_end}")
        if start is not None and end is not None and end <= start:
            errors.append(f"{epath}: {date} {_hhmm(entry['start_time'])}-"
                          f"{_hhmm(entry['end_time'])}: end_time must be after start_time")
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


# ---- Meta payload and diff -----------------------------------------------------------------

def to_meta_payload(raw: dict) -> dict:
    """The body for ``POST /{phone_number_id}/settings``: ``{"calling": {...}}`` with times
    and dates written as Meta expects ("0800", "2026-12-25")."""
    calling = copy.deepcopy(raw)
    hours = calling.get("call_hours")
    if isinstance(hours, dict):
        for entry in hours.get("weekly_operating_hours", []) or []:
            for key in ("open_time", "close_time"):
                entry[key] = _hhmm(entry[key])
        for entry in hours.get("holiday_schedule", []) or []:
            entry["date"] = _date_text(entry["date"])
            for key in ("start_time", "end_time"):
                entry[key] = _hhmm(entry[key])
    return {"calling": calling}


def _render_entry(path: str, entry: Any) -> str:
    if isinstance(entry, dict) and path.endswith("weekly_operating_hours"):
        return (f"{entry.get('day_of_week')} {_hhmm(entry.get('open_time'))}-"
                f"{_hhmm(entry.get('close_time'))}")
    if isinstance(entry, dict) and path.endswith("holiday_schedule"):
        return (f"{_date_text(entry.get('date'))} {_hhmm(entry.get('start_time'))}-"
                f"{_hhmm(entry.get('end_time'))}")
    return str(entry)


def _sort_key(text: str) -> tuple:
    day = text.split(" ", 1)[0]
    return (DAYS.index(day) if day in DAYS else 7, text)


def _flatten(data: dict, prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in data.items():
        path = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{path}."))
        elif isinstance(value, list):
            flat[path] = tuple(sorted((_render_entry(path, v) for v in value), key=_sort_key))
        else:
            flat[path] = value
    return flat


def _unwrap(settings: dict) -> dict:
    return settings.get("calling", settings) if isinstance(settings, dict) else {}


def diff(current_from_meta: dict, desired: dict) -> list[str]:
    """What a POST of ``desired`` changes in Meta's ``current`` settings, one line per change
    (lists as ``- removed`` / ``+ added`` lines); empty when nothing changes.

    Only keys present in ``desired`` are compared, except ``call_hours``, which a POST
    replaces whole (§4): what Meta has there and the config lacks is shown as removed."""
    current, wanted = _unwrap(current_from_meta), _unwrap(desired)
    old, new = _flatten(current), _flatten(wanted)
    paths = list(new)
    if "call_hours" in wanted:
        paths += [p for p in old if p.startswith("call_hours.") and p not in new]
    lines: list[str] = []
    for path in paths:
        before, after = old.get(path), new.get(path)
        if before == after:
            continue
        if isinstance(before, tuple) or isinstance(after, tuple):
            b, a = before or (), after or ()
            lines.append(f"{path}:")
            lines += [f"  - {x}" for x in b if x not in a]
            lines += [f"  + {x}" for x in a if x not in b]
        else:
            lines.append(f"{path}: {'(not set)' if before is None else before} -> "
                         f"{'(removed)' if after is None else after}")
    return lines


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
        if _date_text(holiday["date"]) == today:
            start, _ = _minutes(holiday["start_time"])
            end, _ = _minutes(holiday["end_time"])
            if start is not None and end is not None and start <= minute <= end:
                return False
    weekday = DAYS[local.weekday()]
    for entry in call_hours.get("weekly_operating_hours") or []:
        if entry.get("day_of_week") != weekday:
            continue
        opening, _ = _minutes(entry["open_time"])
        closing, _ = _minutes(entry["close_time"])
        if opening is not None and closing is not None and opening <= minute < closing:
            return True
    return False


@dataclass(frozen=True)
class CallRoute:
    context: str
    extension: str
    open: bool
    """False when the call came outside the call hours (set WA_OPEN=0 or similar)."""


def route_for(number: NumberSettings, at: dt.datetime) -> CallRoute:
    """Where an inbound call goes: ``closed_context`` outside the call hours when one is
    configured, else the number's normal context."""
    open_now = is_open(number.calling.get("call_hours"), at)
    if not open_now and number.closed_context:
        return CallRoute(number.closed_context, number.closed_extension, False)
    return CallRoute(number.context, number.extension, open_now)


# ---- settings apply ------------------------------------------------------------------------

async def _graph_error(response: aiohttp.ClientResponse) -> str:
    try:
        body = await response.json(content_type=None)
        error = body["error"]
        return f"HTTP {response.status}: Meta error {error.get('code')}: {error.get('message')}"
    except Exception:
        return f"HTTP {response.status}"


async def apply_settings(config: Config, graph_session: aiohttp.ClientSession, dry_run: bool,
                         out: IO[str], phone_number_ids: Iterable[str] | None = None) -> int:
    """``settings apply``: for each number with a ``calling:`` block, validate it, GET Meta's
    current settings, print the diff and POST the config's settings unless ``dry_run``.

    Returns an exit status: 0 when every number is up to date (or would be), 1 otherwise."""
    wanted = set(phone_number_ids) if phone_number_ids is not None else None
    headers = {"Authorization": f"Bearer {config.whatsapp.access_token.reveal()}"}
    timeout = aiohttp.ClientTimeout(total=config.whatsapp.graph_timeout_s)
    status = 0
    for i, number in enumerate(config.numbers):
        pnid = number.phone_number_id
        if wanted is not None and pnid not in wanted:
            continue
        name = f"numbers[{i}] {pnid}" + (f" ({number.display_number})"
                                          if number.display_number else "")
        if not number.calling:
            out.write(f"{name}: no calling settings in {config.source}, skipped\n")
            continue
        errors = validate_calling(number.calling, f"numbers[{i}].calling")
        if errors:
            out.write(f"{name}: not applied, the config is invalid:\n")
            out.writelines(f"  {e}\n" for e in errors)
            status = 1
            continue
        desired = to_meta_payload(number.calling)
        url = f"{config.whatsapp.graph_url}/{pnid}/settings"
        try:
            async with graph_session.get(url, headers=headers, timeout=timeout) as response:
                if response.status != 200:
                    out.write(f"{name}: cannot read Meta's settings: "
                              f"{await _graph_error(response)}\n")
                    status = 1
                    continue
                current = _unwrap(await response.json(content_type=None))
        except (aiohttp.ClientError, TimeoutError) as exc:
            out.write(f"{name}: cannot reach {config.whatsapp.graph_url}: "
                      f"{type(exc).__name__} {exc}\n")
            status = 1
            continue

        for restriction in (current.get("restrictions") or {}).get("restrictions_list") or []:
            until = restriction.get("expiration")
            when = (f" until {dt.datetime.fromtimestamp(until, dt.UTC):%Y-%m-%d %H:%M} UTC"
                    if isinstance(until, int) else "")
            out.write(f"{name}: note: Meta applies {restriction.get('type')}{when}: "
                      f"{restriction.get('reason')}\n")
        changes = diff(current, desired)
        if not changes:
            out.write(f"{name}: up to date\n")
            continue
        out.write(f"{name}: changes (Meta now -> config):\n")
        out.writelines(f"  {line}\n" for line in changes)
        if dry_run:
            out.write(f"{name}: dry run, nothing sent\n")
            continue
        try:
            async with graph_session.post(url, headers=headers, json=desired,
                                          timeout=timeout) as response:
                if response.status != 200:
                    out.write(f"{name}: Meta refused the settings: "
                              f"{await _graph_error(response)}\n")
                    status = 1
                    continue
        except (aiohttp.ClientError, TimeoutError) as exc:
            out.write(f"{name}: cannot reach {config.whatsapp.graph_url}: "
                      f"{type(exc).__name__} {exc}\n")
            status = 1
            continue
        out.write(f"{name}: applied (WhatsApp clients may take up to 7 days to show it)\n")
    return status
