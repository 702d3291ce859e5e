"""Soak: churn simulated WhatsApp calls through a gateway process for a bounded time, with
faults injected, and show whether anything is left behind.

Against the real Asterisk (sandbox chroot) and the simulator, the gateway running as its own
process: calls are placed back to back by a few workers, each one a scenario picked at random:
a normal answered call, the user hanging up at a random stage of set-up, the dialplan hanging
up, Meta answering a Graph request with 500 (pre_accept/accept of one call, or the next
terminate/reject with 500 or 429), a redelivered connect webhook, the phone
vanishing mid-call (its media stops without a goodbye). Before (after a warm-up call) and
after (once the gateway is idle) it prints the gateway's open fds, RSS and asyncio tasks, the
Asterisk channels the gateway made, and call records against calls placed; in between a
sample every ``--every`` seconds, to tell a leak (growing at each sample) from a cache
filling once. ``--json`` prints the same as one JSON object.

    .venv/bin/python benchmarks/soak.py --seconds 60
    .venv/bin/python benchmarks/soak.py --seconds 300 --workers 6 --json
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import os
import random
import sqlite3
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import aiohttp
import yaml
from aiohttp import web
from prometheus_client.parser import text_string_to_metric_families

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from gateway.media import aiortc_hooks  # noqa: E402
from gateway.sandbox.local_asterisk import LocalAsterisk  # noqa: E402
from gateway.simulator import audio  # noqa: E402
from gateway.simulator.cloud_api import CloudApiSimulator  # noqa: E402
from tests.ports import free_tcp_port, udp_range  # noqa: E402

SECRET, TOKEN, VERIFY = "soak-secret", "soak-token", "soak-verify-token"
NUMBERS = {  # phone_number_id -> (display number, context of tests/e2e/asterisk-overlay)
    "100000000000002": ("15550000002", "test-echo"),
    "100000000000004": ("15550000004", "test-hangup"),
    "100000000000006": ("15550000006", "test-wait"),
}
ECHO, HANGUP, WAIT = NUMBERS
SCENARIOS = ("normal", "hangup_ringing", "hangup_after_accept", "dialplan_hangup",
             "graph_500", "graph_error_on_end", "duplicate_connect", "phone_vanishes")


@dataclass
class Sample:
    at_s: float
    calls_placed: int
    fds: int
    rss_kib: int
    asyncio_tasks: int
    asterisk_channels: int
    active_calls: float


class GraphFaults:
    """Answers the next Graph ``calls`` request of a chosen call and action with HTTP 500 (a
    Meta-shaped error body): the simulator itself stays faithful, the fault is injected in
    front of it."""

    def __init__(self) -> None:
        self.armed: dict[str, str] = {}  # call_id -> action to fail once
        self.injected = 0

    @web.middleware
    async def middleware(self, request: web.Request, handler):
        if request.method == "POST" and request.path.endswith("/calls") and self.armed:
            body = await request.json()
            if self.armed.get(body.get("call_id")) == body.get("action"):
                del self.armed[body["call_id"]]
                self.injected += 1
                return web.json_response({"error": {
                    "message": "An unexpected error has occurred. Please retry your request "
                               "later.", "type": "OAuthException", "code": 2,
                    "is_transient": True, "fbtrace_id": "soak"}}, status=500)
        return await handler(request)


def proc_status(pid: int) -> tuple[int, int]:
    """(open fds, RSS KiB) of a process."""
    fds = len(os.listdir(f"/proc/{pid}/fd"))
    rss = next(int(line.split()[1]) for line in Path(f"/proc/{pid}/status").read_text()
               .splitlines() if line.startswith("VmRSS:"))
    return fds, rss


async def http_json(session: aiohttp.ClientSession, url: str) -> dict:
    async with session.get(url) as resp:
        return await resp.json()


async def active_calls(session: aiohttp.ClientSession, url: str) -> float:
    async with session.get(f"{url}/metrics") as resp:
        text = await resp.text()
    return sum(s.value for fam in text_string_to_metric_families(text) for s in fam.samples
               if s.name == "whatsapp_gateway_active_calls")


async def our_channels(ast: LocalAsterisk, rtp_prefix: str) -> int:
    out = await ast.cli("core show channels concise")
    return sum(1 for line in out.splitlines() if rtp_prefix in line)


async def sample(t0: float, placed: int, pid: int, ast: LocalAsterisk, rtp_prefix: str,
                 session: aiohttp.ClientSession, url: str) -> Sample:
    fds, rss = proc_status(pid)
    health = await http_json(session, f"{url}/healthz")
    return Sample(at_s=round(time.monotonic() - t0, 1), calls_placed=placed, fds=fds,
                  rss_kib=rss, asyncio_tasks=int(health.get("asyncio_tasks", -1)),
                  asterisk_channels=await our_channels(ast, rtp_prefix),
                  active_calls=await active_calls(session, url))


async def one_call(sim: CloudApiSimulator, faults: GraphFaults, scenario: str, n: int,
                   rng: random.Random) -> None:
    """Place one call and drive it through ``scenario``; returns once it has ended."""
    pnid = {"dialplan_hangup": HANGUP, "graph_error_on_end": HANGUP,
            "normal": ECHO}.get(scenario, WAIT)
    display = NUMBERS[pnid][0]
    caller = f"1555{n % 10_000_000:07d}"
    if scenario == "graph_500":
        # Which Graph request fails is only known once the call id is: arm it from the
        # listener that sees each new call before its connect webhook goes out.
        action = rng.choice(("pre_accept", "accept"))

        def arm(call) -> None:
            if call.wa_id == caller:
                faults.armed[call.call_id] = action
        sim.call_listeners.append(arm)
    if scenario == "graph_error_on_end":
        # The simulator's own fault injection: the next terminate or reject (whichever call
        # sends it) gets a 500 or a 429, which the gateway must retry.
        status = rng.choice((500, 429))
        sim.fail_next(rng.choice(("terminate", "reject")), status,
                      retry_after=0.2 if status == 429 else None)
    try:
        call = await sim.place_call(from_wa_id=caller, phone_number_id=pnid,
                                    display_phone_number=display,
                                    idle_audio=audio.tone(400 + n % 40 * 20, 1.0, -18)
                                    if scenario == "normal" else None)
    finally:
        if scenario == "graph_500":
            sim.call_listeners.remove(arm)
    if scenario == "hangup_ringing":
        await asyncio.sleep(rng.uniform(0.0, 0.6))  # somewhere in pre_accept/ICE/Originate
        await call.hangup()
    elif scenario == "duplicate_connect":
        if call.webhooks:
            await sim.redeliver(call.webhooks[0])
        await _answered_then(call, rng.uniform(0.3, 1.5))
    elif scenario == "phone_vanishes":
        if await _wait(call.accepted, 15):
            await asyncio.sleep(rng.uniform(0.2, 1.0))
            await call.phone.leg.close()  # no terminate from Meta: the media just stops
    elif scenario in ("normal", "hangup_after_accept"):
        await _answered_then(call, rng.uniform(0.5, 2.5) if scenario == "normal"
                             else rng.uniform(0.0, 0.1))
    # dialplan_hangup, graph_error_on_end and graph_500 end by themselves.
    if not await _wait(call.ended, 40):
        await call.hangup()  # the gateway left it up: counted as half-open in the report
        call.soak_half_open = True  # type: ignore[attr-defined]


async def _wait(event: asyncio.Event, timeout: float) -> bool:
    try:
        await asyncio.wait_for(event.wait(), timeout)
    except TimeoutError:
        return False
    return True


async def _answered_then(call, hold: float) -> None:
    if await _wait(call.accepted, 15):
        await asyncio.sleep(hold)
    await call.hangup()


def write_files(tmp: Path, config: dict):
    """The gateway's config file, and its log file opened for the process's output."""
    (tmp / "gateway.yaml").write_text(yaml.safe_dump(config))
    return open(tmp / "gateway.log", "wb")  # noqa: SIM115 - the process writes it until the end


def store_counts(db: Path) -> dict[str, int]:
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        rows = conn.execute("SELECT outcome, COUNT(*) FROM calls GROUP BY outcome").fetchall()
    finally:
        conn.close()
    return dict(rows)


async def main(args: argparse.Namespace) -> dict:
    rng = random.Random(args.seed)
    aiortc_hooks.install()
    aiortc_hooks.set_host_addresses(["127.0.0.1"])
    ami_port = args.ami_port or free_tcp_port()
    ast = LocalAsterisk("soak", ami_port=ami_port,
                        overlay_dir=ROOT / "tests" / "e2e" / "asterisk-overlay")
    await ast.start()
    faults = GraphFaults()
    sim = CloudApiSimulator(app_secret=SECRET, access_token=TOKEN)
    sim.app.middlewares.append(faults.middleware)
    for pnid, (display, _ctx) in NUMBERS.items():
        sim.numbers[pnid] = display
    await sim.start()
    tmp = Path(tempfile.mkdtemp(prefix="gw-soak-"))
    http_port = free_tcp_port()
    rtp_ports = args.rtp_ports or udp_range(1000, 300)
    config = {
        "whatsapp": {"graph_url": sim.url, "access_token": TOKEN, "app_secret": SECRET,
                     "verify_token": VERIFY},
        "numbers": [{"phone_number_id": pnid, "display_number": display, "context": ctx,
                     "max_calls": 1000} for pnid, (display, ctx) in NUMBERS.items()],
        "asterisk": {"ami": {"port": ami_port, "username": "gateway",
                             "secret": "gateway-secret"}},
        "media": {"webrtc_addresses": ["127.0.0.1"], "rtp_ports": rtp_ports,
                  "webrtc_ports": args.webrtc_ports or udp_range(1300, 300)},
        "http": {"listen": f"127.0.0.1:{http_port}"},
        "store": {"path": str(tmp / "soak.sqlite3")},
    }
    log = write_files(tmp, config)
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "gateway", "serve", "--config", str(tmp / "gateway.yaml"),
        "--workers", "1",
        "--log-level", "info", cwd=ROOT, stdout=log, stderr=asyncio.subprocess.STDOUT)
    url = f"http://127.0.0.1:{http_port}"
    rtp_prefix = f"UnicastRTP/127.0.0.1:{rtp_ports.split('-')[0][:3]}"
    result: dict = {}
    try:
        async with aiohttp.ClientSession() as session:
            for _ in range(600):  # up to 60 s (a cold start imports aiortc, PyAV)
                try:
                    async with session.get(f"{url}/readyz") as r:
                        if r.status == 200:
                            break
                except aiohttp.ClientError:
                    pass
                await asyncio.sleep(0.1)
            else:
                raise SystemExit(f"the gateway never got ready; see {tmp / 'gateway.log'}")
            sim.webhook_url = f"{url}/webhook"

            counter = iter(range(1, 10**9))
            placed: collections.Counter[str] = collections.Counter()
            await one_call(sim, faults, "normal", next(counter), rng)  # warm-up
            placed["warm-up"] += 1
            await settle(session, url, ast, rtp_prefix)
            t0 = time.monotonic()
            before = await sample(t0, 0, proc.pid, ast, rtp_prefix, session, url)
            samples = [before]
            deadline = t0 + args.seconds

            slowest: list[tuple[float, str]] = []

            async def worker() -> None:
                while time.monotonic() < deadline:
                    scenario = rng.choice(SCENARIOS)
                    placed[scenario] += 1
                    started = time.monotonic()
                    await one_call(sim, faults, scenario, next(counter), rng)
                    slowest.append((round(time.monotonic() - started, 1), scenario))
                    slowest.sort(reverse=True)
                    del slowest[5:]

            async def sampler() -> None:
                while time.monotonic() < deadline:
                    await asyncio.sleep(args.every)
                    samples.append(await sample(t0, sum(placed.values()) - 1, proc.pid, ast,
                                                rtp_prefix, session, url))

            await asyncio.gather(sampler(), *[worker() for _ in range(args.workers)])
            idle = await settle(session, url, ast, rtp_prefix)
            after = await sample(t0, sum(placed.values()) - 1, proc.pid, ast, rtp_prefix,
                                 session, url)
            samples.append(after)
            if args.linger > 0:  # idle keep-alive connections close after their timeouts
                await asyncio.sleep(args.linger)
                after = await sample(t0, sum(placed.values()) - 1, proc.pid, ast, rtp_prefix,
                                     session, url)
                samples.append(after)

        user_calls = [c for c in sim.calls.values() if not c.outbound]
        records = store_counts(tmp / "soak.sqlite3")
        result = {
            "seconds": args.seconds, "workers": args.workers, "seed": args.seed,
            "linger_s": args.linger,
            "calls_placed": len(user_calls), "scenarios": dict(placed),
            "graph_faults_injected": faults.injected,
            "settled_in_s": idle, "slowest_calls_s": slowest,
            "before": asdict(before), "after": asdict(after),
            "samples": [asdict(s) for s in samples],
            "records": sum(records.values()), "records_by_outcome": records,
            "records_active": records.get("active", 0),
            "calls_left_up_by_gateway": sum(1 for c in user_calls
                                            if getattr(c, "soak_half_open", False)),
            "calls_not_ended_at_meta": sum(1 for c in user_calls if not c.is_over),
            "gateway_log": str(tmp / "gateway.log"),
        }
    finally:
        if proc.returncode is None:
            proc.terminate()
            await proc.wait()
        log.close()
        await sim.close()
        await ast.stop()
    return result


async def settle(session: aiohttp.ClientSession, url: str, ast: LocalAsterisk,
                 rtp_prefix: str, timeout: float = 60.0) -> float | None:
    """Until the gateway reports no active call and Asterisk holds none of its channels;
    returns how long that took (None: it never got there)."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        if await active_calls(session, url) == 0 and await our_channels(ast, rtp_prefix) == 0:
            return round(time.monotonic() - t0, 1)
        await asyncio.sleep(0.25)
    return None


def report(r: dict) -> None:
    b, a = r["before"], r["after"]
    print(f"soak: {r['seconds']:g} s, {r['workers']} workers, seed {r['seed']}: "
          f"{r['calls_placed']} calls ({', '.join(f'{k} {v}' for k, v in r['scenarios'].items())})"
          f", {r['graph_faults_injected']} Graph 500s injected")
    print(f"{'':22}{'before':>10}{'after':>10}")
    for key, label in (("fds", "open fds"), ("rss_kib", "RSS KiB"),
                       ("asyncio_tasks", "asyncio tasks"),
                       ("asterisk_channels", "Asterisk channels"),
                       ("active_calls", "active calls")):
        print(f"{label:22}{b[key]:>10.0f}{a[key]:>10.0f}")
    print("samples (s: calls fds rss_kib tasks channels active):")
    for s in r["samples"]:
        print(f"  {s['at_s']:>6}: {s['calls_placed']:>5} {s['fds']:>5} {s['rss_kib']:>8} "
              f"{s['asyncio_tasks']:>5} {s['asterisk_channels']:>4} {s['active_calls']:>4.0f}")
    print(f"records: {r['records']} for {r['calls_placed']} calls "
          f"({', '.join(f'{k} {v}' for k, v in sorted(r['records_by_outcome'].items()))}); "
          f"still active: {r['records_active']}")
    print(f"left up by the gateway: {r['calls_left_up_by_gateway']}; not ended at Meta: "
          f"{r['calls_not_ended_at_meta']}; idle again after {r['settled_in_s']} s")
    print("slowest calls: " + ", ".join(f"{sc} {t} s" for t, sc in r["slowest_calls_s"]))
    print(f"gateway log: {r['gateway_log']}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=60.0, help="how long to churn")
    parser.add_argument("--workers", type=int, default=4, help="calls in flight at once")
    parser.add_argument("--every", type=float, default=10.0, help="seconds between samples")
    parser.add_argument("--seed", type=int, default=8)
    parser.add_argument("--linger", type=float, default=0.0,
                        help="after the churn, wait this long idle before the 'after' numbers "
                             "(HTTP keep-alive connections close after 75 s)")
    parser.add_argument("--ami-port", type=int, default=None, help="default: a free port")
    parser.add_argument("--rtp-ports", default=None, help="default: from $WA_TEST_AMI_PORT")
    parser.add_argument("--webrtc-ports", default=None)
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args()
    out = asyncio.run(main(args))
    print(json.dumps(out, indent=2)) if args.json else report(out)
