"""N concurrent simulated WhatsApp calls through the gateway into a real Asterisk Echo().

What an operator sizing a server wants, for one gateway process on this machine: its CPU per
call (one core = 100 %, user and system), RSS per call, packets lost both ways, audio gaps,
added one-way latency (a marked tone's echo, minus Asterisk's own echo time, halved), webhook →
pre_accept at a given call arrival rate, DTMF delivered, echo correctness. The gateway is a
process of its own (its CPU is measured alone); the callers run in ``--phone-procs`` processes
of benchmarks/load_phones.py (pre-encoded media, full checks on ``--sample`` calls), Asterisk
beside them: on a 2-core box the numbers include that contention.

    .venv/bin/python benchmarks/concurrent_calls.py --calls 30 --hold 15 [--workers 2]
    .venv/bin/python benchmarks/concurrent_calls.py --calls 100 --mode passthrough --json
    .venv/bin/python benchmarks/concurrent_calls.py --calls 30 --anchor   # + aiortc stock
    .venv/bin/python benchmarks/concurrent_calls.py --sequential 1000     # RSS over calls
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp
import yaml
from aiohttp import web
from prometheus_client.parser import text_string_to_metric_families

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.asterisk_echo import asterisk_echo_rtt  # noqa: E402
from gateway.sandbox.local_asterisk import LocalAsterisk  # noqa: E402
from tests.ports import instance_name, udp_range  # noqa: E402

SECRET, TOKEN = "bench-secret", "bench-token"
CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE_MB = os.sysconf("SC_PAGE_SIZE") / 2**20
LOGS = Path(tempfile.mkdtemp(prefix="gw-bench-"))
"""The gateway's config and log, and the phone processes' logs, of this run."""


def free_port() -> int:
    """A TCP port free on 127.0.0.1 now: other benchmarks may run on this machine too."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _stat(pid: int) -> list[str]:
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()


def tree(pid: int) -> list[int]:
    """The process and its descendants (serve --workers N: the supervisor and its workers)."""
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                parents[int(entry.name)] = int(_stat(int(entry.name))[1])
            except (OSError, IndexError, ValueError):
                continue
    found, frontier = [pid], [pid]
    while frontier:
        children = [p for p, parent in parents.items() if parent in frontier]
        found += children
        frontier = children
    return found


def cpu_times(pid: int) -> tuple[float, float]:
    """(user, system) CPU seconds of a process and its children. On loopback, system time
    includes delivering each packet we send into the receiver's socket, which a real NIC would
    not charge us."""
    user = system = 0.0
    for p in tree(pid):
        try:
            fields = _stat(p)
        except OSError:
            continue
        user += int(fields[11]) / CLK_TCK
        system += int(fields[12]) / CLK_TCK
    return user, system


def rss_mb(pid: int) -> float:
    """Resident memory of a process and its children (the workers), in MiB."""
    total = 0.0
    for p in tree(pid):
        try:
            total += int(Path(f"/proc/{p}/statm").read_text().split()[1]) * PAGE_MB
        except OSError:
            continue
    return total


def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    values = sorted(values)
    return values[min(len(values) - 1, int(round(q * (len(values) - 1))))]


class Phones:
    """One benchmarks/load_phones.py process, driven one JSON line at a time."""

    def __init__(self, proc: asyncio.subprocess.Process):
        self.proc = proc

    @classmethod
    async def start(cls, *args: str) -> tuple[Phones, dict[str, Any]]:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, str(ROOT / "benchmarks" / "load_phones.py"), *args, cwd=ROOT,
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
            stderr=os.open(LOGS / f"phones-{os.urandom(3).hex()}.log",
                           os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644), limit=2**24)
        phones = cls(proc)
        return phones, await phones.read()

    async def read(self) -> dict[str, Any]:
        assert self.proc.stdout is not None
        line = await self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"a phone process died (its log is in {LOGS})")
        return json.loads(line)

    async def ask(self, **cmd: Any) -> dict[str, Any]:
        assert self.proc.stdin is not None
        self.proc.stdin.write((json.dumps(cmd) + "\n").encode())
        await self.proc.stdin.drain()
        return await self.read()

    async def stop(self) -> None:
        if self.proc.returncode is None:
            self.proc.terminate()
            await self.proc.wait()


async def all_of(groups: list[Phones], **cmd: Any) -> list[dict[str, Any]]:
    return list(await asyncio.gather(*[p.ask(**cmd) for p in groups]))


async def place(groups: list[Phones], calls: int, rate: float, sample: int) -> int:
    """Place ``calls`` at ``rate`` calls/s over all groups; returns how many connected."""
    share = [calls // len(groups) + (i < calls % len(groups)) for i in range(len(groups))]
    samples = [sample // len(groups) + (i < sample % len(groups)) for i in range(len(groups))]
    firsts = [sum(share[:i]) for i in range(len(groups))]
    got = await asyncio.gather(*[
        g.ask(cmd="place", n=share[i], interval=len(groups) / rate, sample=samples[i],
              first=firsts[i]) for i, g in enumerate(groups)])
    return sum(r["connected"] for r in got)


class GraphRouter:
    """The gateway's one ``whatsapp.graph_url``, forwarding each request to the phone process
    that owns the business number in its path (each process simulates one number)."""

    def __init__(self) -> None:
        self.routes: dict[str, str] = {}
        self.app = web.Application()
        self.app.router.add_route("*", "/{version}/{pnid}/{rest:.*}", self.forward)
        self.session: aiohttp.ClientSession | None = None

    async def forward(self, request: web.Request) -> web.Response:
        assert self.session is not None
        base = self.routes[request.match_info["pnid"]]
        url = f"{base.rsplit('/', 1)[0]}{request.rel_url}"
        headers = {k: v for k, v in request.headers.items() if k.lower() != "host"}
        async with self.session.request(request.method, url, headers=headers,
                                        data=await request.read()) as resp:
            return web.Response(status=resp.status, body=await resp.read(),
                                content_type=resp.content_type)

    async def start(self, port: int) -> None:
        self.session = aiohttp.ClientSession()
        runner = web.AppRunner(self.app, access_log=None)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", port).start()


async def metrics(url: str) -> dict[str, float]:
    async with aiohttp.ClientSession() as s, s.get(f"{url}/metrics") as resp:
        text = await resp.text()
    out: dict[str, float] = {}
    for fam in text_string_to_metric_families(text):
        for smp in fam.samples:
            out[smp.name] = out.get(smp.name, 0.0) + smp.value
    return out


async def start_gateway(args: argparse.Namespace, tmp: Path, pnids: list[str],
                        graph_url: str) -> asyncio.subprocess.Process:
    config = {
        "whatsapp": {"graph_url": graph_url, "access_token": TOKEN, "app_secret": SECRET,
                     "verify_token": "v"},
        "numbers": [{"phone_number_id": p, "display_number": f"1555{p[-7:]}",
                     "context": "test-echo", "max_calls": 1000,
                     "media": {"mode": args.mode}} for p in pnids],
        "asterisk": {"ami": {"port": args.ami_port, "username": "gateway",
                             "secret": "gateway-secret"}, "codec": args.codec},
        "media": {"webrtc_addresses": ["127.0.0.1"], "rtp_ports": udp_range(0, 2000)},
        "http": {"listen": f"127.0.0.1:{args.http_port}"},
        "store": {"path": str(tmp / "bench.sqlite3")},
    }
    (tmp / "gateway.yaml").write_text(yaml.safe_dump(config))
    profile = ["-m", "cProfile", "-o", args.profile] if args.profile else []
    proc = await asyncio.create_subprocess_exec(
        sys.executable, *profile, "-m", "gateway", "serve", "--config", str(tmp / "gateway.yaml"),
        "--log-level", "warning", "--workers", str(args.workers), cwd=ROOT,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=os.open(tmp / "gateway.log", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644))
    url = f"http://127.0.0.1:{args.http_port}"
    for _ in range(300):
        try:
            async with aiohttp.ClientSession() as s, s.get(f"{url}/readyz") as r:
                if r.status == 200:
                    return proc
        except aiohttp.ClientError:
            pass
        await asyncio.sleep(0.1)
    raise RuntimeError(f"the gateway did not get ready (see {tmp / 'gateway.log'})")


async def window(pid: int, seconds: float) -> tuple[float, float]:
    """(user, system) share of one core of ``pid`` over the next ``seconds``."""
    (u0, s0), t0 = cpu_times(pid), time.monotonic()
    await asyncio.sleep(seconds)
    (u1, s1), dt = cpu_times(pid), time.monotonic() - t0
    return (u1 - u0) / dt, (s1 - s0) / dt


async def concurrent(args: argparse.Namespace, gw: asyncio.subprocess.Process,
                     groups: list[Phones], ast_rtt: float | None) -> dict[str, Any]:
    idle_user, idle_sys = await window(gw.pid, 2.0)
    idle_rss = rss_mb(gw.pid)
    m0 = await metrics(f"http://127.0.0.1:{args.http_port}")
    connected = await place(groups, args.calls, args.rate, args.sample)
    await asyncio.sleep(2.0)  # settle: set-up work done, queues steady
    measuring = asyncio.ensure_future(window(gw.pid, args.hold))
    load = [asyncio.ensure_future(window(g.proc.pid, args.hold)) for g in groups]
    checks = [c for r in await all_of(groups, cmd="check") for c in r["checks"]]
    user, system = await measuring
    phones_cpu = sum(u + s for u, s in await asyncio.gather(*load))
    rss = rss_mb(gw.pid)
    ended = await all_of(groups, cmd="hangup")
    await asyncio.sleep(2.0)  # records written, metrics counted
    m1 = await metrics(f"http://127.0.0.1:{args.http_port}")
    phones = [p for r in ended for p in r["phones"]]
    pre = [t for r in ended for t in r["pre_accept_s"]]
    rtts = [c["rtt_s"] for c in checks if c["rtt_s"] is not None]
    added = [max(0.0, (r - (ast_rtt or 0.0)) / 2) for r in rtts]
    n = max(1, args.calls)

    def delta(name: str) -> float:
        return m1.get(name, 0.0) - m0.get(name, 0.0)

    return {
        "calls": args.calls, "connected": connected, "mode": args.mode,
        "codec": "as offered (PCMU/PCMA)" if args.mode == "passthrough" else args.codec,
        "workers": args.workers, "cores": os.cpu_count(), "hold_s": args.hold,
        "rate_calls_per_s": args.rate,
        "cpu_percent_per_call": round(100 * (user + system - idle_user - idle_sys) / n, 3),
        "cpu_user_percent_per_call": round(100 * (user - idle_user) / n, 3),
        "cpu_system_percent_per_call": round(100 * (system - idle_sys) / n, 3),
        "cpu_percent_total": round(100 * (user + system), 1),
        "load_generator_cpu_percent": round(100 * phones_cpu, 1),
        "rss_mb_per_call": round((rss - idle_rss) / n, 3), "rss_mb": round(rss, 1),
        "packets_lost": {
            "whatsapp_to_gateway": int(delta("whatsapp_gateway_rtp_packets_lost_total")),
            "gateway_to_whatsapp": sum(p["lost"] for p in phones)},
        "packets_to_phones": sum(p["packets"] for p in phones),
        "audio_gaps": sum(p["gaps"] for p in phones),
        "echo_ok": sum(1 for c in checks if c["echo_ok"]), "echo_checked": len(checks),
        "dtmf_sent": sum(c["dtmf_sent"] for c in checks),
        "dtmf_delivered": sum(min(c["dtmf_back"], c["dtmf_sent"]) for c in checks),
        "asterisk_echo_rtt_ms": None if ast_rtt is None else round(1000 * ast_rtt, 1),
        "latency_ms_p50": _ms(percentile(added, 0.5)),
        "latency_ms_p99": _ms(percentile(added, 0.99)),
        "pre_accept_ms_p50": _ms(percentile(pre, 0.5)),
        "pre_accept_ms_p99": _ms(percentile(pre, 0.99)),
    }


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(1000 * seconds, 1)


async def anchor(args: argparse.Namespace) -> float:
    """CPU % of one core per call of aiortc's stock pipeline at the same N."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, str(ROOT / "benchmarks" / "anchor_aiortc.py"),
        "--port", str(anchor_port := free_port()), cwd=ROOT, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.DEVNULL)
    groups: list[Phones] = []
    try:
        assert proc.stdout is not None
        await proc.stdout.readline()
        url = f"http://127.0.0.1:{anchor_port}/offer"
        for i in range(args.phone_procs):
            groups.append((await Phones.start("--answer-url", url, "--index", str(i)))[0])
        idle_user, idle_sys = await window(proc.pid, 2.0)
        await place(groups, args.calls, args.rate, 0)
        await asyncio.sleep(2.0)
        user, system = await window(proc.pid, args.hold)
        await all_of(groups, cmd="hangup")
        return round(100 * (user + system - idle_user - idle_sys) / max(1, args.calls), 3)
    finally:
        for g in groups:
            await g.stop()
        proc.terminate()
        await proc.wait()


async def sequential(args: argparse.Namespace, gw: asyncio.subprocess.Process,
                     groups: list[Phones]) -> dict[str, Any]:
    """``--sequential N`` calls, ``--calls`` at a time, each held ``--hold`` s: RSS after each
    batch. Flat means the last sample within ±5 % of the one after the first tenth (caches
    and pools are warm by then)."""
    batch = max(1, args.calls)
    samples: list[tuple[int, float]] = []
    done = 0
    while done < args.sequential:
        n = min(batch, args.sequential - done)
        await place(groups, n, args.rate, 0)
        await asyncio.sleep(args.hold)
        await all_of(groups, cmd="hangup")
        done += n
        await asyncio.sleep(0.5)
        samples.append((done, rss_mb(gw.pid)))
    warm = next(rss for calls, rss in samples if calls >= args.sequential / 10)
    last = samples[-1][1]
    return {"sequential_calls": done, "rss_mb_warm": round(warm, 1),
            "rss_mb_end": round(last, 1), "rss_drift_percent": round(100 * (last - warm) / warm, 2),
            "rss_mb_samples": [(c, round(r, 1)) for c, r in samples]}


async def main(args: argparse.Namespace) -> dict[str, Any]:
    tmp = LOGS
    args.ami_port = args.ami_port or free_port()
    args.http_port = args.http_port or free_port()
    router_port = free_port()
    ast = LocalAsterisk(instance_name("bench"), ami_port=args.ami_port,
                        overlay_dir=ROOT / "tests" / "e2e" / "asterisk-overlay")
    await ast.start()
    router = GraphRouter()
    groups: list[Phones] = []
    gw: asyncio.subprocess.Process | None = None
    try:
        await router.start(router_port)
        g711 = "PCMU,PCMA" if args.mode == "passthrough" else ""
        pnids = [f"1000000000001{i:02d}" for i in range(args.phone_procs)]
        for i, pnid in enumerate(pnids):
            phones, hello = await Phones.start(
                "--index", str(i), "--pnid", pnid, "--display", f"1555{pnid[-7:]}",
                "--webhook-url", f"http://127.0.0.1:{args.http_port}/webhook", "--g711", g711)
            groups.append(phones)
            router.routes[pnid] = hello["graph_url"]
        gw = await start_gateway(args, tmp, pnids, f"http://127.0.0.1:{router_port}/v25.0")
        ast_rtt = await asterisk_echo_rtt(args.ami_port)
        if args.sequential:
            result = {"mode": args.mode, "workers": args.workers,
                      **await sequential(args, gw, groups)}
        else:
            result = await concurrent(args, gw, groups, ast_rtt)
    finally:
        for g in groups:
            await g.stop()
        if gw is not None and gw.returncode is None:
            gw.terminate()
            await gw.wait()
        if router.session is not None:
            await router.session.close()
        await ast.stop()
    if args.anchor and not args.sequential:
        result["anchor_cpu_percent_per_call"] = await anchor(args)
        ours = result["cpu_percent_per_call"]
        result["anchor_ratio"] = round(result["anchor_cpu_percent_per_call"] / ours, 2) \
            if ours > 0 else None
    return result


def report(r: dict[str, Any]) -> str:
    if "sequential_calls" in r:
        return (f"{r['sequential_calls']} sequential calls ({r['mode']}): gateway RSS "
                f"{r['rss_mb_warm']} MB warm -> {r['rss_mb_end']} MB at the end "
                f"({r['rss_drift_percent']:+.1f} %)")
    lost = r["packets_lost"]
    lines = [
        f"calls: {r['connected']}/{r['calls']} connected, mode {r['mode']}, codec {r['codec']}, "
        f"{r['workers']} worker, held {r['hold_s']:g} s, {r['cores']} cores",
        f"gateway CPU: {r['cpu_percent_per_call']:.2f} % of a core per call (user "
        f"{r['cpu_user_percent_per_call']:.2f}, system {r['cpu_system_percent_per_call']:.2f});"
        f" {r['cpu_percent_total']:.0f} % in all (the callers: "
        f"{r['load_generator_cpu_percent']:.0f} %)",
        f"gateway RSS: {r['rss_mb_per_call']:.2f} MB per call ({r['rss_mb']:.0f} MB in all)",
        f"packets lost: WhatsApp->gateway {lost['whatsapp_to_gateway']}, gateway->WhatsApp "
        f"{lost['gateway_to_whatsapp']} (of {r['packets_to_phones']}); audio gaps "
        f"{r['audio_gaps']}",
        f"added one-way latency: p50 {r['latency_ms_p50']} ms, p99 {r['latency_ms_p99']} ms "
        f"(Asterisk's own echo {r['asterisk_echo_rtt_ms']} ms taken off)",
        f"webhook -> pre_accept at {r['rate_calls_per_s']:g} calls/s: p50 "
        f"{r['pre_accept_ms_p50']} ms, p99 {r['pre_accept_ms_p99']} ms",
        f"echo: {r['echo_ok']}/{r['echo_checked']} sampled calls heard their tone back; DTMF "
        f"{r['dtmf_delivered']}/{r['dtmf_sent']} delivered and echoed",
    ]
    if "anchor_cpu_percent_per_call" in r:
        lines.append(f"aiortc stock pipeline at the same N: {r['anchor_cpu_percent_per_call']:.2f}"
                     f" % per call ({r['anchor_ratio']}x the gateway)")
    return "\n".join(lines)


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--calls", type=int, default=10)
    p.add_argument("--hold", type=float, default=10.0, help="seconds measured with all up")
    p.add_argument("--rate", type=float, default=10.0, help="new calls per second")
    p.add_argument("--mode", default="opus", choices=["opus", "passthrough"])
    p.add_argument("--codec", default="g722", choices=["g722", "ulaw", "alaw"],
                   help="Asterisk's codec in opus mode (passthrough: ulaw/alaw as offered)")
    p.add_argument("--workers", type=int, default=1,
                   help="the gateway's media processes (serve --workers N)")
    p.add_argument("--phone-procs", type=int, default=2)
    p.add_argument("--sample", type=int, default=5, help="calls with the full checks")
    p.add_argument("--anchor", action="store_true", help="also aiortc's stock pipeline")
    p.add_argument("--sequential", type=int, default=0, metavar="N")
    p.add_argument("--json", action="store_true")
    p.add_argument("--profile", metavar="PATH", help="run the gateway under cProfile, into PATH")
    p.add_argument("--ami-port", type=int, default=0, help="0: a free port")
    p.add_argument("--http-port", type=int, default=0, help="the gateway's; 0: a free port")
    a = p.parse_args()
    out = asyncio.run(main(a))
    print(json.dumps(out) if a.json else report(out))
