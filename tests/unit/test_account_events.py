"""account_update / account_settings_update / *_available / voicemail payloads parsed, and
what AccountHealth and PickupRate make of them (docs/meta-2026-settings-events.md §2-4)."""

from __future__ import annotations

import json
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from gateway.account_health import AccountHealth, PickupRate
from gateway.calls.record import CallRecord, Direction
from gateway.config import parse_config
from gateway.metrics import GatewayMetrics
from gateway.whatsapp.events import (
    AccountSettingsUpdate,
    AccountUpdate,
    CallEvent,
    CallMediaAvailable,
    Voicemail,
    parse_body,
)

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "payloads"
WACID = "wacid.TESTHBgLMTU1NTAwMDIyMjIVAgASGBRVSUMwMDAwMDAwMDAwMDAwMDAxAA=="
PNID = "106540000000002"


def load(name: str) -> bytes:
    return (FIXTURES / name).read_bytes()


def config():
    return parse_config({
        "whatsapp": {"graph_url": "https://graph.facebook.com/v23.0", "access_token": "t",
                     "app_secret": "s", "verify_token": "v"},
        "numbers": [{"phone_number_id": PNID, "display_number": "+15550001111",
                     "context": "from-whatsapp"}],
        "asterisk": {"ami": {"username": "gw", "secret": "x"}},
    }, env={})


def sample_value(metrics: GatewayMetrics, name: str, **labels: str) -> float | None:
    text = metrics.exposition().decode()
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                return s.value
    return None


def test_low_pickup_warning():
    (ev,) = parse_body(load("webhook-account-update-low-pickup.json")).events
    assert isinstance(ev, AccountUpdate)
    assert ev.event == "ACCOUNT_VIOLATION" and ev.phone_number == "15550001111"
    assert ev.violation_type == "USER_INITIATED_CALLS_LOW_PICKUP_RATE"
    assert ev.remediation.startswith("Please identify") and ev.timestamp == 1780000000


def test_calling_restriction_with_expiry():
    (ev,) = parse_body(load("webhook-account-update-calling-restriction.json")).events
    assert ev.event == "ACCOUNT_RESTRICTION"
    (r,) = ev.restrictions
    assert r.restriction_type == "RESTRICTED_BUSINESS_INITIATED_CALLING"
    assert r.expiration == 1767830400


def test_account_settings_update():
    (ev,) = parse_body(load("webhook-account-settings-update.json")).events
    assert isinstance(ev, AccountSettingsUpdate)
    assert ev.phone_number_id == PNID and ev.kind == "phone_number_settings"
    assert ev.calling["sip"]["status"] == "DISABLED" and ev.timestamp == 1767225600
    body = json.loads(load("webhook-account-settings-update.json"))
    body["entry"][0]["changes"][0]["value"]["phone_number_settings"]["calling"] = None
    (null,) = parse_body(json.dumps(body).encode()).events
    assert null.calling is None  # "is null otherwise" (§4)


def test_recording_available_and_voicemail():
    (rec,) = parse_body(load("webhook-call-recording-available.json")).events
    assert isinstance(rec, CallMediaAvailable)
    assert (rec.call_id, rec.kind, rec.media_id) == (WACID, "recording", "1002764438271669")
    assert rec.url.startswith("https://") and rec.mime_type == "audio/ogg; codecs=opus"
    assert rec.user == "15550002222" and rec.phone_number_id == PNID
    body = json.loads(load("webhook-call-recording-available.json"))
    call = body["entry"][0]["changes"][0]["value"]["calls"][0]
    call["event"] = "call_transcription_available"
    call["call_transcript"] = {"document": call.pop("call_recording")["audio"]}
    (trn,) = parse_body(json.dumps(body).encode()).events
    assert trn.kind == "transcription" and trn.media_id == "1002764438271669"

    (vm,) = parse_body(load("webhook-messages-voicemail.json")).events
    assert isinstance(vm, Voicemail)
    assert vm.call_id == WACID and vm.media_id == "1002764438271669"
    assert vm.user == "15550002222" and vm.timestamp == 1780000090


def test_an_ordinary_audio_message_is_not_a_voicemail():
    body = json.loads(load("webhook-messages-voicemail.json"))
    body["entry"][0]["changes"][0]["value"]["messages"][0]["id"] = "wamid.HBgLMTU1"
    parsed = parse_body(json.dumps(body).encode())
    assert parsed.events == [] and parsed.ignored == ["message of type audio"]


def test_a_body_wrapped_in_a_list_is_read():
    """Meta's pickup-rate samples show the body inside [ ... ] (§4)."""
    raw = b"[" + load("webhook-account-update-low-pickup.json") + b"]"
    (ev,) = parse_body(raw).events
    assert isinstance(ev, AccountUpdate)


def test_account_health_keeps_what_is_in_force_for_readyz_and_metrics():
    now = [1767225600.0]
    metrics = GatewayMetrics.from_config(config(), process=False)
    health = AccountHealth(config(), metrics, clock=lambda: now[0])
    for name in ("webhook-account-update-low-pickup.json",
                 "webhook-account-update-calling-restriction.json",
                 "webhook-account-settings-update.json"):
        for ev in parse_body(load(name)).events:
            assert health.handle(ev)
    info = health.info()[PNID]
    assert info["warnings"][0]["type"] == "USER_INITIATED_CALLS_LOW_PICKUP_RATE"
    assert info["restrictions"] == [{"type": "RESTRICTED_BUSINESS_INITIATED_CALLING",
                                     "until": "2026-01-08T00:00:00Z", "remediation": ""}]
    assert info["calling_settings"]["status"] == "ENABLED"
    assert sample_value(metrics, "whatsapp_gateway_account_updates_total",
                        event="ACCOUNT_VIOLATION",
                        type="USER_INITIATED_CALLS_LOW_PICKUP_RATE") == 1
    restricted = {"phone_number_id": PNID,
                  "restriction_type": "RESTRICTED_BUSINESS_INITIATED_CALLING"}
    assert sample_value(metrics, "whatsapp_gateway_account_restricted", **restricted) == 1
    now[0] = 1767830400.0 + 1  # past the expiration
    assert sample_value(metrics, "whatsapp_gateway_account_restricted", **restricted) == 0
    assert "restrictions" not in health.info()[PNID]


def test_call_button_hidden_has_no_expiry():
    metrics = GatewayMetrics.from_config(config(), process=False)
    health = AccountHealth(config(), metrics)
    body = json.loads(load("webhook-account-update-calling-restriction.json"))
    body["entry"][0]["changes"][0]["value"]["restriction_info"] = [{
        "restriction_type": "RESTRICTED_USER_INITIATED_CALLING_CALL_BUTTON_HIDDEN",
        "remediation": "Turn it back on in WhatsApp Manager"}]
    (ev,) = parse_body(json.dumps(body).encode()).events
    health.handle(ev)
    info = health.info()[PNID]
    assert info["call_button_hidden"] is True and info["restrictions"][0]["until"] is None


def test_pickup_ratio_over_a_sliding_day():
    now = [1000.0]
    metrics = GatewayMetrics.from_config(config(), process=False)
    pickup = PickupRate(metrics, window_s=3600, clock=lambda: now[0])
    assert sample_value(metrics, "whatsapp_gateway_inbound_pickup_ratio",
                        phone_number_id=PNID) == 1.0
    for i, answered in enumerate([True, False, False, True]):
        record = CallRecord(wacid=f"wacid.{i}", direction=Direction.INBOUND,
                            phone_number_id=PNID, from_number="15550002222", to_number="1")
        record.answered_at = 1.0 if answered else None
        (pickup.call_ended if answered else pickup.call_rejected)(record)
        pickup.call_ended(record)  # told twice: counted once
    assert sample_value(metrics, "whatsapp_gateway_inbound_pickup_ratio",
                        phone_number_id=PNID) == 0.5
    assert sample_value(metrics, "whatsapp_gateway_inbound_calls_offered_total",
                        phone_number_id=PNID) == 4
    outbound = CallRecord(wacid="wacid.out", direction=Direction.OUTBOUND,
                          phone_number_id=PNID, from_number="1", to_number="15550002222")
    pickup.call_ended(outbound)  # not a call Meta counts for the pickup rate
    assert sample_value(metrics, "whatsapp_gateway_inbound_calls_offered_total",
                        phone_number_id=PNID) == 4
    now[0] += 3601
    assert sample_value(metrics, "whatsapp_gateway_inbound_pickup_ratio",
                        phone_number_id=PNID) == 1.0


def test_a_number_without_display_number_is_learnt_from_its_calls():
    cfg = parse_config({
        "whatsapp": {"graph_url": "https://graph.facebook.com/v23.0", "access_token": "t",
                     "app_secret": "s", "verify_token": "v"},
        "numbers": [{"phone_number_id": PNID, "context": "from-whatsapp"}],
        "asterisk": {"ami": {"username": "gw", "secret": "x"}},
    }, env={})
    health = AccountHealth(cfg, GatewayMetrics.from_config(cfg, process=False))
    (warning,) = parse_body(load("webhook-account-update-low-pickup.json")).events
    health.handle(warning)
    assert list(health.info()) == ["+15550001111"]  # not known yet
    (terminate,) = parse_body(load("webhook-call-recording-available.json")).events
    connect = CallEvent(call_id=terminate.call_id, event="connect", direction="USER_INITIATED",
                        phone_number_id=PNID, display_phone_number="15550001111",
                        from_number="15550002222", to_number="15550001111", timestamp=0)
    assert health.handle(connect) is False  # the call goes on to the call manager
    health.handle(warning)
    assert PNID in health.info()
