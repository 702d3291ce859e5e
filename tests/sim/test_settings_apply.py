"""``whatsapp-gateway settings apply`` against the simulated Graph API: the diff first, nothing
sent with --dry-run, Meta's settings changed without it; bad hours refused naming the day."""

from __future__ import annotations

import asyncio
import os
import sys

import pytest
import yaml

from gateway.simulator.cloud_api import CloudApiSimulator

PNID = "106540000000002"


def config(graph_url: str, calling: dict, pnid: str = PNID) -> dict:
    return {
        "whatsapp": {"graph_url": graph_url, "access_token": "tok", "app_secret": "sec",
                     "verify_token": "ver"},
        "numbers": [{"phone_number_id": pnid, "context": "from-whatsapp", "calling": calling}],
        "asterisk": {"ami": {"username": "gateway", "secret": "x"}},
    }


async def cli(*args: str) -> tuple[int, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "gateway", *args, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT, env=os.environ.copy())
    out, _ = await asyncio.wait_for(proc.communicate(), 60)
    return proc.returncode, out.decode()


@pytest.fixture
async def sim():
    async with CloudApiSimulator(app_secret="sec", access_token="tok") as s:
        yield s


WANTED = {
    "status": "ENABLED",
    "call_icon_visibility": "DISABLE_ALL",
    "callback_permission_status": "DISABLED",
    "call_hours": {
        "status": "ENABLED", "timezone_id": "Europe/Lisbon",
        "weekly_operating_hours": [
            {"day_of_week": "MONDAY", "open_time": "0900", "close_time": "1200"},
            {"day_of_week": "MONDAY", "open_time": "1400", "close_time": "1800"},
            {"day_of_week": "FRIDAY", "open_time": "0900", "close_time": "1500"}],
        "holiday_schedule": [{"date": "2026-12-24", "start_time": "0000", "end_time": "2359"}],
    },
}


async def test_dry_run_prints_the_diff_and_changes_nothing(sim: CloudApiSimulator, tmp_path):
    path = tmp_path / "gateway.yaml"
    path.write_text(yaml.safe_dump(config(sim.url, WANTED)))
    code, out = await cli("settings", "apply", "--dry-run", "-c", str(path))
    assert code == 0, out
    assert "call_icon_visibility: DEFAULT -> DISABLE_ALL" in out
    assert "call_hours.timezone_id: America/Sao_Paulo -> Europe/Lisbon" in out
    assert "+ FRIDAY 0900-1500" in out and "- MONDAY 0800-1800" in out
    assert "dry run, nothing sent" in out
    assert [r.action for r in sim.requests] == ["get_settings"]

    code, out = await cli("settings", "apply", "-c", str(path))
    assert code == 0 and "applied" in out, out
    (post,) = [r for r in sim.requests if r.action == "set_settings"]
    assert post.body["calling"]["call_hours"]["timezone_id"] == "Europe/Lisbon"
    assert sim.number_settings(PNID)["calling"]["call_icon_visibility"] == "DISABLE_ALL"

    code, out = await cli("settings", "apply", "--dry-run", "-c", str(path))
    assert code == 0 and "up to date" in out, out


async def test_invalid_hours_are_refused_naming_the_day(sim: CloudApiSimulator, tmp_path):
    bad = {"call_hours": {"status": "ENABLED", "timezone_id": "UTC",
                          "weekly_operating_hours": [
                              {"day_of_week": "TUESDAY", "open_time": "0800",
                               "close_time": "1200"},
                              {"day_of_week": "TUESDAY", "open_time": "1100",
                               "close_time": "1500"}]}}
    path = tmp_path / "gateway.yaml"
    path.write_text(yaml.safe_dump(config(sim.url, bad)))
    code, out = await cli("settings", "apply", "--dry-run", "-c", str(path))
    assert code != 0
    assert "TUESDAY" in out and "overlap" in out, out
    assert sim.requests == []


async def test_an_overloaded_graph_is_retried_and_metas_refusal_is_reported(
        sim: CloudApiSimulator, tmp_path):
    """settings apply goes through the gateway's Graph client: Meta's transient answers (5xx,
    429 with Retry-After) are retried, a refusal is final and reported with Meta's code."""
    path = tmp_path / "gateway.yaml"
    path.write_text(yaml.safe_dump(config(sim.url, WANTED)))
    sim.fail_next("get_settings", 503)
    sim.fail_next("set_settings", 429, retry_after=0.1)
    code, out = await cli("settings", "apply", "-c", str(path))
    assert code == 0 and "applied" in out, out
    assert [(r.action, r.status) for r in sim.requests] == [
        ("get_settings", 503), ("get_settings", 200), ("set_settings", 429),
        ("set_settings", 200)]
    assert sim.number_settings(PNID)["calling"]["call_icon_visibility"] == "DISABLE_ALL"

    sim.requests.clear()
    unknown = "106540000000099"  # not a number of this account: Meta answers code 100
    path.write_text(yaml.safe_dump(config(sim.url, WANTED, pnid=unknown)))
    code, out = await cli("settings", "apply", "-c", str(path))
    assert code == 1
    assert (f"numbers[0] {unknown}: cannot read Meta's settings: Graph settings failed: "
            f"code 100 (HTTP 400)") in out, out
    assert [(r.action, r.status) for r in sim.requests] == [("get_settings", 400)]
