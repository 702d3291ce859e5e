"""Users as Meta names them in 2026 (docs/meta-2026-identity.md §1-2): the one user key, the
payloads with BSUIDs and usernames, the ledger keying, linking and re-keying users, 138012's
next-allowed time, the username caller id, migration 3 and the Graph version warning."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from gateway.calls.base import user_caller_id
from gateway.calls.permissions import DAY, WEEK, PermissionLedger, next_allowed_at
from gateway.calls.record import CallRecord, Direction
from gateway.config import ConfigError, UsernameCallerId, graph_version_warning, parse_config
from gateway.store import MIGRATIONS, CallStore
from gateway.whatsapp.events import (
    CallEvent,
    PermissionReply,
    StatusEvent,
    UserIdChanged,
    parse_body,
    parse_webhook,
)
from gateway.whatsapp.identity import (
    WhatsAppUser,
    canonical_number,
    is_bsuid,
    parse_target,
    user_key,
)
from gateway.whatsapp.messages import permission_request_body, recipient_fields

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "payloads"
BSUID = "US.1000000000000000001"
PARENT = "US.ENT.2000000000000000002"
PNID = "106540000000002"
T0 = 1_767_225_600.0


def fixture(name: str) -> Any:
    return json.loads((FIXTURES / name).read_text())


# ---- the one user key ---------------------------------------------------------------------------


def test_brazil_ninth_digit_and_mexico_521_have_one_key():
    # Brazil: dialled with the ninth digit, an old account's wa_id without it.
    assert canonical_number("+55 11 98765-4321") == canonical_number("551187654321") \
        == "551187654321"
    assert canonical_number("551132654321") == "551132654321"  # landline: untouched
    assert canonical_number("5521987654321") == "552187654321"
    # Mexico: wa_id 521 + 10 digits, dialled 52 + 10 digits.
    assert canonical_number("5215512345678") == canonical_number("+52 55 1234 5678") \
        == "525512345678"
    # Elsewhere, the digits.
    assert canonical_number("+1 (555) 000-2222") == "15550002222"
    assert canonical_number("4915112345678") == "4915112345678"
    assert canonical_number("") == canonical_number(None) == ""


def test_user_key_prefers_the_number_and_falls_back_to_the_bsuid():
    assert user_key("5511987654321", BSUID) == "551187654321"
    assert user_key("", BSUID) == BSUID
    assert user_key(None, None) == ""
    assert WhatsAppUser(user_id=BSUID).key == BSUID and not WhatsAppUser(user_id=BSUID).linkable
    assert WhatsAppUser(wa_id="15550002222", user_id=BSUID).linkable


def test_bsuids_and_targets():
    assert is_bsuid(BSUID) and is_bsuid(PARENT) and is_bsuid("BR." + "a1" * 64)
    assert not is_bsuid("15550002222") and not is_bsuid("us.100") and not is_bsuid("US.")
    assert not is_bsuid("US." + "1" * 129) and not is_bsuid("")
    assert parse_target("+15550002222") == ("15550002222", "")
    assert parse_target(f" {BSUID} ") == ("", BSUID)
    for bad in ("12ab", "", "+0123456", "US"):
        with pytest.raises(ValueError):
            parse_target(bad)
    assert recipient_fields(BSUID) == {"recipient": BSUID}
    assert recipient_fields("+15550002222") == {"to": "15550002222"}
    body = permission_request_body(BSUID, None)
    assert body["recipient"] == BSUID and "to" not in body


# ---- payloads ---------------------------------------------------------------------------------


def test_username_only_connect_has_no_number_and_the_ids():
    (ev,) = parse_body((FIXTURES / "webhook-connect-user-initiated-username-only.json")
                       .read_bytes()).events
    assert isinstance(ev, CallEvent)
    assert (ev.from_number, ev.user_id, ev.parent_user_id, ev.username, ev.profile_name) == (
        "", BSUID, PARENT, "testuser", "Test User")
    assert ev.user.key == BSUID and ev.sdp and ev.to_number == "15550001111"


def test_connect_with_number_and_bsuid():
    (ev,) = parse_webhook(fixture("webhook-connect-user-initiated-with-bsuid.json")).events
    assert (ev.from_number, ev.user_id, ev.username, ev.profile_name) == (
        "15550002222", BSUID, "", "Test User")
    assert ev.user.linkable and ev.user.key == "15550002222"


def test_ringing_status_with_bsuid():
    (ev,) = parse_webhook(fixture("webhook-status-ringing-with-bsuid.json")).events
    assert isinstance(ev, StatusEvent)
    assert (ev.recipient_id, ev.recipient_user_id, ev.status) == ("15550002222", BSUID,
                                                                  "RINGING")
    body = fixture("webhook-status-ringing-with-bsuid.json")
    st = body["entry"][0]["changes"][0]["value"]["statuses"][0]
    del st["recipient_id"], st["recipient_user_id"]  # a username user: ids only in contacts
    body["entry"][0]["changes"][0]["value"]["contacts"][0].pop("wa_id")
    (ev,) = parse_webhook(body).events
    assert (ev.recipient_id, ev.recipient_user_id) == ("", BSUID)


def test_status_parent_bsuid_under_both_names():
    """Meta renamed ``parent_recipient_user_id`` to ``recipient_parent_user_id`` in May 2026;
    a webhook under either name gives the same parent BSUID."""
    for name in ("recipient_parent_user_id", "parent_recipient_user_id"):
        body = fixture("webhook-status-ringing-with-bsuid.json")
        st = body["entry"][0]["changes"][0]["value"]["statuses"][0]
        st.pop("recipient_parent_user_id", None)
        st[name] = PARENT
        (ev,) = parse_webhook(body).events
        assert ev.recipient_parent_user_id == PARENT, name
        assert ev.user.parent_user_id == PARENT


def test_business_initiated_connect_reads_to_user_id():
    body = fixture("webhook-connect-business-initiated.json")
    value = body["entry"][0]["changes"][0]["value"]
    call = value["calls"][0]
    del call["to"]
    call["to_user_id"] = BSUID
    value["contacts"] = [{"user_id": BSUID, "profile": {"username": "testuser"}}]
    (ev,) = parse_webhook(body).events
    assert (ev.user.wa_id, ev.user.user_id, ev.user.username) == ("", BSUID, "testuser")


def test_permission_reply_by_bsuid_only():
    body = fixture("webhook-call-permission-reply.json")
    value = body["entry"][0]["changes"][0]["value"]
    msg = value["messages"][0]
    del msg["from"], msg["context"]["from"]
    msg["from_user_id"] = BSUID
    value["contacts"] = [{"profile": {"name": "Test User", "username": "testuser"},
                          "user_id": BSUID}]
    (ev,) = parse_webhook(body).events
    assert isinstance(ev, PermissionReply)
    assert (ev.user, ev.user_id, ev.username, ev.response_source) == ("", BSUID, "testuser",
                                                                      "user_action")
    assert ev.who.key == BSUID


def test_user_changed_user_id_system_message():
    body = {"entry": [{"changes": [{"field": "messages", "value": {
        "metadata": {"phone_number_id": PNID},
        "messages": [{"from": "15550002222", "from_user_id": BSUID, "id": "wamid.sys1",
                      "timestamp": "1780000000", "type": "system",
                      "system": {"body": "User changed number", "type": "user_changed_user_id",
                                 "user_id": "US.1000000000000000009",
                                 "wa_id": "15550009999"}}]}}]}]}
    (ev,) = parse_webhook(body).events
    assert ev == UserIdChanged(phone_number_id=PNID, message_id="wamid.sys1",
                               timestamp=1780000000, old_user_id=BSUID,
                               new_user_id="US.1000000000000000009", wa_id="15550009999",
                               old_wa_id="15550002222")
    body["entry"][0]["changes"][0]["value"]["messages"][0]["system"].pop("user_id")
    parsed = parse_webhook(body)
    assert not parsed.events and parsed.ignored


# ---- the ledger -------------------------------------------------------------------------------


@pytest.fixture
async def ledger(ledger_at: str | Path):
    led = await PermissionLedger.open(ledger_at, clock=lambda: T0)
    try:
        yield led
    finally:
        await led.close()


def grant(user: str = "", user_id: str = "", *, permanent: bool = True,
          at: float = T0) -> PermissionReply:
    return PermissionReply(phone_number_id=PNID, user=user, message_id=f"wamid.{at}{user}",
                           timestamp=int(at), response="accept", is_permanent=permanent,
                           expiration_timestamp=None if permanent else int(at + WEEK),
                           response_source="user_action", user_id=user_id)


async def test_replies_and_calls_in_either_number_form_land_on_one_user(ledger):
    await ledger.apply_reply(grant("551187654321", permanent=False))  # wa_id, no ninth digit
    assert (await ledger.can_call(PNID, "+5511987654321")).allowed  # dialled with it
    for n in range(3):
        await ledger.record_call_result(PNID, "5511987654321", answered=True, now=T0 + n,
                                        call_id=f"wacid.{n}")
    state = await ledger.get(PNID, "551187654321")
    assert state["wa_id"] == "551187654321" and state["calls"]["windows"][0]["used"] == 3
    await ledger.apply_reply(grant("5215512345678"))
    assert (await ledger.get(PNID, "525512345678"))["permission"]["status"] == "permanent"


async def test_bsuid_only_user_is_keyed_by_bsuid_then_linked_to_the_number(ledger):
    await ledger.apply_reply(grant(user_id=BSUID))
    state = await ledger.get(PNID, BSUID)
    assert state["wa_id"] == BSUID and state["permission"]["status"] == "permanent"
    await ledger.record_call_result(PNID, BSUID, answered=True, call_id="wacid.a")
    # Later a webhook names both: the BSUID's rows move to the number.
    await ledger.record_user_call(PNID, WhatsAppUser(wa_id="15550002222", user_id=BSUID))
    by_number = await ledger.get(PNID, "15550002222")
    assert by_number["permission"]["status"] == "permanent"
    assert by_number["calls"]["windows"][0]["used"] == 1
    assert (await ledger.get(PNID, BSUID))["wa_id"] == "15550002222"
    assert by_number["user_ids"] == [BSUID]
    assert await ledger.key_for(BSUID) == "15550002222"
    # A reply naming only the BSUID now lands on the number's row.
    await ledger.apply_reply(PermissionReply(
        phone_number_id=PNID, user="", message_id="wamid.rej", timestamp=int(T0 + 10),
        response="reject", is_permanent=False, expiration_timestamp=None,
        response_source="user_action", user_id=BSUID))
    assert (await ledger.get(PNID, "15550002222"))["permission"]["status"] == "no_permission"


async def test_user_changed_user_id_moves_the_user(ledger):
    await ledger.apply_reply(grant(user_id=BSUID))
    new = "US.1000000000000000009"
    await ledger.change_user_id(UserIdChanged(phone_number_id=PNID, message_id="wamid.s",
                                              timestamp=0, old_user_id=BSUID, new_user_id=new))
    assert (await ledger.get(PNID, new))["permission"]["status"] == "permanent"
    assert (await ledger.get(PNID, BSUID))["permission"]["status"] == "no_permission"
    # With a number: the new BSUID links to it.
    await ledger.change_user_id(UserIdChanged(phone_number_id=PNID, message_id="wamid.t",
                                              timestamp=0, old_user_id=new,
                                              new_user_id="US.1000000000000000010",
                                              wa_id="15550009999"))
    assert await ledger.key_for("US.1000000000000000010") == "15550009999"
    assert (await ledger.get(PNID, "15550009999"))["permission"]["status"] == "permanent"


async def test_permanent_grant_has_no_expiry_and_outlives_the_clock(ledger_at: str | Path):
    now = [T0]
    led = await PermissionLedger.open(ledger_at, clock=lambda: now[0])
    try:
        await led.apply_reply(grant("15550002222"))
        await led.apply_reply(grant("15550003333", permanent=False))
        now[0] = T0 + WEEK + DAY
        state = await led.get(PNID, "15550002222")
        assert state["permission"]["status"] == "permanent"
        assert state["permission"]["expires_at"] is None and state["can_call"]["allowed"]
        assert (await led.can_call(PNID, "15550003333")).reason == "permission_expired"
    finally:
        await led.close()


async def test_old_ledger_rows_in_a_non_canonical_form_are_folded(tmp_path: Path):
    path = tmp_path / "g.sqlite3"
    led = await PermissionLedger.open(path)
    await led.close()
    db = sqlite3.connect(path)
    db.execute("INSERT INTO permissions (phone_number_id, wa_id, status, updated_at) "
               "VALUES (?, '5511987654321', 'permanent', ?)", (PNID, T0))
    db.commit()
    db.close()
    led = await PermissionLedger.open(path)
    try:
        assert (await led.get(PNID, "551187654321"))["permission"]["status"] == "permanent"
    finally:
        await led.close()


def test_next_allowed_time_from_138012_error_data():
    now = T0
    at = int(now + 3600)
    assert next_allowed_at({"details": f"the next call is allowed at {at} (unix time)"},
                           now) == at
    assert next_allowed_at({"details": "x", "next_call_allowed_time": at * 1000}, now) == at
    assert next_allowed_at({"details": "Next call allowed at 2026-01-01T01:00:00Z"}, now) \
        == T0 + 3600
    assert next_allowed_at({"details": "limit reached"}, now) is None
    assert next_allowed_at({"details": f"allowed at {int(now - 3600)}"}, now) is None  # past
    assert next_allowed_at(None, now) is None


async def test_138012_time_blocks_calls_until_then(ledger):
    await ledger.apply_reply(grant("15550002222"))
    at = T0 + 5 * 3600
    decision = await ledger.apply_meta_error(PNID, "15550002222", 138012, T0, retry_at=at)
    assert not decision.allowed and decision.next_allowed_at == at
    assert (await ledger.can_call(PNID, "15550002222", at + 1)).allowed


# ---- caller id, config, store, Graph versions -------------------------------------------------


def record(**kw: Any) -> CallRecord:
    base = {"wacid": "wacid.x", "direction": Direction.INBOUND, "phone_number_id": PNID,
            "from_number": "", "to_number": "15550001111", "profile_name": "Test User",
            "user_id": BSUID, "username": "testuser"}
    return CallRecord(**(base | kw))


def test_username_caller_id_never_invents_a_number():
    assert user_caller_id(record(), None) == '"testuser" <>'
    assert user_caller_id(record(from_number="15550002222"), None) == \
        '"Test User" <+15550002222>'
    number = parse_config(config(username_caller_id={"name": "WA {username}",
                                                     "number": "{user_id}"})).numbers[0]
    assert user_caller_id(record(), number) == f'"WA testuser" <{BSUID}>'
    assert UsernameCallerId(name="{username}").render(
        username="", profile_name="", user_id=BSUID) == ("WhatsApp", "")


def config(**number: Any) -> dict[str, Any]:
    return {"whatsapp": {"graph_url": "https://graph.facebook.com/v25.0", "access_token": "t",
                         "app_secret": "s", "verify_token": "v"},
            "numbers": [{"phone_number_id": PNID, "context": "from-whatsapp", **number}],
            "asterisk": {"ami": {"username": "u", "secret": "s"}}}


@pytest.mark.parametrize("bad, problem", [
    ({"number": "+15550009999"}, "looks like a phone number"),
    ({"number": "5550009999"}, "looks like a phone number"),
    ({"name": "{nickname}"}, "unknown placeholder"),
    ({"colour": "red"}, "unknown key"),
    ("testuser", "must be a mapping"),
])
def test_username_caller_id_config_errors_name_the_key(bad: Any, problem: str):
    with pytest.raises(ConfigError) as err:
        parse_config(config(username_caller_id=bad))
    assert any(p.startswith("numbers[0].username_caller_id") and problem in p
               for p in err.value.problems), err.value.problems
    assert parse_config(config(username_caller_id={"number": "9000"})).numbers[0] \
        .username_caller_id.number == "9000"


async def test_migration_3_adds_user_columns_to_a_version_2_file(tmp_path: Path):
    path = tmp_path / "calls.sqlite3"
    db = sqlite3.connect(path)
    for number, script in enumerate(MIGRATIONS[:2], start=1):
        db.executescript(f"BEGIN; {script}; PRAGMA user_version = {number}; COMMIT;")
    db.execute("INSERT INTO calls (wacid, direction, phone_number_id, webhook_at, outcome) "
               "VALUES ('wacid.old', 'inbound', ?, ?, 'answered')", (PNID, T0))
    db.commit()
    db.close()
    store = await CallStore.open(path)
    try:
        old = await store.get("wacid.old")
        assert (old.user_id, old.username) == ("", "")
        await store.save(record(wacid="wacid.new"))
        new = await store.get("wacid.new")
        assert (new.from_number, new.user_id, new.username) == ("", BSUID, "testuser")
    finally:
        await store.close()
    assert sqlite3.connect(path).execute("PRAGMA user_version").fetchone()[0] >= 3


def test_graph_version_warning():
    today = "2026-12-02"
    assert "expired" in graph_version_warning("https://graph.facebook.com/v20.0", today)
    assert "expired" in graph_version_warning("https://graph.facebook.com/v17.0", today)
    assert "expired" in graph_version_warning("http://127.0.0.1:1/v14.0", today)
    assert "2027-01-21" in graph_version_warning("https://graph.facebook.com/v21.0", today)
    for current in ("v23.0", "v25.0", "v26.0", "v30.0"):
        assert graph_version_warning(f"https://graph.facebook.com/{current}", today) is None
    assert "expired" in graph_version_warning("https://graph.facebook.com/v23.0", "2027-06-01")


def test_check_config_warns_on_an_expired_version(tmp_path: Path):
    import yaml

    path = tmp_path / "gateway.yaml"
    data = config()
    data["whatsapp"]["graph_url"] = "https://graph.facebook.com/v19.0"
    path.write_text(yaml.safe_dump(data))
    out = subprocess.run([sys.executable, "-m", "gateway", "check-config", "-c", str(path)],
                         capture_output=True, text=True, check=False)
    assert out.returncode == 0, out.stderr
    assert "warning: whatsapp.graph_url: Graph API v19.0 expired" in out.stderr
    example = Path(__file__).resolve().parents[2] / "gateway.example.yaml"
    assert "graph.facebook.com/v25.0" in example.read_text()


async def test_meta_permanent_permission_answer_by_bsuid(ledger):
    """tests/fixtures/payloads/response-get-call-permissions-permanent.json, as GET
    call_permissions?recipient= answers it: permanent, no expiry, no request possible, 3 of
    100 calls used."""
    answer = fixture("response-get-call-permissions-permanent.json")
    await ledger.apply_meta_permissions(PNID, BSUID, answer)
    state = await ledger.get(PNID, BSUID)
    assert state["wa_id"] == BSUID
    assert (state["permission"]["status"], state["permission"]["expires_at"]) == (
        "permanent", None)
    assert state["calls"]["windows"] == [{"period_s": DAY, "used": 3, "max": 100,
                                          "next_allowed_at": None}]
    assert state["can_call"]["allowed"]
    assert state["can_request"]["reason"] == "permanent_exists"


def test_contact_found_for_the_dialled_brazilian_number_form():
    body = fixture("webhook-connect-business-initiated.json")
    value = body["entry"][0]["changes"][0]["value"]
    value["calls"][0]["to"] = "5511987654321"  # as dialled
    value["contacts"] = [{"wa_id": "551187654321", "user_id": BSUID,
                          "profile": {"username": "br"}}]  # Meta's wa_id, no ninth digit
    (ev,) = parse_webhook(body).events
    assert (ev.user_id, ev.username) == (BSUID, "br")
