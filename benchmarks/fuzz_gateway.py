"""100,000 hostile requests against a running gateway: does anything answer 5xx or raise?

Starts the simulator (as Meta's Graph API) and the gateway as its own process (AMI pointed at
a closed port: every call it admits is refused at Meta, which is what hostile traffic should
cost), then sends the cases tests/security/hostile.py generates — signed and unsigned webhooks
shaped like Meta's connect with CR/LF, AMI text, huge numbers, nesting and lone surrogates in
every field; credentials of every shape; /v1 bodies and queries out of every range. Prints:
5xx count, exceptions (tracebacks in the gateway's log), RSS before/after, p50/p99 latency.

    .venv/bin/python benchmarks/fuzz_gateway.py                 # 100,000 cases, ~10 min
    .venv/bin/python benchmarks/fuzz_gateway.py --cases 5000 --json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import socket
import statistics
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

import aiohttp
import yaml
from hypothesis import HealthCheck, Phase, given, seed, settings
from hypothesis import strategies as st

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from gateway.simulator.cloud_api import CloudApiSimulator  # noqa: E402
from tests.security import hostile  # noqa: E402

ACCESS_TOKEN = "fuzz-access-token"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


class Loop:
    """An event loop in a thread: the simulator and the HTTP client live there, while
    Hypothesis drives the cases from the main thread."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    def run(self, coro, timeout: float | None = None):
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)


async def start(tmp: Path) -> tuple[CloudApiSimulator, asyncio.subprocess.Process, str]:
    sim = CloudApiSimulator(app_secret=hostile.APP_SECRET, access_token=ACCESS_TOKEN)
    sim.numbers[hostile.PNID] = "15550000001"
    await sim.start()
    port = free_port()
    config = {
        "whatsapp": {"graph_url": sim.url, "access_token": ACCESS_TOKEN,
                     "app_secret": hostile.APP_SECRET, "verify_token": "fuzz-verify"},
        "numbers": [{"phone_number_id": hostile.PNID, "display_number": "15550000001",
                     "context": "from-whatsapp"}],
        "asterisk": {"ami": {"host": "127.0.0.1", "port": free_port(), "username": "gateway",
                             "secret": "fuzz-ami-secret", "connect_timeout": 0.5}},
        "http": {"listen": f"127.0.0.1:{port}"},
        "api": {"tokens": [hostile.API_TOKEN]},
        "store": {"path": str(tmp / "fuzz.sqlite3")},
    }
    (tmp / "gateway.yaml").write_text(yaml.safe_dump(config))
    log = (tmp / "gateway.log").open("wb")
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "gateway", "serve", "--config", str(tmp / "gateway.yaml"),
        "--workers", "1",
        "--log-level", "warning", cwd=ROOT, stdout=log, stderr=log)
    url = f"http://127.0.0.1:{port}"
    for _ in range(200):
        try:
            async with aiohttp.ClientSession() as s, s.get(f"{url}/healthz") as r:
                if r.status < 500:
                    break
        except aiohttp.ClientError:
            pass
        await asyncio.sleep(0.1)
    else:
        raise SystemExit(f"the gateway did not start; see {tmp / 'gateway.log'}")
    sim.webhook_url = f"{url}/webhook"
    return sim, proc, url


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--cases", type=int, default=100_000)
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="gw-fuzz-"))
    runner = Loop()
    sim, proc, url = runner.run(start(tmp), 60)
    http = runner.run(_session())
    statuses: Counter[int] = Counter()
    latencies: list[float] = []
    five_xx: list[str] = []
    client_errors: Counter[str] = Counter()
    time.sleep(1.0)  # let start-up allocations settle before the first RSS sample
    rss_before = rss_kib(proc.pid)
    started = time.monotonic()

    requests = st.one_of(hostile.webhook_requests(), hostile.api_requests())

    @settings(max_examples=args.cases, database=None, deadline=None,
              phases=[Phase.generate], suppress_health_check=list(HealthCheck))
    @given(requests)
    def case(request: hostile.Request) -> None:
        t0 = time.perf_counter()
        try:
            status = runner.run(hostile.send(http, url, request), 60)
        except (aiohttp.ClientError, TimeoutError) as exc:
            client_errors[type(exc).__name__] += 1
            return
        latencies.append(time.perf_counter() - t0)
        statuses[status] += 1
        if status >= 500 and len(five_xx) < 20:
            five_xx.append(repr(request)[:500])

    seed(args.seed)(case)()
    elapsed = time.monotonic() - started
    time.sleep(1.0)
    rss_after = rss_kib(proc.pid)

    runner.run(http.close())
    proc.terminate()
    runner.run(proc.wait(), 20)
    runner.run(sim.close())
    log_text = (tmp / "gateway.log").read_text(errors="replace")
    exceptions = log_text.count("Traceback (most recent call last)")
    ordered = sorted(latencies)
    result = {
        "cases": sum(statuses.values()) + sum(client_errors.values()),
        "seconds": round(elapsed, 1),
        "status_5xx": sum(n for s, n in statuses.items() if s >= 500),
        "exceptions_in_gateway_log": exceptions,
        "not_sendable_by_client": statuses.get(0, 0),
        "client_errors": dict(client_errors),
        "statuses": {str(k): v for k, v in sorted(statuses.items())},
        "rss_kib_before": rss_before, "rss_kib_after": rss_after,
        "latency_ms_p50": round(statistics.median(ordered) * 1000, 2) if ordered else None,
        "latency_ms_p99": round(ordered[int(len(ordered) * 0.99) - 1] * 1000, 2)
        if ordered else None,
        "first_5xx": five_xx, "gateway_log": str(tmp / "gateway.log"),
    }
    if args.json:
        print(json.dumps(result))
        return
    print(f"cases            {result['cases']} in {result['seconds']} s")
    print(f"5xx              {result['status_5xx']}")
    print(f"exceptions       {exceptions} (tracebacks in {result['gateway_log']})")
    print(f"statuses         {result['statuses']}  (0 = the client library refused to send)")
    print(f"client errors    {result['client_errors']}")
    print(f"RSS              {rss_before} KiB before, {rss_after} KiB after")
    print(f"latency          p50 {result['latency_ms_p50']} ms, p99 {result['latency_ms_p99']} ms")
    for line in five_xx:
        print("  5xx:", line)


async def _session() -> aiohttp.ClientSession:
    return aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30))


if __name__ == "__main__":
    main()
