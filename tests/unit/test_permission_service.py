"""The permission rules as the gateway uses them: the API decides once and counts its refusals,
the CLI opens the ledger as the gateway does, and a request is counted in the transaction that
allows it (real SQLite, two ledgers on one file standing for two gateways)."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path

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
from gateway.cli import main
from gateway.config import parse_config
from gateway.metrics import PERMISSION_REFUSAL_REASONS, GatewayMetrics
from tests import fakes

USER = "15550002222"
T0 = 1_767_225_600.0  # 2026-01-01 00:00:00 UTC
TOKEN = "api-token-1"
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


async def test_two_gateways_sharing_a_ledger_cannot_both_send_a_request(tmp_path: Path):
    path = tmp_path / "gateway.sqlite3"
    first, second = await PermissionLedger.open(path), await PermissionLedger.open(path)
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
        tmp_path: Path, monkeypatch):
    ledger = await PermissionLedger.open(tmp_path / "gateway.sqlite3")
    graph = HeldGraph()
    graph.release.set()

    async def full(*args, **kwargs):
        raise sqlite3.OperationalError("database or disk is full")

    try:
        monkeypatch.setattr(ledger.store, "reserve_request", full)
        decision, message_id = await request_permission(graph, ledger, fakes.PNID, USER, "hi",
                                                        now=T0)
        assert decision.allowed and message_id == "wamid.HELD1"
        refused = await ledger.can_request(fakes.PNID, USER, now=T0 + 1)
        assert refused.reason == "limit_requests_24h"
    finally:
        await ledger.close()
