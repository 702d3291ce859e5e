"""The 2026 calling settings in the YAML (voicemail, call_icons, audio codecs) and
numbers[].recording / crm_events: validated with the key named, warned, diffed, applied."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest

from gateway.calling_settings import calling_warnings, validate_calling, voicemail_timeout
from gateway.config import ConfigError, Secret, WhatsAppSettings, parse_config
from gateway.settings import announcement_problem, apply_settings, diff, to_meta_payload
from gateway.simulator.cloud_api import CloudApiSimulator
from gateway.simulator.media import ogg_opus
from gateway.whatsapp.graph import GraphClient, GraphError

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "payloads"
PATH = "numbers[0].calling"
VOICEMAIL = {"status": "ENABLED", "triggers": ["TIMEOUT"],
             "audio": {"default": {"announcement_media_id": 938884519013664,
                                   "timeout_seconds": 25}}}


def config(number: dict | None = None, graph_url: str = "https://graph.facebook.com/v23.0",
           **sections):
    return parse_config({
        "whatsapp": {"graph_url": graph_url, "access_token": "TOKEN-abc", "app_secret": "s",
                     "verify_token": "v"},
        "numbers": [{"phone_number_id": "106540000000002", "context": "from-whatsapp",
                     **(number or {})}],
        "asterisk": {"ami": {"username": "gw", "secret": "x"}},
        **sections,
    }, env={"CRM_SECRET": "crm-secret"})


def test_the_reference_request_with_icons_and_codecs_is_valid():
    calling = json.loads((FIXTURES / "request-settings-calling.json").read_text())["calling"]
    assert validate_calling(calling, PATH) == []
    assert validate_calling({**calling, "voicemail": VOICEMAIL}, PATH) == []
    assert voicemail_timeout({"voicemail": VOICEMAIL}) == 25


def test_voicemail_problems_name_the_key():
    def errors(voicemail):
        return validate_calling({"voicemail": voicemail}, PATH)

    assert errors({"status": "ON"}) == [
        f"{PATH}.voicemail.status: must be ENABLED or DISABLED, got 'ON'"]
    assert errors({"status": "ENABLED", "triggers": ["BUSY"]}) == [
        f"{PATH}.voicemail.triggers: must list REJECT and/or TIMEOUT, got ['BUSY']"]
    assert errors({"status": "ENABLED", "audio": {"default": {"timeout_seconds": 31}}}) == [
        f"{PATH}.voicemail.audio.default.timeout_seconds: must be a whole number of seconds "
        f"0-30, got 31"]
    assert "announcement_media_id" in errors(
        {"status": "ENABLED", "audio": {"default": {"announcement_media_id": "hello.ogg"}}})[0]
    assert errors({"status": "ENABLED", "timeout": 5}) == [
        f"{PATH}.voicemail.timeout: unknown key (typo?)"]
    assert validate_calling({"audio": {"additional_codecs": ["OPUS"]}}, PATH) == [
        f"{PATH}.audio.additional_codecs: must list PCMA and/or PCMU (Opus is always on), "
        f"got ['OPUS']"]
    assert "ISO 3166" in validate_calling(
        {"call_icons": {"restrict_to_user_countries": ["Brazil"]}}, PATH)[0]
    with pytest.raises(ConfigError, match=r"numbers\[0\]\.calling\.voicemail\.status"):
        config({"calling": {"voicemail": {"status": "YES"}}})


def test_voicemail_warnings():
    hours = {"status": "ENABLED", "timezone_id": "America/Sao_Paulo",
             "weekly_operating_hours": [{"day_of_week": "MONDAY", "open_time": "0800",
                                         "close_time": "1800"}]}
    assert calling_warnings({"voicemail": VOICEMAIL, "call_hours": hours}, PATH) == [
        f"{PATH}.voicemail: call_hours are ENABLED too; Meta asks to turn call hours off when "
        f"voicemail is enabled"]
    no_timeout = {"status": "ENABLED", "triggers": ["TIMEOUT"]}
    assert voicemail_timeout({"voicemail": no_timeout}) is None
    assert "TIMEOUT without audio.default.timeout_seconds" in \
        calling_warnings({"voicemail": no_timeout}, PATH)[0]
    short = {**VOICEMAIL, "audio": {"default": {"timeout_seconds": 5}}}
    assert "shorter than media.connect_timeout (20 s)" in \
        calling_warnings({"voicemail": short}, PATH, 20.0)[0]
    assert calling_warnings({"voicemail": VOICEMAIL}, PATH, 20.0) == []


def test_diff_shows_the_new_keys():
    current = json.loads((FIXTURES / "response-get-settings-calling.json").read_text())
    desired = {"voicemail": VOICEMAIL, "audio": {"additional_codecs": ["PCMU"]},
               "call_icons": {"restrict_to_user_countries": ["BR", "IN"]}}
    assert diff(current, to_meta_payload(desired)) == [
        "voicemail.status: (not set) -> ENABLED",
        "voicemail.triggers:",
        "  + TIMEOUT",
        "voicemail.audio.default.announcement_media_id: (not set) -> 938884519013664",
        "voicemail.audio.default.timeout_seconds: (not set) -> 25",
        "audio.additional_codecs:",
        "  - PCMA",
        "call_icons.restrict_to_user_countries:",
        "  + BR",
        "  + IN",
    ]
    # An id Meta writes as a string is the same id.
    current["calling"]["voicemail"] = json.loads(json.dumps(VOICEMAIL))
    current["calling"]["voicemail"]["audio"]["default"]["announcement_media_id"] = \
        "938884519013664"
    assert diff(current, to_meta_payload({"voicemail": VOICEMAIL})) == []


async def test_settings_apply_against_the_simulator_posts_voicemail_and_warns():
    sim = CloudApiSimulator(app_secret="s", access_token="TOKEN-abc")
    await sim.start()
    try:
        hours = {"status": "ENABLED", "timezone_id": "America/Sao_Paulo",
                 "weekly_operating_hours": [{"day_of_week": "MONDAY", "open_time": "0800",
                                             "close_time": "1800"}]}
        calling = {"voicemail": VOICEMAIL, "call_hours": hours,
                   "audio": {"additional_codecs": ["PCMU"]},
                   "call_icons": {"restrict_to_user_countries": ["BR"]}}
        cfg = config({"calling": calling}, graph_url=sim.url)
        out = io.StringIO()
        async with GraphClient(cfg.whatsapp) as graph:
            assert await apply_settings(cfg, graph, False, out) == 0
            text = out.getvalue()
            assert "warning: numbers[0].calling.voicemail: call_hours are ENABLED too" in text
            assert "voicemail.audio.default.timeout_seconds: (not set) -> 25" in text
            assert "applied" in text
            stored = sim.number_settings("106540000000002")["calling"]
            assert stored["voicemail"] == VOICEMAIL
            assert stored["audio"] == {"additional_codecs": ["PCMU"]}
            assert stored["call_icons"] == {"restrict_to_user_countries": ["BR"]}
            again = io.StringIO()
            assert await apply_settings(cfg, graph, False, again) == 0
            assert "up to date" in again.getvalue()
    finally:
        await sim.close()


def test_recording_and_crm_events_config():
    cfg = config({"recording": {"purpose": "Quality assurance", "transcription": True,
                                "directions": ["inbound"]}},
                 crm_events={"urls": ["http://127.0.0.1:9/hook"], "secret": "${CRM_SECRET}"},
                 store={"media_dir": "/var/lib/gw/media"})
    rec = cfg.numbers[0].recording
    assert rec.objects("inbound") == {
        "recording": {"status": "ENABLED", "purpose": "Quality assurance",
                      "announcement_language": "en_US"},
        "transcription": {"status": "ENABLED", "purpose": "Quality assurance",
                          "announcement_language": "en_US"}}
    assert rec.objects("outbound") == {}
    assert cfg.crm_events.secret.reveal() == "crm-secret" and "crm-secret" not in repr(cfg)
    assert cfg.store.media_dir == "/var/lib/gw/media"

    with pytest.raises(ConfigError) as info:
        config({"recording": {"purpose": "x" * 251, "announcement_language": "English",
                              "audio": "yes"}},
               crm_events={"urls": ["ftp://crm"], "queue_size": 0})
    problems = info.value.problems
    assert "numbers[0].recording.purpose: Meta allows at most 250 characters, got 251" in problems
    assert any(p.startswith("numbers[0].recording.announcement_language:") for p in problems)
    assert "numbers[0].recording.audio: must be true or false, got 'yes'" in problems
    assert "crm_events.urls[0]: must be an http(s) URL, got 'ftp://crm'" in problems
    assert "crm_events.queue_size: must be between 1 and 1000000, got 0" in problems
    with pytest.raises(ConfigError, match="crm_events.secret: missing"):
        config(crm_events={"urls": ["http://127.0.0.1:9/hook"]})


async def test_the_voicemail_announcement_is_checked_and_uploaded():
    good, long = ogg_opus(3.0), ogg_opus(61.0)
    assert announcement_problem(good) is None
    assert "61.0 s long" in announcement_problem(long)
    assert "not an Ogg Opus file" in announcement_problem(b"RIFF....WAVEfmt ")
    sim = CloudApiSimulator(app_secret="s", access_token="TOKEN-abc")
    await sim.start()
    graph = GraphClient(WhatsAppSettings(graph_url=sim.url, access_token=Secret("TOKEN-abc"),
                                         app_secret=Secret("s"), verify_token=Secret("v")))
    try:
        media_id = await graph.upload_media("106540000000002", good, "audio/ogg", "vm.ogg",
                                            use_case="call_voicemail_announcement")
        assert sim.media[media_id].content == good
        assert sim.media[media_id].use == "call_voicemail_announcement"
        with pytest.raises(GraphError) as info:  # Meta checks too
            await graph.upload_media("106540000000002", long, "audio/ogg", "vm.ogg",
                                     use_case="call_voicemail_announcement")
        assert info.value.code == 100 and "shorter than 60 s" in info.value.details
    finally:
        await graph.close()
        await sim.close()
