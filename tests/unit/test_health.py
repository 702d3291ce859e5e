"""/healthz and /readyz: alive, and ready only when a call could be taken, with reasons."""

from __future__ import annotations

import asyncio

from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from gateway.health import PortUsage, ReadinessInputs, add_health_routes, readiness


def test_ready_when_everything_is_fine() -> None:
    ready, body = readiness(ReadinessInputs(True, True, (PortUsage("asterisk_rtp", 10, 1000),)))
    assert ready and body["status"] == "ready" and body["reasons"] == []
    assert body["checks"]["ports.asterisk_rtp"]["free"] == 10


def test_not_ready_lists_every_reason() -> None:
    ready, body = readiness(ReadinessInputs(
        ami_connected=False, ami_detail="connection refused by 127.0.0.1:5038",
        store_writable=False, store_detail="database var/g.sqlite3 is not writable: disk full",
        port_pools=(PortUsage("asterisk_rtp", 0, 1000),)))
    assert not ready
    assert body["reasons"] == [
        "ami: not connected to Asterisk: connection refused by 127.0.0.1:5038",
        "store: database var/g.sqlite3 is not writable: disk full",
        "ports.asterisk_rtp: exhausted: 0 of 1000 free",
    ]


def test_each_asterisk_server_is_listed_and_one_up_is_enough() -> None:
    """asterisk.servers: ready while one server is connected; the app adds a warning for
    each one down, which makes the status degraded."""
    servers = {"pbx-a": False, "pbx-b": True}
    ready, body = readiness(ReadinessInputs(
        ami_connected=True, store_writable=True, ami_servers=servers,
        warnings=("asterisk server pbx-a: AMI not connected; new calls go to the others",)))
    assert ready and body["status"] == "degraded"
    assert body["checks"]["ami"]["servers"] == {"pbx-a": "not connected", "pbx-b": "connected"}
    ready, body = readiness(ReadinessInputs(
        ami_connected=False, store_writable=True, ami_detail="AMI pbx-a, pbx-b",
        ami_servers={"pbx-a": False, "pbx-b": False}))
    assert not ready and body["reasons"] == ["ami: not connected to Asterisk: AMI pbx-a, pbx-b"]


async def test_routes() -> None:
    state = {"inputs": ReadinessInputs(True, True)}

    async def probe() -> ReadinessInputs:
        value = state["inputs"]
        if isinstance(value, Exception):
            raise value
        if value == "hang":
            await asyncio.sleep(10)
        return value

    app = web.Application()
    add_health_routes(app, probe, probe_deadline_s=0.1)
    async with TestClient(TestServer(app)) as client:
        assert (await client.get("/healthz")).status == 200
        assert (await client.get("/readyz")).status == 200
        state["inputs"] = ReadinessInputs(False, True)
        response = await client.get("/readyz")
        assert response.status == 503
        assert (await response.json())["reasons"] == ["ami: not connected to Asterisk"]
        state["inputs"] = RuntimeError("boom")
        response = await client.get("/readyz")
        assert response.status == 503 and "boom" in (await response.json())["reasons"][0]
        state["inputs"] = "hang"
        response = await client.get("/readyz")
        assert response.status == 503 and "did not answer" in (await response.json())["reasons"][0]
        assert (await client.get("/healthz")).status == 200


def test_warnings_make_a_ready_gateway_degraded_but_still_200() -> None:
    ready, body = readiness(ReadinessInputs(True, True, warnings=("numbers[0].context: gone",)))
    assert ready and body["status"] == "degraded" and body["warnings"] == [
        "numbers[0].context: gone"]
    ready, body = readiness(ReadinessInputs(False, True, warnings=("x",)))
    assert not ready and body["status"] == "not ready"
