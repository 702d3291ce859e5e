"""The outbound permission ledger: Meta's §10 rules enforced locally, Meta's answers winning."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from gateway.calls.permissions import (
    DAY,
    SANDBOX_LIMITS,
    WEEK,
    Decision,
    Limits,
    PermissionLedger,
    business_country_block,
    period_seconds,
    request_permission,
    send_call_button,
)
from gateway.config import Secret, WhatsAppSettings
from gateway.whatsapp.events import PermissionReply, parse_body
from gateway.whatsapp.graph import GraphClient, GraphError
from gateway.whatsapp.messages import permission_request_body, voice_call_body

PAYLOADS = Path(__file__).resolve().parents[1] / "fixtures" / "payloads"
PNID = "106540000000002"
USER = "15550002222"
T0 = 1_767_225_600.0  # 2026-01-01 00:00:00 UTC


def payload(name: str) -> Any:
    return json.loads((PAYLOADS / name).read_text())


def reply(response: str = "accept", *, at: float = T0, permanent: bool = False,
          expires: int | None = None, source: str = "user_action",
          context: str | None = None) -> PermissionReply:
    return PermissionReply(phone_number_id=PNID, user=USER, message_id=f"wamid.reply{at}",
                           timestamp=int(at), response=response, is_permanent=permanent,
                           expiration_timestamp=expires, response_source=source,
                           context_id=context)


@pytest.fixture
async def ledger(ledger_at: str | Path):
    led = await PermissionLedger.open(ledger_at)
    try:
        yield led
    finally:
        await led.close()


class FakeGraph:
    """Stands in for GraphClient.send_message: records bodies, answers ids or raises."""

    def __init__(self, error_code: int | None = None):
        self.sent: list[tuple[str, dict]] = []
        self.error_code = error_code

    async def send_message(self, pnid: str, body: dict) -> str:
        self.sent.append((pnid, body))
        if self.error_code is not None:
            raise GraphError("messages", "refused", code=self.error_code, http_status=400)
        return f"wamid.TEST{len(self.sent)}"


# ---- permission requests --------------------------------------------------------------------


async def test_second_request_within_24h_refused_with_next_time(ledger: PermissionLedger):
    graph = FakeGraph()
    decision, mid = await request_permission(graph, ledger, PNID, USER, "May we call?", now=T0)
    assert decision.allowed and mid == "wamid.TEST1"
    decision, mid = await request_permission(graph, ledger, PNID, USER, "again?", now=T0 + 3600)
    assert not decision.allowed and mid is None
    assert decision.reason == "limit_requests_24h" and decision.meta_code == 138009
    assert decision.next_allowed_at == T0 + DAY
    assert len(graph.sent) == 1, "a locally refused request must not reach Meta"
    assert (await ledger.can_request(PNID, USER, now=T0 + DAY)).allowed


async def test_third_request_within_7_days_refused_with_next_time(ledger: PermissionLedger):
    graph = FakeGraph()
    assert (await request_permission(graph, ledger, PNID, USER, None, now=T0))[0].allowed
    assert (await request_permission(graph, ledger, PNID, USER, None, now=T0 + 2 * DAY))[0].allowed
    decision, _ = await request_permission(graph, ledger, PNID, USER, None, now=T0 + 4 * DAY)
    assert decision.reason == "limit_requests_7d" and decision.meta_code == 138009
    assert decision.next_allowed_at == T0 + WEEK
    assert "next request allowed" in decision.message
    assert len(graph.sent) == 2
    # One second after the 24 h limit frees the 7 d limit still holds: the reason says so.
    decision = await ledger.can_request(PNID, USER, now=T0 + 3 * DAY)
    assert decision.reason == "limit_requests_7d"
    assert (await ledger.can_request(PNID, USER, now=T0 + WEEK)).allowed


async def test_connected_call_resets_request_counters(ledger: PermissionLedger):
    await ledger.record_request_sent(PNID, USER, "wamid.a", now=T0)
    await ledger.record_request_sent(PNID, USER, "wamid.b", now=T0 + DAY + 1)
    assert not (await ledger.can_request(PNID, USER, now=T0 + 2 * DAY)).allowed
    await ledger.apply_reply(reply(at=T0 + DAY + 60))
    await ledger.record_call_result(PNID, USER, answered=True, now=T0 + DAY + 120)
    assert (await ledger.can_request(PNID, USER, now=T0 + DAY + 180)).allowed


async def test_unanswered_call_does_not_reset_request_counters(ledger: PermissionLedger):
    await ledger.record_request_sent(PNID, USER, "wamid.a", now=T0)
    await ledger.apply_reply(reply(at=T0 + 60))
    await ledger.record_call_result(PNID, USER, answered=False, now=T0 + 120)
    assert (await ledger.can_request(PNID, USER, now=T0 + 180)).reason == "limit_requests_24h"


async def test_user_initiated_connected_call_resets_request_counters(ledger: PermissionLedger):
    await ledger.record_request_sent(PNID, USER, "wamid.a", now=T0)
    await ledger.record_user_call(PNID, USER, now=T0 + 60)
    assert (await ledger.can_request(PNID, USER, now=T0 + 120)).allowed


async def test_request_refused_when_permanent_permission_exists(ledger: PermissionLedger):
    await ledger.apply_reply(reply(permanent=True))
    graph = FakeGraph()
    decision, mid = await request_permission(graph, ledger, PNID, USER, "hi", now=T0 + 60)
    assert (decision.allowed, decision.reason, decision.meta_code, mid) == \
        (False, "permanent_exists", 138017, None)
    assert graph.sent == []


async def test_request_body_matches_reference_and_is_recorded(ledger: PermissionLedger):
    graph = FakeGraph()
    text = "May we call you about order ON-12853?"
    _, mid = await request_permission(graph, ledger, PNID, USER, text, now=T0)
    reference = payload("request-message-call-permission-request.json")
    reference.pop("messaging_product")  # GraphClient.send_message adds it
    assert graph.sent == [(PNID, reference)]
    state = await ledger.get(PNID, USER, now=T0 + 1)
    assert state["requests"]["recent"][0]["message_id"] == mid
    assert permission_request_body(USER, None)["interactive"].get("body") is None


@pytest.mark.parametrize("code, reason", [(138009, "limit_requests_24h"),
                                          (138017, "permanent_exists")])
async def test_meta_refusing_a_request_is_recorded(ledger: PermissionLedger, code, reason):
    decision, mid = await request_permission(FakeGraph(error_code=code), ledger, PNID, USER,
                                             "hi", now=T0)
    assert (decision.allowed, decision.reason, decision.meta_code, mid) == \
        (False, reason, code, None)
    again = await ledger.can_request(PNID, USER, now=T0 + 60)
    assert again.reason == reason
    if code == 138009:
        assert again.next_allowed_at == T0 + DAY  # Meta gave no time: the 24 h upper bound


async def test_other_meta_errors_are_raised(ledger: PermissionLedger):
    with pytest.raises(GraphError):
        await request_permission(FakeGraph(error_code=131026), ledger, PNID, USER, "hi", now=T0)
    assert (await ledger.can_request(PNID, USER, now=T0 + 1)).allowed


# ---- unanswered streak -------------------------------------------------------------------------


async def test_four_unanswered_calls_revoke(ledger: PermissionLedger):
    await ledger.apply_reply(reply(at=T0))
    for i in range(3):
        await ledger.record_call_result(PNID, USER, answered=False, now=T0 + 100 * (i + 1))
        assert (await ledger.can_call(PNID, USER, now=T0 + 100 * (i + 1) + 1)).allowed
    await ledger.record_call_result(PNID, USER, answered=False, now=T0 + 400)
    decision = await ledger.can_call(PNID, USER, now=T0 + 401)
    assert (decision.reason, decision.meta_code) == ("no_permission", 138006)
    assert "revoked" in decision.message
    state = await ledger.get(PNID, USER, now=T0 + 401)
    assert state["permission"]["source"] == "automatic"
    # Meta's automatic reject reply that follows changes nothing.
    await ledger.apply_reply(reply("reject", at=T0 + 402, source="automatic"))
    assert not (await ledger.can_call(PNID, USER, now=T0 + 403)).allowed
    # A new grant starts a new streak.
    await ledger.apply_reply(reply(at=T0 + 500))
    await ledger.record_call_result(PNID, USER, answered=False, now=T0 + 600)
    assert (await ledger.can_call(PNID, USER, now=T0 + 601)).allowed


async def test_answered_call_resets_the_unanswered_streak(ledger: PermissionLedger):
    await ledger.apply_reply(reply(at=T0))
    t = T0
    for answered in (False, False, False, True, False, False, False):
        t += 100
        await ledger.record_call_result(PNID, USER, answered=answered, now=t)
    assert (await ledger.can_call(PNID, USER, now=t + 1)).allowed
    assert (await ledger.get(PNID, USER, now=t + 1))["unanswered_streak"] == 3
    await ledger.record_call_result(PNID, USER, answered=False, now=t + 100)
    assert (await ledger.can_call(PNID, USER, now=t + 101)).reason == "no_permission"


async def test_same_call_reported_twice_counts_once(ledger: PermissionLedger):
    await ledger.apply_reply(reply(at=T0))
    for i in range(4):
        await ledger.record_call_result(PNID, USER, False, now=T0 + 10 + i, call_id="wacid.X")
    assert (await ledger.can_call(PNID, USER, now=T0 + 100)).allowed
    assert (await ledger.get(PNID, USER, now=T0 + 100))["unanswered_streak"] == 1


# ---- permission state --------------------------------------------------------------------------


async def test_temporary_permission_expires_after_7_days(ledger: PermissionLedger):
    await ledger.apply_reply(reply(at=T0))
    assert (await ledger.can_call(PNID, USER, now=T0 + WEEK - 1)).allowed
    decision = await ledger.can_call(PNID, USER, now=T0 + WEEK)
    assert (decision.reason, decision.meta_code) == ("permission_expired", 138006)
    state = await ledger.get(PNID, USER, now=T0 + WEEK)
    assert state["permission"]["expired"] and state["permission"]["status"] == "no_permission"


async def test_temporary_permission_uses_metas_expiration_timestamp(ledger: PermissionLedger):
    (ev,) = parse_body((PAYLOADS / "webhook-call-permission-reply.json").read_bytes()).events
    assert isinstance(ev, PermissionReply)
    await ledger.apply_reply(ev)
    assert (await ledger.can_call(ev.phone_number_id, ev.user, now=1767831000 - 1)).allowed
    assert (await ledger.can_call(ev.phone_number_id, ev.user, now=1767831000)).reason == \
        "permission_expired"
    state = await ledger.get(ev.phone_number_id, ev.user, now=1767831000 - 1)
    assert state["permission"]["source"] == "user_action"


async def test_callback_grant_is_recorded_as_callback(ledger: PermissionLedger):
    body = (PAYLOADS / "webhook-call-permission-reply-automatic-callback.json").read_bytes()
    (ev,) = parse_body(body).events
    await ledger.apply_reply(ev)
    state = await ledger.get(ev.phone_number_id, ev.user, now=ev.timestamp + 1)
    assert state["permission"]["source"] == "callback"
    assert state["permission"]["expires_at"] == 1767830405


async def test_permanent_permission_never_expires(ledger: PermissionLedger):
    await ledger.apply_reply(reply(at=T0, permanent=True, expires=int(T0 + DAY)))
    assert (await ledger.can_call(PNID, USER, now=T0 + 400 * DAY)).allowed
    assert (await ledger.get(PNID, USER, now=T0))["permission"]["expires_at"] is None


async def test_reject_reply_removes_permission(ledger: PermissionLedger):
    await ledger.apply_reply(reply(at=T0))
    await ledger.apply_reply(reply("reject", at=T0 + 60))
    decision = await ledger.can_call(PNID, USER, now=T0 + 61)
    assert (decision.reason, decision.meta_code) == ("no_permission", 138006)


async def test_auto_revoke_reply_from_reference_payload(ledger: PermissionLedger):
    await ledger.apply_reply(reply(at=1767312000 - 3600, permanent=True))
    body = (PAYLOADS / "webhook-call-permission-reply-auto-revoked.json").read_bytes()
    (ev,) = parse_body(body).events
    await ledger.apply_reply(ev)
    decision = await ledger.can_call(PNID, USER, now=1767312001)
    assert decision.reason == "no_permission" and "revoked" in decision.message


async def test_reply_older_than_ledger_state_is_ignored(ledger: PermissionLedger):
    await ledger.apply_reply(reply("reject", at=T0 + 100))
    await ledger.apply_reply(reply("accept", at=T0 + 50))  # delivered late, out of order
    assert not (await ledger.can_call(PNID, USER, now=T0 + 200)).allowed


async def test_reply_marks_the_request_answered(ledger: PermissionLedger):
    await ledger.record_request_sent(PNID, USER, "wamid.REQ", now=T0)
    await ledger.apply_reply(reply(at=T0 + 30, context="wamid.REQ"))
    (req,) = (await ledger.get(PNID, USER, now=T0 + 31))["requests"]["recent"]
    assert req["response"] == "accept" and req["answered_at"] == T0 + 30


# ---- call limits -------------------------------------------------------------------------------


async def test_100_connected_calls_in_24h_hit_the_limit(ledger: PermissionLedger):
    await ledger.apply_reply(reply(at=T0, permanent=True))
    for i in range(100):
        assert (await ledger.can_call(PNID, USER, now=T0 + 60 * i + 1)).allowed
        await ledger.record_call_result(PNID, USER, answered=True, now=T0 + 60 * i + 30)
    decision = await ledger.can_call(PNID, USER, now=T0 + 7000)
    assert (decision.allowed, decision.reason, decision.meta_code) == \
        (False, "limit_calls_24h", 138012)
    assert decision.next_allowed_at == T0 + 30 + DAY
    assert "next call allowed" in decision.message
    assert (await ledger.can_call(PNID, USER, now=T0 + 30 + DAY)).allowed
    # Hitting the limit does not revoke the permission (§10).
    assert (await ledger.get(PNID, USER, now=T0 + 7000))["permission"]["status"] == "permanent"


async def test_unanswered_calls_do_not_count_toward_the_call_limit(ledger_at: str | Path):
    led = await PermissionLedger.open(ledger_at, limits=Limits(calls_per_24h=2))
    try:
        await led.apply_reply(reply(at=T0, permanent=True))
        await led.record_call_result(PNID, USER, answered=True, now=T0 + 1)
        await led.record_call_result(PNID, USER, answered=False, now=T0 + 2)
        assert (await led.can_call(PNID, USER, now=T0 + 3)).allowed
    finally:
        await led.close()


# ---- persistence -------------------------------------------------------------------------------


async def test_ledger_survives_reopen(ledger_at: str | Path):
    path = ledger_at
    first = await PermissionLedger.open(path)
    await first.apply_reply(reply(at=T0))
    await first.record_request_sent(PNID, USER, "wamid.a", now=T0 - 60)
    for i in range(3):
        await first.record_call_result(PNID, USER, answered=False, now=T0 + 10 + i)
    await first.close()
    await first.close()  # twice is fine

    second = await PermissionLedger.open(path)
    try:
        assert (await second.can_call(PNID, USER, now=T0 + 100)).allowed
        assert (await second.can_request(PNID, USER, now=T0 + 100)).reason == \
            "limit_requests_24h"
        await second.record_call_result(PNID, USER, answered=False, now=T0 + 200)
        assert (await second.can_call(PNID, USER, now=T0 + 201)).reason == "no_permission"
    finally:
        await second.close()


async def test_shares_the_file_with_the_call_store(tmp_path: Path):
    from gateway.store import CallStore

    path = tmp_path / "gateway.sqlite3"
    store = await CallStore.open(path)
    led = await PermissionLedger.open(path)
    try:
        await led.apply_reply(reply(at=T0))
        assert (await led.can_call(PNID, USER, now=T0 + 1)).allowed
    finally:
        await led.close()
        await store.close()
    store = await CallStore.open(path)  # its schema version is untouched by the ledger
    await store.close()
    # The other order: the ledger creates the file, the store migrates it afterwards.
    other = tmp_path / "other.sqlite3"
    led = await PermissionLedger.open(other)
    await led.close()
    store = await CallStore.open(other)
    await store.close()
    led = await PermissionLedger.open(other)
    await led.close()


# ---- Meta's answers win ------------------------------------------------------------------------


async def test_meta_no_permission_error_overrides_the_ledger(ledger: PermissionLedger):
    await ledger.apply_reply(reply(at=T0))
    assert (await ledger.can_call(PNID, USER, now=T0 + 10)).allowed
    decision = await ledger.apply_meta_error(PNID, USER, 138006, now=T0 + 20)
    assert decision == await ledger.can_call(PNID, USER, now=T0 + 20)
    assert (decision.allowed, decision.reason, decision.meta_code) == \
        (False, "no_permission", 138006)
    assert (await ledger.get(PNID, USER, now=T0 + 21))["permission"]["source"] == "meta_api"


async def test_meta_call_limit_error_blocks_until_retry_time(ledger: PermissionLedger):
    await ledger.apply_reply(reply(at=T0, permanent=True))
    decision = await ledger.apply_meta_error(PNID, USER, 138012, now=T0 + 10,
                                             retry_at=T0 + 5000)
    assert (decision.reason, decision.next_allowed_at) == ("limit_calls_24h", T0 + 5000)
    assert (await ledger.can_call(PNID, USER, now=T0 + 5000)).allowed
    assert await ledger.apply_meta_error(PNID, USER, 131026, now=T0) is None


async def test_meta_permissions_answer_is_applied(ledger: PermissionLedger):
    answer = payload("response-get-call-permissions.json")
    now = 1767312000 - 3600  # one hour before Meta's 24 h request limit lapses
    await ledger.apply_meta_permissions(PNID, USER, answer, now=now)
    state = await ledger.get(PNID, USER, now=now)
    assert state["permission"]["status"] == "temporary"
    assert state["permission"]["expires_at"] == 1767830400
    assert state["permission"]["source"] == "meta_api"
    request = await ledger.can_request(PNID, USER, now=now)
    assert (request.reason, request.next_allowed_at) == ("limit_requests_24h", 1767312000)
    assert (await ledger.can_request(PNID, USER, now=1767312000)).allowed
    # start_call: 2 of 100 used per Meta, though the ledger saw none.
    (window,) = state["calls"]["windows"]
    assert (window["used"], window["max"]) == (2, 100)
    assert (await ledger.can_call(PNID, USER, now=now)).allowed
    assert not (await ledger.can_call(PNID, USER, now=1767830400)).allowed


async def test_meta_live_max_allowed_overrides_the_default(ledger: PermissionLedger):
    answer = {"permission": {"status": "permanent"},
              "actions": [{"action_name": "start_call", "can_perform_action": True,
                           "limits": [{"time_period": "PT24H", "max_allowed": 5,
                                       "current_usage": 0}]}]}
    await ledger.apply_meta_permissions(PNID, USER, answer, now=T0)
    for i in range(5):
        await ledger.record_call_result(PNID, USER, answered=True, now=T0 + i + 1)
    decision = await ledger.can_call(PNID, USER, now=T0 + 10)
    assert (decision.reason, decision.next_allowed_at) == ("limit_calls_24h", T0 + 1 + DAY)


async def test_meta_saying_allowed_clears_what_the_ledger_counted(ledger: PermissionLedger):
    await ledger.record_request_sent(PNID, USER, "wamid.a", now=T0)
    await ledger.apply_meta_error(PNID, USER, 138009, now=T0 + 10)
    assert not (await ledger.can_request(PNID, USER, now=T0 + 20)).allowed
    answer = {"permission": {"status": "no_permission"},
              "actions": [{"action_name": "send_call_permission_request",
                           "can_perform_action": True,
                           "limits": [{"time_period": "PT24H", "max_allowed": 1,
                                       "current_usage": 0},
                                      {"time_period": "P7D", "max_allowed": 2,
                                       "current_usage": 0}]}]}
    await ledger.apply_meta_permissions(PNID, USER, answer, now=T0 + 30)
    assert (await ledger.can_request(PNID, USER, now=T0 + 31)).allowed


async def test_meta_counting_unseen_requests_is_respected(ledger: PermissionLedger):
    answer = {"permission": {"status": "no_permission"},
              "actions": [{"action_name": "send_call_permission_request",
                           "can_perform_action": True,
                           "limits": [{"time_period": "PT24H", "max_allowed": 1,
                                       "current_usage": 0},
                                      {"time_period": "P7D", "max_allowed": 2,
                                       "current_usage": 1}]}]}
    await ledger.apply_meta_permissions(PNID, USER, answer, now=T0)
    await ledger.record_request_sent(PNID, USER, "wamid.a", now=T0 + 10)
    decision = await ledger.can_request(PNID, USER, now=T0 + 2 * DAY)
    assert decision.reason == "limit_requests_7d"
    assert decision.next_allowed_at is not None and decision.next_allowed_at <= T0 + WEEK - DAY


# ---- country rule ------------------------------------------------------------------------------


@pytest.mark.parametrize("number, blocked", [
    ("+1 415 555 0100", True), ("14165550100", True), ("+20 10 1234 5678", True),
    ("+84 912 345 678", True), ("+234 803 123 4567", True), ("0084912345678", True),
    ("+44 20 7946 0000", False), ("+55 11 98765 0000", False), ("+1 809 555 0100", False),
    ("+1 555 000 1111", False), ("+212 600 000000", False), ("", False), (None, False),
])
def test_business_country_block(number, blocked):
    assert (business_country_block(number) is not None) is blocked


async def test_country_rule_refuses_calls_and_requests(ledger_at: str | Path):
    led = await PermissionLedger.open(ledger_at,
                                      display_numbers={PNID: "+1 415 555 0100"})
    try:
        await led.apply_reply(reply(at=T0, permanent=True))
        decision = await led.can_call(PNID, USER, now=T0 + 1)
        assert (decision.allowed, decision.reason, decision.meta_code) == \
            (False, "country_unsupported", 138013)
        assert (await led.can_request(PNID, USER, now=T0 + 1)).reason == "country_unsupported"
        assert (await led.can_call("999", USER, now=T0 + 1)).reason == "no_permission"
        led.set_display_number(PNID, "+44 20 7946 0000")
        assert (await led.can_call(PNID, USER, now=T0 + 1)).allowed
    finally:
        await led.close()


async def test_sandbox_limits_skip_the_country_rule_and_raise_request_limits(
        ledger_at: str | Path):
    led = await PermissionLedger.open(ledger_at, limits=SANDBOX_LIMITS,
                                      display_numbers={PNID: "+1 415 555 0100"})
    try:
        for i in range(25):
            assert (await led.can_request(PNID, USER, now=T0 + i)).allowed
            await led.record_request_sent(PNID, USER, f"wamid.{i}", now=T0 + i)
        assert (await led.can_request(PNID, USER, now=T0 + 100)).reason == "limit_requests_24h"
    finally:
        await led.close()


# ---- voice-call button -------------------------------------------------------------------------


def test_voice_call_body_matches_reference():
    body = voice_call_body(USER, "Tap the button to talk to our support team.",
                           display_text="Call support", ttl_minutes=1440,
                           payload="order-ON-12853")
    reference = payload("request-message-voice-call-button.json")
    reference.pop("messaging_product")
    assert body == reference
    defaults = voice_call_body(USER, "Call us")["interactive"]["action"]["parameters"]
    assert defaults == {"display_text": "Call Now", "ttl_minutes": 10080}


@pytest.mark.parametrize("kwargs, field", [
    ({"display_text": "x" * 21}, "display_text"),
    ({"display_text": ""}, "display_text"),
    ({"ttl_minutes": 0}, "ttl_minutes"),
    ({"ttl_minutes": 43201}, "ttl_minutes"),
    ({"ttl_minutes": 10.5}, "ttl_minutes"),
    ({"payload": "p" * 513}, "payload"),
    ({"body_text": ""}, "body_text"),
])
async def test_voice_call_button_validation_names_the_field(kwargs, field):
    graph = FakeGraph()
    args = {"body_text": "Call us", **kwargs}
    with pytest.raises(ValueError, match=rf"^{field}:"):
        await send_call_button(graph, PNID, USER, **args)
    assert graph.sent == []


async def test_voice_call_button_limits_are_inclusive():
    graph = FakeGraph()
    mid = await send_call_button(graph, PNID, USER, "Call us", display_text="x" * 20,
                                 ttl_minutes=43200, payload="p" * 512)
    assert mid == "wamid.TEST1"
    await send_call_button(graph, PNID, USER, "Call us", ttl_minutes=1)


# ---- GraphClient additions ---------------------------------------------------------------------


async def test_graph_client_messages_and_call_permissions():
    seen: list[tuple[str, str, Any]] = []

    async def messages(request: web.Request) -> web.Response:
        body = await request.json()
        seen.append(("POST", request.path, body))
        if body["interactive"]["type"] == "voice_call":
            return web.json_response(payload("response-error.json"), status=401)
        return web.json_response(payload("response-message-send.json"))

    async def permissions(request: web.Request) -> web.Response:
        seen.append(("GET", request.path, dict(request.query)))
        assert request.headers["Authorization"] == "Bearer token"
        return web.json_response(payload("response-get-call-permissions.json"))

    app = web.Application()
    app.router.add_post("/v23.0/{pnid}/messages", messages)
    app.router.add_get("/v23.0/{pnid}/call_permissions", permissions)
    observed: list[tuple[str, str]] = []
    async with TestServer(app) as server:
        settings = WhatsAppSettings(graph_url=str(server.make_url("/v23.0")),
                                    access_token=Secret("token"), app_secret=Secret("s"),
                                    verify_token=Secret("v"))
        graph = GraphClient(settings, observer=lambda a, r, s: observed.append((a, r)))
        try:
            mid = await graph.send_message(PNID, permission_request_body(USER, "hi"))
            assert mid == "wamid.TESTrequest0000000000000000001"
            answer = await graph.get_call_permissions(PNID, USER)
            assert answer["permission"]["status"] == "temporary"
            with pytest.raises(GraphError) as err:
                await send_call_button(graph, PNID, USER, "Call us")
            assert err.value.code == 138006
        finally:
            await graph.close()
    assert seen[0][2]["messaging_product"] == "whatsapp"
    assert seen[1] == ("GET", f"/v23.0/{PNID}/call_permissions", {"user_wa_id": USER})
    assert observed == [("messages", "ok"), ("call_permissions", "ok"), ("messages", "138006")]


def test_period_seconds():
    assert period_seconds("PT24H") == DAY and period_seconds("P7D") == WEEK
    assert period_seconds("P1W") == WEEK and period_seconds("bogus") is None
    assert period_seconds("P") is None


def test_decision_to_dict():
    d = Decision(False, "limit_calls_24h", "m", 1.0, 138012)
    assert d.to_dict() == {"allowed": False, "reason": "limit_calls_24h", "message": "m",
                           "next_allowed_at": 1.0, "meta_code": 138012}


async def test_call_permissions_lookups_are_paced_to_metas_rate_limit():
    """§3: about 5 call_permissions GETs per second; a burst waits instead of getting 613."""
    seen: list[float] = []

    async def handler(request: web.Request) -> web.Response:
        seen.append(asyncio.get_running_loop().time())
        return web.json_response(json.loads((PAYLOADS / "response-get-call-permissions.json")
                                            .read_text()))

    app = web.Application()
    app.router.add_get("/v23.0/{pnid}/call_permissions", handler)
    server = TestServer(app)
    await server.start_server()
    graph = GraphClient(WhatsAppSettings(
        graph_url=str(server.make_url("/v23.0")).rstrip("/"), access_token=Secret("t"),
        app_secret=Secret("s"), verify_token=Secret("v")))
    try:
        await asyncio.gather(*[graph.get_call_permissions(PNID, USER) for _ in range(7)])
    finally:
        await graph.close()
        await server.close()
    seen.sort()
    assert len(seen) == 7
    # any 6 consecutive lookups span at least a second: never more than 5 in one second
    assert all(seen[i + 5] - seen[i] >= 0.99 for i in range(len(seen) - 5))


@pytest.mark.parametrize("field", ["expiration_time", "expiration"])
def test_metas_permission_expiry_is_read_under_either_documented_name(field):
    """Meta's call_permissions sample says ``expiration_time``, its field table
    ``expiration``: the expiry is the same under either."""
    from gateway.calls.permissions.reconcile import parse
    answer = parse({"permission": {"status": "temporary", field: 1767831000}, "actions": []})
    assert (answer.status, answer.expires_at) == ("temporary", 1767831000.0)
