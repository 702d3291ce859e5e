"""What pushing call events to CRMs costs a call, and how fast a queue drains.

Two numbers an operator asks about:

* **per-event overhead on the call path**: the time a call's observer notification spends in
  ``CrmEvents`` (serialise the event once, sign nothing yet, append to each URL's queue) — the
  only part that runs inside a call; measured over many events with the CRM unreachable, so
  no delivery competes for the loop;
* **delivery**: events per second one URL drains into a local aiohttp CRM that checks every
  signature (sequential, in order, one in flight), and the mean time per delivered event.

    .venv/bin/python benchmarks/crm_events.py --events 5000 [--urls 2] [--json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from gateway.calls.record import CallRecord, Direction  # noqa: E402
from gateway.config import CrmEventsSettings, Secret  # noqa: E402
from gateway.crm_events import CrmEvents  # noqa: E402
from gateway.metrics import GatewayMetrics  # noqa: E402
from tests.crm import SECRET, Crm  # noqa: E402


def record(i: int) -> CallRecord:
    rec = CallRecord(wacid=f"wacid.HBgLMTU1NTAwMDIyMjIVAgASGBQ{i:020d}AA==",
                     direction=Direction.INBOUND, phone_number_id="106540000000002",
                     from_number="15550002222", to_number="15550001111",
                     profile_name="Test User", channel_id=f"wa-{i:032x}",
                     channel=f"UnicastRTP/127.0.0.1:40000-0x{i:08x}", context="from-whatsapp")
    rec.answered_at = rec.webhook_at + 0.5
    return rec


def notify(events: CrmEvents, i: int) -> int:
    """The notifications one call makes; returns how many were CRM events."""
    rec = record(i)
    events.call_admitted(rec)
    events.call_setup(rec, "dialplan", 0.4)
    events.call_event(rec, "accepted")
    rec.ended_at = rec.answered_at + 30
    events.call_ended(rec)
    return 4


async def overhead(n_events: int, urls: int) -> dict:
    settings = CrmEventsSettings(urls=tuple(f"http://127.0.0.1:9/crm{u}" for u in range(urls)),
                                 secret=Secret(SECRET), queue_size=n_events * 2)
    events = CrmEvents(settings, GatewayMetrics(["106540000000002"], process=False))
    # Not started: nothing is delivered, so only the call-path cost is timed.
    count, i = 0, 0
    started = time.perf_counter()
    while count < n_events:
        count += notify(events, i)
        i += 1
    elapsed = time.perf_counter() - started
    return {"events": count, "urls": urls, "per_event_us": elapsed / count * 1e6}


async def delivery(n_events: int) -> dict:
    crm = Crm()
    await crm.start()
    settings = CrmEventsSettings(urls=(crm.url,), secret=Secret(SECRET),
                                 queue_size=n_events * 2)
    events = CrmEvents(settings, GatewayMetrics(["106540000000002"], process=False))
    await events.start()
    try:
        count, i = 0, 0
        started = time.perf_counter()
        while count < n_events:
            count += notify(events, i)
            i += 1
        await crm.wait_for(count, timeout=600)
        elapsed = time.perf_counter() - started
        ordered = [e["seq"] for e in crm.accepted] == list(range(1, count + 1))
    finally:
        await events.stop()
        await crm.close()
    return {"events": count, "events_per_s": count / elapsed,
            "per_delivery_ms": elapsed / count * 1e3, "in_order": ordered,
            "bad_signatures": crm.bad_signatures}


async def main(n_events: int, urls: int, as_json: bool) -> None:
    result = {"overhead": await overhead(n_events, urls),
              "delivery": await delivery(min(n_events, 2000))}
    if as_json:
        print(json.dumps(result, indent=2))
        return
    o, d = result["overhead"], result["delivery"]
    print(f"call-path overhead: {o['per_event_us']:.1f} µs per event with {o['urls']} CRM "
          f"URL(s) ({o['events']} events)")
    print(f"delivery to one local CRM: {d['events_per_s']:.0f} events/s, "
          f"{d['per_delivery_ms']:.2f} ms each, in order: {d['in_order']}, "
          f"bad signatures: {d['bad_signatures']} ({d['events']} events)")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=5000, help="events to time (default "
                                                                  "5000)")
    parser.add_argument("--urls", type=int, default=1, help="CRM URLs each event goes to")
    parser.add_argument("--json", action="store_true", help="print the numbers as JSON")
    args = parser.parse_args()
    asyncio.run(main(args.events, args.urls, args.json))
