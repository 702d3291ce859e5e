"""The webhook parser on every payload of tests/fixtures/payloads, and their variants."""

import json
from pathlib import Path

import pytest

from gateway.whatsapp.events import (
    CallEvent,
    MalformedWebhook,
    PermissionReply,
    StatusEvent,
    parse_body,
    parse_webhook,
)

PAYLOADS = Path(__file__).resolve().parents[1] / "fixtures" / "payloads"
WEBHOOKS = sorted(PAYLOADS.glob("webhook-*.json"))
WACID_IN = "wacid.TESTHBgLMTU1NTAwMDIyMjIVAgASGBRVSUMwMDAwMDAwMDAwMDAwMDAxAA=="


def load(name: str) -> bytes:
    return (PAYLOADS / name).read_bytes()


def test_reference_payloads_are_present():
    assert len(WEBHOOKS) >= 10, f"reference payloads not found under {PAYLOADS}"


@pytest.mark.parametrize("path", WEBHOOKS, ids=lambda p: p.name)
def test_every_reference_webhook_parses(path: Path):
    parsed = parse_body(path.read_bytes())
    assert parsed.events or parsed.ignored


def test_user_initiated_connect():
    (ev,) = parse_body(load("webhook-connect-user-initiated.json")).events
    assert isinstance(ev, CallEvent)
    assert ev.call_id == WACID_IN
    assert ev.event == "connect" and ev.direction == "USER_INITIATED"
    assert ev.phone_number_id == "106540000000002"
    assert ev.from_number == "15550002222" and ev.to_number == "15550001111"
    assert ev.profile_name == "Test User"
    assert ev.timestamp == 1767225600
    assert ev.sdp_type == "offer" and ev.sdp.startswith("v=0\r\n") and "a=ice-lite" in ev.sdp
    assert ev.cta_payload == "order-ON-12853"
    assert ev.deeplink_payload == "campaign=test-deeplink"


def test_business_initiated_connect_names_the_user_not_the_business():
    (ev,) = parse_body(load("webhook-connect-business-initiated.json")).events
    assert ev.direction == "BUSINESS_INITIATED" and ev.sdp_type == "answer"
    assert ev.biz_opaque_callback_data == "gw-outbound-0001"


def test_terminate_completed():
    (ev,) = parse_body(load("webhook-terminate-completed.json")).events
    assert ev.event == "terminate" and ev.status == "COMPLETED"
    assert ev.duration == 120 and ev.start_time == 1767225608 and ev.end_time == 1767225728
    assert ev.errors == ()


def test_terminate_variant_types_are_normalised_and_errors_merged():
    (ev,) = parse_body(load("webhook-terminate-failed-variant.json")).events
    assert ev.status == "FAILED"  # ["Failed"] -> FAILED
    assert ev.duration == 52  # "52" -> 52
    assert [e.code for e in ev.errors] == [138021]  # both levels, one entry
    assert ev.errors[0].message == "No media received"


def test_terminate_failed_carries_meta_error():
    (ev,) = parse_body(load("webhook-terminate-failed.json")).events
    assert ev.status == "FAILED"
    assert ev.errors and ev.errors[0].code is not None


@pytest.mark.parametrize("name,status", [("webhook-status-ringing.json", "RINGING"),
                                          ("webhook-status-accepted.json", "ACCEPTED"),
                                          ("webhook-status-rejected.json", "REJECTED")])
def test_statuses(name, status):
    (ev,) = parse_body(load(name)).events
    assert isinstance(ev, StatusEvent)
    assert ev.status == status and ev.recipient_id == "15550002222"
    assert ev.biz_opaque_callback_data == "gw-outbound-0001"


def test_permission_replies():
    (ev,) = parse_body(load("webhook-call-permission-reply.json")).events
    assert isinstance(ev, PermissionReply)
    assert ev.response == "accept" and ev.is_permanent is False
    assert ev.expiration_timestamp == 1767831000 and ev.response_source == "user_action"
    assert ev.user == "15550002222" and ev.context_id.startswith("wamid.")
    (auto,) = parse_body(load("webhook-call-permission-reply-auto-revoked.json")).events
    assert auto.response == "reject" and auto.response_source == "automatic"
    (cb,) = parse_body(load("webhook-call-permission-reply-automatic-callback.json")).events
    assert cb.response == "accept"


def test_settings_and_account_updates_are_reported_as_ignored():
    for name in ("webhook-account-settings-update.json",
                 "webhook-account-update-calling-restriction.json"):
        parsed = parse_body(load(name))
        assert parsed.events == [] and parsed.ignored


def test_batched_entries_and_changes_are_all_read():
    one = json.loads(load("webhook-terminate-completed.json"))
    change = one["entry"][0]["changes"][0]
    body = {"object": "whatsapp_business_account",
            "entry": [{"id": "1", "changes": [change, change]}, {"id": "2", "changes": [change]}]}
    assert len(parse_webhook(body).events) == 3


def test_unknown_fields_and_odd_types_do_not_break_parsing():
    body = {"entry": [{"changes": [{"field": "calls", "value": {
        "metadata": "not-a-dict", "contacts": "nope", "new_thing": [1, 2],
        "calls": [{"id": "wacid.X", "event": "TERMINATE", "timestamp": 17,
                   "status": "completed", "duration": "oops", "errors": "bad"},
                  "garbage", {"event": "connect"}]}}]}]}
    parsed = parse_webhook(body)
    (ev,) = parsed.events
    assert ev.event == "terminate" and ev.status == "COMPLETED" and ev.duration is None
    assert any("without id" in i for i in parsed.ignored)


@pytest.mark.parametrize("raw", [b"", b"not json", b"[1,2]", b'"str"', b"\xff\xfe"])
def test_malformed_bodies(raw):
    with pytest.raises(MalformedWebhook):
        parse_body(raw)


def test_dedup_key_distinguishes_events():
    (connect,) = parse_body(load("webhook-connect-user-initiated.json")).events
    (term,) = parse_body(load("webhook-terminate-completed.json")).events
    assert connect.dedup_key != term.dedup_key
    assert connect.dedup_key == parse_body(load("webhook-connect-user-initiated.json")) \
        .events[0].dedup_key
