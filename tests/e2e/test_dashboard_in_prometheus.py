"""The Grafana dashboard's queries, run by a real Prometheus scraping a gateway that took calls:
every expression must parse, and the ones an operator looks at first must show the calls.

Prometheus comes from Debian's package (scripts/setup.sh installs it); the test is skipped
only where it cannot be installed, never silently where it is.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import socket
from pathlib import Path

import aiohttp
import pytest
import yaml

from .conftest import Stack

pytestmark = pytest.mark.asterisk

ROOT = Path(__file__).resolve().parents[2]
DASHBOARD = ROOT / "monitoring" / "grafana" / "dashboards" / "whatsapp-gateway.json"
PROMETHEUS = shutil.which("prometheus")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


PROM_PORT = free_port()

# Grafana fills these in; any valid value exercises the query the same way.
GRAFANA_VARIABLES = {"$__rate_interval": "1m", "$__range": "10m", "$number": ".*",
                     "$direction": ".*", "$instance": ".*"}


def dashboard_queries() -> list[tuple[str, str]]:
    out = []
    for panel in json.loads(DASHBOARD.read_text())["panels"]:
        for target in panel.get("targets", []):
            expr = target["expr"]
            for name, value in GRAFANA_VARIABLES.items():
                expr = expr.replace(name, value)
            out.append((panel["title"], expr))
    return out


async def query(session: aiohttp.ClientSession, expr: str) -> dict:
    async with session.get(f"http://127.0.0.1:{PROM_PORT}/api/v1/query",
                           params={"query": expr}) as resp:
        return await resp.json()


@pytest.mark.skipif(PROMETHEUS is None, reason="prometheus is not installed (scripts/setup.sh "
                                               "installs Debian's package)")
async def test_every_dashboard_query_runs_in_prometheus_and_shows_the_calls(stack: Stack,
                                                                            tmp_path):
    target = stack.gateway.url.removeprefix("http://")
    config = {"global": {"scrape_interval": "1s"},
              "scrape_configs": [{"job_name": "whatsapp-gateway",
                                  "static_configs": [{"targets": [target]}]}]}
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(config))
    proc = await asyncio.create_subprocess_exec(
        PROMETHEUS, f"--config.file={tmp_path / 'prometheus.yml'}",
        f"--storage.tsdb.path={tmp_path / 'data'}", f"--web.listen-address=127.0.0.1:{PROM_PORT}",
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL)
    try:
        async with aiohttp.ClientSession() as session:
            # A scrape before the calls (the counters at 0), then the calls, then scrapes after.
            await scraped(session, "count(whatsapp_gateway_calls_total) > 0")
            call = await stack.place_call("test-echo")
            await asyncio.wait_for(call.accepted.wait(), 10)
            await call.phone.press("1")
            await call.hangup()
            rejected = await stack.sim.place_call(from_wa_id="15550003333",
                                                  phone_number_id="999999999999999")
            await asyncio.wait_for(rejected.ended.wait(), 10)
            await stack.wait_idle()
            await scraped(session, "sum(whatsapp_gateway_calls_total) >= 2")
            await scraped(session, "sum(increase(whatsapp_gateway_calls_total[1m])) >= 1")

            empty = []
            for title, expr in dashboard_queries():
                answer = await query(session, expr)
                assert answer["status"] == "success", (title, expr, answer)
                if not answer["data"]["result"]:
                    empty.append(title)

            # What an operator opens first must show the two calls just made.
            titles = {t for t, _ in dashboard_queries()}
            for title in ("Active calls", "Calls by outcome", "Why calls ended (time range)",
                          "Answered (time range)", "Webhooks by result",
                          "Set-up time p50 / p95 by stage"):
                assert title in titles and title not in empty, (title, empty)
            answered = await query(session, 'sum(increase(whatsapp_gateway_calls_total'
                                            '{outcome="answered"}[10m]))')
            assert float(answered["data"]["result"][0]["value"][1]) >= 0.9  # extrapolated ~1
            reasons = await query(session, 'sum by (reason) '
                                           '(whatsapp_gateway_call_end_reasons_total) > 0')
            assert {r["metric"]["reason"] for r in reasons["data"]["result"]} == \
                {"normal", "unknown_number"}
    finally:
        proc.terminate()
        await asyncio.wait_for(proc.wait(), 10)


async def scraped(session: aiohttp.ClientSession, condition: str, timeout: float = 30) -> None:
    """Until Prometheus's data satisfies ``condition`` (it scrapes every second)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        try:
            if (await query(session, condition)).get("data", {}).get("result"):
                return
        except aiohttp.ClientError:
            pass  # not listening yet
        assert loop.time() < deadline, f"Prometheus never saw: {condition}"
        await asyncio.sleep(0.2)  # polling an outside process: there is no event to wait on
