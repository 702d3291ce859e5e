"""``settings apply``: a number's ``calling:`` block pushed to Meta, after showing the diff.

The block is validated and obeyed by gateway/calling_settings.py; this module turns it into
the POST body (docs/meta-calling.md §4), shows what would change against Meta's current
settings (``--dry-run`` stops there), and sends it through the gateway's one Graph client, so
Meta's errors read as they do everywhere else and an overloaded Graph API is retried. It also
checks the voicemail announcement before ``settings upload-announcement`` sends it.
"""

from __future__ import annotations

import copy
import datetime as dt
import io
from collections.abc import Iterable
from typing import IO, Any

import av

from gateway.calling_settings import (
    DAYS,
    calling_warnings,
    date_text,
    hhmm,
    validate_calling,
)
from gateway.config import Config
from gateway.whatsapp.graph import GraphClient, GraphError

ANNOUNCEMENT_MAX_S = 60.0
"""docs/meta-2026-settings-events.md §1: the announcement is Opus in Ogg, shorter than 60 s."""


def announcement_problem(content: bytes) -> str | None:
    """Why a file cannot be the voicemail announcement, checked before uploading it; None when
    it can. Needs PyAV (installed with aiortc) to read the duration."""
    if not content.startswith(b"OggS") or b"OpusHead" not in content[:512]:
        return "not an Ogg Opus file (convert it: ffmpeg -i in.wav -c:a libopus out.ogg)"
    try:
        with av.open(io.BytesIO(content), format="ogg") as container:
            duration = container.duration  # microseconds, None when unknown
            stream = container.streams.audio[0]
            end = 0.0
            for packet in container.demux(stream):
                if packet.pts is not None and packet.time_base is not None:
                    end = max(end, float((packet.pts + (packet.duration or 0))
                                         * packet.time_base))
    except (av.error.FFmpegError, IndexError) as exc:
        return f"not a readable Ogg Opus file: {exc}"
    seconds = max(end, (duration or 0) / 1e6)
    if seconds >= ANNOUNCEMENT_MAX_S:
        return f"{seconds:.1f} s long: Meta takes announcements shorter than 60 s"
    return None


# ---- Meta payload and diff -----------------------------------------------------------------

def to_meta_payload(raw: dict) -> dict:
    """The body for ``POST /{phone_number_id}/settings``: ``{"calling": {...}}`` with times
    and dates written as Meta expects ("0800", "2026-12-25")."""
    calling = copy.deepcopy(raw)
    hours = calling.get("call_hours")
    if isinstance(hours, dict):
        for entry in hours.get("weekly_operating_hours", []) or []:
            for key in ("open_time", "close_time"):
                entry[key] = hhmm(entry[key])
        for entry in hours.get("holiday_schedule", []) or []:
            entry["date"] = date_text(entry["date"])
            for key in ("start_time", "end_time"):
                entry[key] = hhmm(entry[key])
    return {"calling": calling}


def _render_entry(path: str, entry: Any) -> str:
    if isinstance(entry, dict) and path.endswith("weekly_operating_hours"):
        return (f"{entry.get('day_of_week')} {hhmm(entry.get('open_time'))}-"
                f"{hhmm(entry.get('close_time'))}")
    if isinstance(entry, dict) and path.endswith("holiday_schedule"):
        return (f"{date_text(entry.get('date'))} {hhmm(entry.get('start_time'))}-"
                f"{hhmm(entry.get('end_time'))}")
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
        if before == after or (isinstance(before, (int, str)) and isinstance(after, (int, str))
                               and str(before) == str(after)):
            # Meta may write an id the YAML has as a number as a string (a media id).
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




# ---- settings apply ------------------------------------------------------------------------

async def apply_settings(config: Config, graph: GraphClient, dry_run: bool, out: IO[str],
                         phone_number_ids: Iterable[str] | None = None) -> int:
    """``settings apply``: for each number with a ``calling:`` block, validate it, GET Meta's
    current settings, print the diff and POST the config's settings unless ``dry_run``.

    Returns an exit status: 0 when every number is up to date (or would be), 1 otherwise."""
    wanted = set(phone_number_ids) if phone_number_ids is not None else None
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
        for warning in calling_warnings(number.calling, f"numbers[{i}].calling",
                                        config.media.connect_timeout_s):
            out.write(f"{name}: warning: {warning}\n")
        desired = to_meta_payload(number.calling)
        try:
            current = _unwrap(await graph.get_settings(pnid))
        except GraphError as exc:
            out.write(f"{name}: cannot read Meta's settings: {exc}\n")
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
            await graph.set_settings(pnid, desired)
        except GraphError as exc:
            if exc.timed_out:  # Meta may have applied them before the answer was lost
                out.write(f"{name}: no answer from Meta, applied or not (run settings apply "
                          f"again to see): {exc}\n")
            elif exc.unreachable:
                out.write(f"{name}: settings not sent: {exc}\n")
            else:
                out.write(f"{name}: Meta refused the settings: {exc}\n")
            status = 1
            continue
        out.write(f"{name}: applied (WhatsApp clients may take up to 7 days to show it)\n")
    return status
