"""The permission rules as the gateway uses them: the API decides once and counts its refusals,
the CLI opens the ledger as the gateway does, and a request is counted in the transaction that
allows it: two ledgers on one SQLite file, or (marked ``postgres``) on one database of the real
PostgreSQL, stand for two gateways."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path

import psycopg
import pytest
import yaml
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from gateway.api import add_api_routes
from gateway.calls.permissions import (
    Decision,
    PermissionLedger,
    PermissionService,
    RefusalReason,
    open_ledger,
    request_permission,
)
from gateway.calls.permissions.postgres_store import MIGRATIONS, PostgresLedgerStore
from gateway.cli import main
from gateway.config import parse_config
from gateway.metrics import PERMISSION_REFUSAL_REASONS, GatewayMetrics
from gateway.whatsapp.events import PermissionReply
from tests import fakes
from tests.pg import LocalPostgres

USER = "15550002222"
T0 = 1_767_225_600.0  # 2026-01-01 00:00:00 UTC
TOKEN = "api-token-1"
PG_LEDGER_MIGRATIONS = len(MIGRATIONS)
US_NUMBER = "+1 415 555 0100"
"""A business number of the USA: Meta refuses its business-initiated calls (138013)."""


def refusals(metrics: GatewayMetrics, reason: str, what: str = "call") -> float:
    value = metrics.registry.get_sample_value(
        "whatsapp_gateway_permission_refusals_total",
        {"phone_number_id": fakes.PNID, "what": what, "reason": reason})
    return value or 0.0


@pytest.fixture
async def api():
    """The /v1 API over a call manager on fakes, with the rules and the metrics the gateway
    gives it."""
    r = fakes.rig(api={"tokens": [TOKEN]})
    metrics = GatewayMetrics([fakes.PNID], process=False)
    app = web.Application()
    add_api_routes(app, r.manager.deps.config, r.manager, graph=r.graph,
                   permissions=PermissionService(r.graph, r.ledger, metrics))  # type: ignore[arg-type]
    client = TestClient(TestServer(app))
    await client.start_server()
    try:
        yield r, metrics, client
    finally:
        await r.manager.shutdown()
        await client.close()


async def post_call(client: TestClient) -> tuple[int, dict]:
    resp = await client.post("/v1/calls", json={"to": f"+{USER}", "context": "agents",
                                                 "extension": "100"},
                             headers={"Authorization": f"Bearer {TOKEN}"})
    return resp.status, await resp.json()


async def test_an_api_call_is_decided_once(api):
    r, _, client = api
    status, body = await post_call(client)
    assert status == 201, body
    await asyncio.wait_for(r.graph.gates.reached("connect"), 5)  # past the permission check
    assert r.ledger.asked == [USER], "the API and the call must not both ask the ledger"


@pytest.mark.parametrize("reason, status", [("no_permission", 409), ("limit_calls_24h", 429)])
async def test_an_api_refusal_is_answered_and_counted(api, reason, status):
    r, metrics, client = api
    r.ledger.decision = Decision(False, reason, "refused", meta_code=138006)
    code, body = await post_call(client)
    assert (code, body["error"]["reason"]) == (status, reason)
    assert refusals(metrics, reason) == 1
    assert r.graph.requests == [] and r.manager.outbound == {}


async def test_a_ledger_whose_database_is_away_is_a_503_not_a_500(api):
    """PostgreSQL down (or the disk refusing): the decision cannot be read, so the CRM gets a
    JSON 503 it can retry on, and Meta is asked nothing."""
    r, _, client = api

    class Away(Exception):
        pass

    async def unreadable(*args, **kwargs):
        raise Away("connection refused")

    r.ledger.store = type("Store", (), {"storage_errors": (Away,)})()
    r.ledger.can_call = unreadable
    code, body = await post_call(client)
    assert (code, body["error"]["reason"]) == (503, "ledger_unavailable")
    assert r.graph.requests == [] and r.manager.outbound == {}


def test_every_refusal_reason_is_its_own_metric_label():
    assert set(PERMISSION_REFUSAL_REASONS) == {r.value for r in RefusalReason}
    metrics = GatewayMetrics([fakes.PNID], process=False)
    for reason in RefusalReason:
        metrics.permission_refused(reason, fakes.PNID, what="request")
        assert refusals(metrics, reason.value, "request") == 1


# ---- one way to open the ledger ---------------------------------------------------------------


def us_config(tmp_path: Path) -> Path:
    """A config whose number is a US number, its Graph API on a port nothing listens on."""
    path = tmp_path / "gateway.yaml"
    path.write_text(yaml.safe_dump({
        "whatsapp": {"graph_url": "http://127.0.0.1:9/v23.0", "access_token": "t",
                     "app_secret": "s", "verify_token": "v"},
        "numbers": [{"phone_number_id": fakes.PNID, "display_number": US_NUMBER,
                     "context": "from-whatsapp"}],
        "asterisk": {"ami": {"username": "gateway", "secret": "x"}},
        "store": {"path": str(tmp_path / "gateway.sqlite3")},
    }))
    return path


async def test_open_ledger_knows_the_display_numbers(tmp_path: Path):
    config = parse_config(yaml.safe_load(us_config(tmp_path).read_text()), env={})
    ledger = await open_ledger(config)
    try:
        decision = await ledger.can_request(fakes.PNID, USER)
        assert (decision.reason, decision.meta_code) == ("country_unsupported", 138013)
    finally:
        await ledger.close()


def test_cli_permission_request_applies_the_country_rule(tmp_path: Path, capsys):
    """``permissions request`` from a US number is refused before Meta is asked (it used to
    open the ledger without the display numbers, and send)."""
    config = us_config(tmp_path)
    assert main(["permissions", "request", USER, "-c", str(config)]) == 1
    err = capsys.readouterr().err
    assert "not sent" in err and "USA/Canada" in err


# ---- a request is counted where it is allowed ---------------------------------------------------


class HeldGraph:
    """Meta's messages endpoint, holding the first request until released."""

    def __init__(self) -> None:
        self.sent: list[dict] = []
        self.reached = asyncio.Event()
        self.release = asyncio.Event()

    async def send_message(self, pnid: str, body: dict) -> str:
        self.sent.append(body)
        if len(self.sent) == 1:
            self.reached.set()
            await self.release.wait()
        return f"wamid.HELD{len(self.sent)}"


async def test_two_gateways_sharing_a_ledger_cannot_both_send_a_request(ledger_at: str | Path):
    first, second = await PermissionLedger.open(ledger_at), await PermissionLedger.open(ledger_at)
    graph = HeldGraph()
    try:
        sending = asyncio.ensure_future(
            request_permission(graph, first, fakes.PNID, USER, "hi", now=T0))
        await asyncio.wait_for(graph.reached.wait(), 5)  # the first is at Meta
        decision, message_id = await request_permission(graph, second, fakes.PNID, USER, "hi",
                                                        now=T0 + 1)
        assert (decision.reason, message_id) == ("limit_requests_24h", None)
        graph.release.set()
        decision, message_id = await sending
        assert decision.allowed and message_id == "wamid.HELD1" and len(graph.sent) == 1
        state = await second.get(fakes.PNID, USER, now=T0 + 2)
        assert [r["message_id"] for r in state["requests"]["recent"]] == ["wamid.HELD1"]
    finally:
        await first.close()
        await second.close()


async def test_a_request_is_still_sent_and_counted_when_the_disk_refuses_the_reservation(
        ledger_at: str | Path, monkeypatch):
    ledger = await PermissionLedger.open(ledger_at)
    graph = HeldGraph()
    graph.release.set()
    refusal = sqlite3.OperationalError("database or disk is full") \
        if isinstance(ledger_at, Path) else psycopg.OperationalError("server closed the connection")

    async def full(*args, **kwargs):
        raise refusal

    try:
        monkeypatch.setattr(ledger.store, "reserve_request", full)
        decision, message_id = await request_permission(graph, ledger, fakes.PNID, USER, "hi",
                                                        now=T0)
        assert decision.allowed and message_id == "wamid.HELD1"
        refused = await ledger.can_request(fakes.PNID, USER, now=T0 + 1)
        assert refused.reason == "limit_requests_24h"
    finally:
        await ledger.close()


class InstantGraph:
    """Meta's messages endpoint of one gateway: takes every request at once."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.sent: list[dict] = []

    async def send_message(self, pnid: str, body: dict) -> str:
        self.sent.append(body)
        return f"wamid.{self.name}{len(self.sent)}"


async def test_two_gateways_asking_the_same_user_at_the_same_moment_send_one_request(
        ledger_at: str | Path):
    """Issue 10: the 1-per-24 h rule holds across gateways. Each round a new user is asked by
    both gateways at once; the rule is checked and the request counted in one transaction, so
    exactly one of them sends it, whichever wins."""
    first, second = await PermissionLedger.open(ledger_at), await PermissionLedger.open(ledger_at)
    graphs = InstantGraph("A"), InstantGraph("B")
    try:
        for round_ in range(40):
            user = f"1555000{round_:04d}"
            now = T0 + round_
            results = await asyncio.gather(
                request_permission(graphs[0], first, fakes.PNID, user, "hi", now=now),
                request_permission(graphs[1], second, fakes.PNID, user, "hi", now=now))
            sent = [message_id for decision, message_id in results if decision.allowed]
            refused = [decision.reason for decision, _ in results if not decision.allowed]
            assert len(sent) == 1 and refused == ["limit_requests_24h"], (round_, results)
            state = await second.get(fakes.PNID, user, now=now + 1)
            assert [r["message_id"] for r in state["requests"]["recent"]] == sent
        assert len(graphs[0].sent) + len(graphs[1].sent) == 40
    finally:
        await first.close()
        await second.close()


async def test_call_results_reported_by_two_gateways_at_once_are_each_counted_once(
        ledger_at: str | Path):
    """§10's streak across gateways: four unanswered calls ended at the same moment on two
    gateways revoke the permission once (no update lost), and a call both report (a
    duplicated terminate webhook) counts once."""
    first, second = await PermissionLedger.open(ledger_at), await PermissionLedger.open(ledger_at)
    try:
        await first.apply_reply(reply_from(USER, T0))
        await asyncio.gather(*(
            gateway.record_call_result(fakes.PNID, USER, answered=False, now=T0 + 10,
                                       call_id=f"wacid.{n}")
            for n in range(3) for gateway in (first, second)))  # each call reported twice
        state = await second.get(fakes.PNID, USER, now=T0 + 11)
        assert (state["unanswered_streak"], state["permission"]["status"]) == (3, "permanent")
        await asyncio.gather(
            first.record_call_result(fakes.PNID, USER, answered=False, now=T0 + 20,
                                     call_id="wacid.3"),
            second.record_call_result(fakes.PNID, USER, answered=False, now=T0 + 20,
                                      call_id="wacid.4"))
        state = await first.get(fakes.PNID, USER, now=T0 + 21)
        assert state["permission"]["status"] == "no_permission"
        assert state["permission"]["source"] == "automatic"
        assert state["unanswered_streak"] == 1  # revoked at the 4th; the 5th starts anew
    finally:
        await first.close()
        await second.close()


@pytest.mark.postgres
async def test_open_ledger_keeps_the_ledger_in_postgresql_when_store_url_is_set(
        tmp_path: Path, pg_url: str):
    raw = yaml.safe_load(us_config(tmp_path).read_text())
    raw["store"]["url"] = pg_url
    raw["numbers"][0]["display_number"] = "+44 20 7946 0000"
    config = parse_config(raw, env={})
    ledger = await open_ledger(config)
    try:
        decision, message_id = await request_permission(InstantGraph("A"), ledger, fakes.PNID,
                                                        USER, "hi", now=T0)
        assert decision.allowed and message_id == "wamid.A1"
    finally:
        await ledger.close()
    with psycopg.connect(pg_url) as db:
        assert db.execute("SELECT phone_number_id, wa_id, message_id FROM permission_requests"
                          ).fetchall() == [(fakes.PNID, USER, "wamid.A1")]
        assert db.execute("SELECT version FROM wa_schema_versions WHERE component = "
                          "'permissions'").fetchone() == (PG_LEDGER_MIGRATIONS,)


@pytest.mark.postgres
async def test_a_ledger_write_the_server_refuses_is_kept_and_written_once_it_is_back(
        postgres: LocalPostgres):
    """A PostgreSQL outage (failover) is a storage outage: the call's result is kept, the
    call is not ended by the ledger, and it is counted once the server takes logins again."""
    with postgres.refusable_database() as (url, refuse, restore):
        store = PostgresLedgerStore(url, connect_timeout_s=1.0)
        await store.open()
        ledger = PermissionLedger(store)
        ledger.writes.retry_first_s = ledger.writes.retry_max_s = 0.05
        try:
            await ledger.apply_reply(reply_from(USER, T0))
            refuse()
            await ledger.record_call_result(fakes.PNID, USER, answered=False, now=T0 + 10,
                                            call_id="wacid.kept")  # does not raise
            assert ledger.writes.pending == 1 and ledger.writes.errors >= 1
            restore()
            await asyncio.wait_for(ledger.writes.drained.wait(), 15)
            state = await ledger.get(fakes.PNID, USER, now=T0 + 20)
            assert state["unanswered_streak"] == 1
        finally:
            await ledger.close()


@pytest.mark.postgres
async def test_postgres_ledger_migrates_once_beside_the_call_store(pg_url: str):
    from gateway.store import CallStore

    ledgers = await asyncio.gather(*(PermissionLedger.open(pg_url) for _ in range(3)))
    store = await CallStore.open(pg_url)
    try:
        await asyncio.gather(*(led.close() for led in ledgers))
        with psycopg.connect(pg_url) as db:
            assert dict(db.execute("SELECT component, version FROM wa_schema_versions"
                                   ).fetchall()) == {"calls": store.schema_version,
                                                     "permissions": PG_LEDGER_MIGRATIONS}
            db.execute("UPDATE wa_schema_versions SET version = 99 "
                       "WHERE component = 'permissions'")
        with pytest.raises(RuntimeError, match="permissions schema version 99 is newer"):
            await PermissionLedger.open(pg_url)
    finally:
        await store.close()


def reply_from(user: str, at: float) -> PermissionReply:
    return PermissionReply(phone_number_id=fakes.PNID, user=user, message_id=f"wamid.r{at}",
                           timestamp=int(at), response="accept", is_permanent=True,
                           expiration_timestamp=None, response_source="user_action",
                           context_id=None)
