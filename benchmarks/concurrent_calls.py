"""N concurrent simulated WhatsApp calls through the gateway into a real Asterisk Echo().

Prints what an operator sizing a server wants: the gateway process's CPU per call (one core =
100 %), call set-up times (webhook → pre_accept → dialplan start → media), packet loss, and
whether every caller heard its own tone back. The gateway runs as its own process (so its CPU
is measured alone); the simulator's phones and Asterisk run beside it on the same machine,
so on a 2-core box the numbers include that contention.

    .venv/bin/python benchmarks/concurrent_calls.py --calls 10 --hold 15 [--workers 2]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import aiohttp
import yaml
from prometheus_client.parser import text_string_to_metric_families

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from gateway.media import aiortc_hooks  # noqa: E402
from gateway.sandbox.local_asterisk import LocalAsterisk  # noqa: E402
from gateway.simulator import audio  # noqa: E402
from gateway.simulator.cloud_api import CloudApiSimulator  # noqa: E402
from tests.ports import free_tcp_port, instance_name, udp_range  # noqa: E402

PNID, DISPLAY = "100000000000002", "15550000002"
SECRET, TOKEN = "bench-secret", "bench-token"
CLK_TCK = os.sysconf("SC_CLK_TCK")


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


def cpu_seconds(pid: int) -> float:
    return sum(cpu_times(pid))


def percentile(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(round(q * (len(values) - 1))))]


async def metrics(url: str) -> dict[tuple[str, tuple], float]:
    async with aiohttp.ClientSession() as s, s.get(f"{url}/metrics") as resp:
        text = await resp.text()
    return {(smp.name, tuple(sorted(smp.labels.items()))): smp.value
            for fam in text_string_to_metric_families(text) for smp in fam.samples}


async def main(calls: int, hold: float, codec: str, workers: int) -> None:
    aiortc_hooks.install()
    aiortc_hooks.set_host_addresses(["127.0.0.1"])
    # Free ports and the suite's own names and UDP block: it can run beside a test suite.
    ami_port, http_port = free_tcp_port(), free_tcp_port()
    ast = LocalAsterisk(instance_name("bench"), ami_port=ami_port,
                        overlay_dir=ROOT / "tests" / "e2e" / "asterisk-overlay")
    await ast.start()
    sim = CloudApiSimulator(app_secret=SECRET, access_token=TOKEN)
    await sim.start()
    tmp = Path(tempfile.mkdtemp(prefix="gw-bench-"))
    config = {
        "whatsapp": {"graph_url": sim.url, "access_token": TOKEN, "app_secret": SECRET,
                     "verify_token": "v"},
        "numbers": [{"phone_number_id": PNID, "display_number": DISPLAY,
                     "context": "test-echo", "max_calls": 1000}],
        "asterisk": {"ami": {"port": ami_port, "username": "gateway",
                             "secret": "gateway-secret"},
                     "codec": codec},
        "media": {"webrtc_addresses": ["127.0.0.1"], "rtp_ports": udp_range(1400, 1000)},
        "http": {"listen": f"127.0.0.1:{http_port}"},
        "store": {"path": str(tmp / "bench.sqlite3")},
    }
    (tmp / "gateway.yaml").write_text(yaml.safe_dump(config))
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "gateway", "serve", "--config", str(tmp / "gateway.yaml"),
        "--workers", str(workers),
        "--log-level", "warning", cwd=ROOT, stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL)
    url = f"http://127.0.0.1:{http_port}"
    try:
        for _ in range(100):
            try:
                async with aiohttp.ClientSession() as s, s.get(f"{url}/readyz") as r:
                    if r.status == 200:
                        break
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.1)
        sim.webhook_url = f"{url}/webhook"
        idle_cpu0, t0 = cpu_seconds(proc.pid), time.monotonic()
        await asyncio.sleep(2)
        idle = (cpu_seconds(proc.pid) - idle_cpu0) / (time.monotonic() - t0)

        tones = [400 + 40 * i for i in range(calls)]
        placed = await asyncio.gather(*[
            sim.place_call(from_wa_id=f"1555100{i:04d}", phone_number_id=PNID,
                           display_phone_number=DISPLAY,
                           idle_audio=audio.tone(tones[i], 1.0, -18))
            for i in range(calls)])
        await asyncio.gather(*[asyncio.wait_for(c.accepted.wait(), 30) for c in placed])
        await asyncio.gather(*[asyncio.wait_for(c.media_connected.wait(), 30) for c in placed])
        await asyncio.sleep(2)  # settle
        (u0, s0), w0 = cpu_times(proc.pid), time.monotonic()
        t_start = placed[0].transcript.now()
        await asyncio.sleep(hold)
        (u1, s1), elapsed = cpu_times(proc.pid), time.monotonic() - w0
        busy = (u1 - u0 + s1 - s0) / elapsed
        user_share, sys_share = (u1 - u0) / elapsed, (s1 - s0) / elapsed
        ok = 0
        for i, c in enumerate(placed):
            heard = c.phone.heard(since=t_start, until=c.transcript.now())
            if heard.kind == "tone" and abs((heard.frequency or 0) - tones[i]) < 20:
                ok += 1
        m = await metrics(url)
        await asyncio.gather(*[c.hangup() for c in placed])
        await asyncio.sleep(1.5)
        m_end = await metrics(url)

        pre = [r.time - c.started_at for c in placed
               for r in sim.requests_for(c.call_id, "pre_accept")]
        acc = [r.time - c.started_at for c in placed
               for r in sim.requests_for(c.call_id, "accept")]

        def hist(stage: str) -> str:
            key = ("whatsapp_gateway_call_setup_seconds_sum",
                   tuple(sorted({"phone_number_id": PNID, "direction": "inbound",
                                 "stage": stage}.items())))
            count_key = (key[0].replace("_sum", "_count"), key[1])
            n = m.get(count_key, 0)
            return f"{1000 * m.get(key, 0) / n:.0f} ms" if n else "n/a"

        lost = sum(v for (n, _), v in m_end.items()
                   if n == "whatsapp_gateway_rtp_packets_lost_total")
        received = sum(v for (n, _), v in m_end.items()
                       if n == "whatsapp_gateway_rtp_packets_received_total")
        print(f"calls: {calls} concurrent, codec {codec}, held {hold:.0f} s, "
              f"{os.cpu_count()} cores, {workers} gateway worker(s)")
        print(f"gateway CPU: idle {100 * idle:.1f} %, with calls {100 * busy:.1f} % of one core "
              f"-> {100 * (busy - idle) / calls:.2f} % per call (user "
              f"{100 * user_share / calls:.2f} %, system {100 * sys_share / calls:.2f} %)")
        print(f"webhook -> pre_accept: median {1000 * statistics.median(pre):.0f} ms, "
              f"p95 {1000 * percentile(pre, 0.95):.0f} ms (at the simulated Graph API)")
        print(f"webhook -> accept:     median {1000 * statistics.median(acc):.0f} ms, "
              f"p95 {1000 * percentile(acc, 0.95):.0f} ms")
        print(f"gateway set-up means: pre_accept {hist('pre_accept')}, dialplan "
              f"{hist('dialplan')}, media {hist('media')}")
        print(f"echo check: {ok}/{calls} callers heard their own tone back")
        print(f"WhatsApp-side packets: {received:.0f} received, {lost:.0f} lost "
              f"({100 * lost / max(1, received + lost):.2f} %)")
    finally:
        if proc.returncode is None:
            proc.terminate()
            await proc.wait()
        await sim.close()
        await ast.stop()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=10)
    parser.add_argument("--hold", type=float, default=10.0)
    parser.add_argument("--codec", default="g722", choices=["g722", "ulaw", "alaw"])
    parser.add_argument("--workers", type=int, default=1,
                        help="serve --workers N (CPU is then the supervisor's and workers' sum)")
    args = parser.parse_args()
    asyncio.run(main(args.calls, args.hold, args.codec, args.workers))
