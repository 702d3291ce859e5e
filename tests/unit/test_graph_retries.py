"""reject and terminate are retried through Meta's transient failures, against the simulator's
Graph API with injected faults (a test aid of the simulator: ``fail_next``)."""

from __future__ import annotations

import logging

import aiohttp
import pytest

from gateway.simulator.cloud_api import CloudApiSimulator
from gateway.whatsapp import graph as graph_module
from gateway.whatsapp.graph import GraphClient, GraphError
from tests import fakes

TOKEN = "unit-token"


@pytest.fixture
async def sim():
    simulator = CloudApiSimulator(app_secret="s", access_token=TOKEN)
    simulator.numbers[fakes.PNID] = "15550001111"
    await simulator.start()
    yield simulator
    await simulator.close()


@pytest.fixture
async def graph(sim, monkeypatch):
    monkeypatch.setattr(graph_module, "RETRY_DELAYS_S", (0.01, 0.02, 0.03, 0.04))
    cfg = fakes.config(whatsapp={"graph_url": sim.url, "access_token": TOKEN,
                                 "graph_timeout": 0.5})
    client = GraphClient(cfg.whatsapp)
    yield client
    await client.close()


def statuses(sim, action: str) -> list[int]:
    return [r.status for r in sim.requests if r.action == action]


def waits(caplog) -> list[str]:
    return [r.getMessage().rsplit("again in ", 1)[1] for r in caplog.records
            if "again in" in r.getMessage()]


async def test_terminate_retries_500_and_429_honouring_retry_after(sim, graph, caplog):
    sim.fail_next("terminate", 500)
    sim.fail_next("terminate", 429, retry_after=0.2)
    with caplog.at_level(logging.WARNING), pytest.raises(GraphError) as err:
        await graph.terminate(fakes.PNID, "wacid.unknown")
    # Meta's real answer after the faults: an unknown call is a refusal, not retried.
    assert err.value.code == 100 and not err.value.retryable
    assert statuses(sim, "terminate") == [500, 429, 400]
    assert waits(caplog) == ["0.0 s", "0.2 s"]


async def test_retry_after_is_capped(sim, graph, caplog, monkeypatch):
    monkeypatch.setattr(graph_module, "RETRY_AFTER_CAP_S", 0.05)
    sim.fail_next("reject", 429, retry_after=3600)
    with caplog.at_level(logging.WARNING), pytest.raises(GraphError):
        await graph.reject(fakes.PNID, "wacid.unknown")
    assert statuses(sim, "reject") == [429, 400] and waits(caplog) == ["0.1 s"]


async def test_retries_are_bounded_and_the_last_error_is_raised(sim, graph):
    sim.fail_next("terminate", 503, count=20)
    with pytest.raises(GraphError) as err:
        await graph.terminate(fakes.PNID, "wacid.x")
    assert err.value.http_status == 503 and err.value.retryable
    assert statuses(sim, "terminate") == [503] * 5


async def test_a_timeout_is_retried(sim, graph):
    sim.fail_next("terminate", 500, delay_s=1.0)  # longer than graph_timeout_s
    with pytest.raises(GraphError) as err:
        await graph.terminate(fakes.PNID, "wacid.x")
    assert err.value.code == 100  # the second attempt got Meta's answer
    assert len(statuses(sim, "terminate")) == 2


async def test_actions_that_are_not_safe_to_repeat_are_not_retried(sim, graph):
    sim.fail_next("accept", 500)
    sim.fail_next("connect", 500)
    with pytest.raises(GraphError):
        await graph.accept(fakes.PNID, "wacid.x", "v=0")
    with pytest.raises(GraphError):
        await graph.connect(fakes.PNID, "15550002222", "v=0")
    assert statuses(sim, "accept") == [500] and statuses(sim, "connect") == [500]


async def test_faults_can_be_injected_over_http(sim):
    async with aiohttp.ClientSession() as session:
        async with session.post(f"{sim.base_url}/_sim/faults",
                                json={"action": "reject", "status": 429, "count": 2,
                                      "retry_after": 1}) as resp:
            assert resp.status == 200 and (await resp.json())["count"] == 2
        async with session.post(f"{sim.base_url}/_sim/faults", json={"status": 1}) as resp:
            assert resp.status == 400
    (fault,) = sim.faults
    assert (fault.action, fault.status, fault.count, fault.retry_after) == ("reject", 429, 2, 1)
