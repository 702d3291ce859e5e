"""Calling settings: validated locally with the offending day named, diffed, and obeyed."""

from __future__ import annotations

import copy
import datetime as dt
import io
import json
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
import yaml
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from gateway.calling_settings import is_open, route_for, validate_calling
from gateway.config import ConfigError, parse_config
from gateway.settings import apply_settings, diff, to_meta_payload
from gateway.whatsapp.graph import GraphClient

PAYLOADS = Path(__file__).resolve().parents[1] / "fixtures" / "payloads"
PATH = "numbers[0].calling"
SAO_PAULO = ZoneInfo("America/Sao_Paulo")


def good() -> dict:
    return {
        "status": "ENABLED",
        "call_icon_visibility": "DEFAULT",
        "callback_permission_status": "ENABLED",
        "call_hours": {
            "status": "ENABLED",
            "timezone_id": "America/Sao_Paulo",
            "weekly_operating_hours": [
                {"day_of_week": "MONDAY", "open_time": "0800", "close_time": "1200"},
                {"day_of_week": "MONDAY", "open_time": "1300", "close_time": "1800"},
                {"day_of_week": "TUESDAY", "open_time": "0800", "close_time": "1800"},
            ],
            "holiday_schedule": [
                {"date": "2026-12-25", "start_time": "0000", "end_time": "2359"},
            ],
        },
    }


def weekly(*entries: tuple[str, str, str]) -> dict:
    raw = good()
    raw["call_hours"]["weekly_operating_hours"] = [
        {"day_of_week": d, "open_time": o, "close_time": c} for d, o, c in entries]
    return raw


def test_the_reference_payload_is_valid() -> None:
    sample = json.loads((PAYLOADS / "request-settings-calling.json").read_text())["calling"]
    assert validate_calling(sample, PATH) == []
    assert validate_calling(good(), PATH) == []
    assert to_meta_payload(sample) == {"calling": sample}


def test_more_than_two_ranges_a_day_names_the_day() -> None:
    raw = weekly(("MONDAY", "0700", "0800"), ("MONDAY", "0900", "1000"),
                 ("MONDAY", "1100", "1200"), ("TUESDAY", "0800", "1800"))
    assert validate_calling(raw, PATH) == [
        f"{PATH}.call_hours.weekly_operating_hours: MONDAY has 3 ranges, at most 2"]


def test_overlapping_ranges_refused() -> None:
    raw = weekly(("WEDNESDAY", "1300", "1800"), ("WEDNESDAY", "0800", "1330"))
    assert validate_calling(raw, PATH) == [
        f"{PATH}.call_hours.weekly_operating_hours: WEDNESDAY 0800-1330 overlaps 1300-1800"]
    touching = weekly(("WEDNESDAY", "0800", "1300"), ("WEDNESDAY", "1300", "1800"))
    assert validate_calling(touching, PATH) == []


def test_close_before_open_and_bad_times_name_entry_and_day() -> None:
    raw = weekly(("FRIDAY", "1800", "0800"), ("SATURDAY", "8:00", "2400"),
                 ("Sunday", "0900", "1000"))
    errors = validate_calling(raw, PATH)
    wpath = f"{PATH}.call_hours.weekly_operating_hours"
    assert errors == [
        f"{wpath}[0]: FRIDAY 1800-0800: close_time must be after open_time "
        "(ranges cannot cross midnight; split them over two days)",
        f"{wpath}[1].open_time: SATURDAY: '8:00' is not HHMM (24 h, e.g. \"0800\" or \"1730\")",
        f"{wpath}[1].close_time: SATURDAY: '2400' is not HHMM (24 h, e.g. \"0800\" or \"1730\")",
        f"{wpath}[2].day_of_week: 'Sunday' is not a day; use one of MONDAY, TUESDAY, "
        "WEDNESDAY, THURSDAY, FRIDAY, SATURDAY, SUNDAY",
    ]


def test_yaml_octal_trap_is_explained() -> None:
    raw = yaml.safe_load("""
        status: ENABLED
        call_hours:
          status: ENABLED
          timezone_id: Europe/Berlin
          weekly_operating_hours:
            - {day_of_week: MONDAY, open_time: 0700, close_time: 1700}
          holiday_schedule:
            - {date: 2026-12-25, start_time: "0000", end_time: 2359}
    """)
    errors = validate_calling(raw, PATH)
    assert len(errors) == 1 and "MONDAY: 448 is not HHMM: quote times before 10:00" in errors[0]
    raw["call_hours"]["weekly_operating_hours"][0]["open_time"] = "0700"
    assert validate_calling(raw, PATH) == []
    hours = to_meta_payload(raw)["calling"]["call_hours"]
    assert hours["weekly_operating_hours"][0]["close_time"] == "1700"
    assert hours["holiday_schedule"][0] == {"date": "2026-12-25", "start_time": "0000",
                                            "end_time": "2359"}


def test_more_than_20_holidays_refused() -> None:
    raw = good()
    raw["call_hours"]["holiday_schedule"] = [
        {"date": f"2026-01-{d:02d}", "start_time": "0000", "end_time": "2359"}
        for d in range(1, 22)]
    assert validate_calling(raw, PATH) == [
        f"{PATH}.call_hours.holiday_schedule: 21 holidays, at most 20"]


def test_other_problems() -> None:
    raw = good()
    raw["status"] = "ON"
    raw["call_hours"]["timezone_id"] = "Mars/Olympus"
    raw["call_hours"]["holiday_schedule"][0]["date"] = "2026-02-30"
    raw["srtp_key_exchange_protocol"] = "SDES"
    raw["sip"] = {"status": "ENABLED"}
    raw["call_hour"] = {}
    errors = "\n".join(validate_calling(raw, PATH))
    for expected in (f"{PATH}.status: must be one of ENABLED, DISABLED, got 'ON'",
                     f"{PATH}.call_hours.timezone_id: 'Mars/Olympus' is not an IANA time zone",
                     f"{PATH}.call_hours.holiday_schedule[0].date: '2026-02-30' is not a date",
                     f"{PATH}.srtp_key_exchange_protocol: must be DTLS",
                     f"{PATH}.sip: status must be DISABLED",
                     f"{PATH}.call_hour: unknown key (typo?)"):
        assert expected in errors


def test_is_open_across_time_zone_and_holiday() -> None:
    hours = good()["call_hours"]
    # Monday 2026-12-21 11:30 UTC is 08:30 in São Paulo (UTC-3): open.
    assert is_open(hours, dt.datetime(2026, 12, 21, 11, 30, tzinfo=dt.UTC))
    # Monday 10:30 UTC is 07:30 there: still closed, although 10:30 would be open in UTC.
    assert not is_open(hours, dt.datetime(2026, 12, 21, 10, 30, tzinfo=dt.UTC))
    # Lunch break between the two Monday ranges; close_time itself is closed.
    assert not is_open(hours, dt.datetime(2026, 12, 21, 12, 30, tzinfo=SAO_PAULO))
    assert not is_open(hours, dt.datetime(2026, 12, 21, 12, 0, tzinfo=SAO_PAULO))
    assert is_open(hours, dt.datetime(2026, 12, 21, 17, 59, tzinfo=SAO_PAULO))
    # Tuesday 2026-12-22 open. With Friday hours added, Christmas 2026 (a Friday) stays closed
    # as a holiday, while Friday 2027-12-24 is an ordinary open Friday.
    assert is_open(hours, dt.datetime(2026, 12, 22, 9, 0, tzinfo=SAO_PAULO))
    hours["weekly_operating_hours"].append(
        {"day_of_week": "FRIDAY", "open_time": "0800", "close_time": "1800"})
    assert not is_open(hours, dt.datetime(2026, 12, 25, 10, 0, tzinfo=SAO_PAULO))
    assert is_open(hours, dt.datetime(2027, 12, 24, 10, 0, tzinfo=SAO_PAULO))
    # 2026-12-25 12:00 UTC is 09:00 of the holiday in São Paulo, inside Friday's hours.
    assert not is_open(hours, dt.datetime(2026, 12, 25, 12, 0, tzinfo=dt.UTC))
    # No call hours or disabled: always open.
    assert is_open({}, dt.datetime(2026, 12, 25, 3, 0, tzinfo=dt.UTC))
    assert is_open({"status": "DISABLED"}, dt.datetime(2026, 12, 25, 3, 0, tzinfo=dt.UTC))
    with pytest.raises(ValueError, match="timezone-aware"):
        is_open(hours, dt.datetime(2026, 12, 21, 9, 0))


def config(calling: dict, graph_url: str = "https://graph.facebook.com/v23.0",
           closed_context: str | None = "whatsapp-closed"):
    number = {"phone_number_id": "106540000000002", "context": "from-whatsapp",
              "calling": calling}
    if closed_context:
        number["closed_context"] = closed_context
    return parse_config({
        "whatsapp": {"graph_url": graph_url, "access_token": "TOKEN-abc",
                     "app_secret": "s", "verify_token": "v"},
        "numbers": [number],
        "asterisk": {"ami": {"username": "gw", "secret": "x"}},
    }, env={})


def test_route_for_sends_closed_calls_to_the_closed_context() -> None:
    number = config(good()).numbers[0]
    monday_morning = dt.datetime(2026, 12, 21, 9, 0, tzinfo=SAO_PAULO)
    sunday = dt.datetime(2026, 12, 20, 9, 0, tzinfo=SAO_PAULO)
    assert route_for(number, monday_morning).context == "from-whatsapp"
    closed = route_for(number, sunday)
    assert (closed.context, closed.extension, closed.open) == ("whatsapp-closed", "s", False)
    no_closed = route_for(config(good(), closed_context=None).numbers[0], sunday)
    assert (no_closed.context, no_closed.open) == ("from-whatsapp", False)


def test_diff_against_metas_settings() -> None:
    current = json.loads((PAYLOADS / "response-get-settings-calling.json").read_text())
    desired = good()
    desired["call_hours"].pop("holiday_schedule")
    desired["callback_permission_status"] = "DISABLED"
    desired["call_icons"] = {"restrict_to_user_countries": ["BR"]}
    assert diff(current, to_meta_payload(desired)) == [
        "callback_permission_status: ENABLED -> DISABLED",
        "call_hours.weekly_operating_hours:",
        "  - MONDAY 0800-1800",
        "  + MONDAY 0800-1200",
        "  + MONDAY 1300-1800",
        "  + TUESDAY 0800-1800",
        "call_icons.restrict_to_user_countries:",
        "  + BR",
        "call_hours.holiday_schedule:",
        "  - 2026-12-25 0000-2359",
    ]
    same = copy.deepcopy(current["calling"])
    for key in ("sip", "restrictions", "audio"):
        same.pop(key)
    assert diff(current, {"calling": same}) == []


@pytest.mark.parametrize("dry_run", [True, False])
async def test_apply_settings_shows_diff_and_posts_unless_dry_run(dry_run: bool) -> None:
    current = json.loads((PAYLOADS / "response-get-settings-calling.json").read_text())
    seen: list[tuple[str, str, object]] = []

    async def settings(request: web.Request) -> web.Response:
        body = await request.json() if request.method == "POST" else None
        seen.append((request.method, request.headers["Authorization"], body))
        if request.method == "GET":
            return web.json_response(current)
        return web.json_response({"success": True})

    app = web.Application()
    app.router.add_route("*", "/v23.0/106540000000002/settings", settings)
    async with TestClient(TestServer(app)) as client:
        url = str(client.make_url("/v23.0"))
        cfg = config(good(), graph_url=url)
        out = io.StringIO()
        async with GraphClient(cfg.whatsapp) as graph:
            status = await apply_settings(cfg, graph, dry_run, out)
    text = out.getvalue()
    assert status == 0
    assert "  - MONDAY 0800-1800" in text and "  + TUESDAY 0800-1800" in text
    assert "RESTRICTED_BUSINESS_INITIATED_CALLING until 2026-01-08" in text
    assert "TOKEN-abc" not in text
    assert seen[0][:2] == ("GET", "Bearer TOKEN-abc")
    if dry_run:
        assert [s[0] for s in seen] == ["GET"] and "dry run, nothing sent" in text
    else:
        assert [s[0] for s in seen] == ["GET", "POST"]
        assert seen[1][2] == to_meta_payload(good())
        assert "applied" in text


async def test_apply_settings_reports_metas_refusal_and_invalid_config() -> None:
    async def settings(request: web.Request) -> web.Response:
        if request.method == "GET":
            return web.json_response({"calling": {"status": "DISABLED"}})
        return web.json_response({"error": {"code": 138015, "message": "messaging limit"}},
                                 status=400)

    app = web.Application()
    app.router.add_route("*", "/v23.0/106540000000002/settings", settings)
    async with TestClient(TestServer(app)) as client:
        cfg = config(good(), graph_url=str(client.make_url("/v23.0")))
        out = io.StringIO()
        async with GraphClient(cfg.whatsapp) as graph:
            assert await apply_settings(cfg, graph, False, out) == 1
        assert "status: DISABLED -> ENABLED" in out.getvalue()
        assert ("Meta refused the settings: Graph settings failed: code 138015 (HTTP 400): "
                "messaging limit") in out.getvalue()

        # Invalid hours never get this far: the config itself is refused at load, naming the
        # offending day (apply_settings re-validates for configs built in code).
        with pytest.raises(ConfigError, match="MONDAY 0900-0800"):
            config(weekly(("MONDAY", "0900", "0800")), graph_url=str(client.make_url("/v23.0")))
