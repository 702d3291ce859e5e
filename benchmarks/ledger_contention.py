"""What a shared permission ledger costs a permission request, and that it holds under a race.

Several ledgers on one database stand for several gateways; each round, every gateway asks to
send a permission request to the same new user at the same moment (``reserve_request``: the
1-per-24 h rule checked and the request counted in one transaction). Prints the time one
reservation takes (median, 95th percentile, max), reservations per second, and how many users
got more than one request (must be 0).

    .venv/bin/python benchmarks/ledger_contention.py --backend postgres --gateways 2 --rounds 300
    .venv/bin/python benchmarks/ledger_contention.py --backend sqlite

``--backend postgres`` starts a throwaway PostgreSQL as the tests do (tests/pg.py), or uses
``--url``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from gateway.calls.permissions import PermissionLedger  # noqa: E402
from tests.pg import local_postgres  # noqa: E402

PNID = "106540000000002"
T0 = 1_767_225_600.0


@contextlib.contextmanager
def target(backend: str, url: str | None) -> Iterator[str]:
    if backend == "sqlite":
        with tempfile.TemporaryDirectory() as folder:
            yield str(Path(folder) / "gateway.sqlite3")
    elif url:
        yield url
    else:
        with local_postgres() as server:
            yield server.create_database()


async def timed(ledger: PermissionLedger, user: str, now: float,
                times: list[float]) -> bool:
    started = time.perf_counter()
    decision, _ = await ledger.reserve_request(PNID, user, now)
    times.append(time.perf_counter() - started)
    return decision.allowed


async def run(where: str, gateways: int, rounds: int) -> dict[str, float]:
    ledgers = [await PermissionLedger.open(where) for _ in range(gateways)]
    times: list[float] = []
    doubled = 0
    try:
        started = time.perf_counter()
        for round_ in range(rounds):
            user = f"1555{round_:07d}"
            allowed = await asyncio.gather(*(timed(led, user, T0 + round_, times)
                                             for led in ledgers))
            doubled += sum(allowed) != 1
        elapsed = time.perf_counter() - started
    finally:
        for led in ledgers:
            await led.close()
    times.sort()
    return {"reservations": len(times), "per_second": len(times) / elapsed,
            "median_ms": statistics.median(times) * 1000,
            "p95_ms": times[int(len(times) * 0.95) - 1] * 1000, "max_ms": times[-1] * 1000,
            "users_not_asked_exactly_once": doubled}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backend", choices=("sqlite", "postgres"), default="postgres")
    parser.add_argument("--url", help="an existing postgresql:// database (else one is started)")
    parser.add_argument("--gateways", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=300)
    args = parser.parse_args()
    with target(args.backend, args.url) as where:
        result = asyncio.run(run(where, args.gateways, args.rounds))
    print(f"{args.backend}, {args.gateways} gateways, {args.rounds} users asked by all at once:")
    for key, value in result.items():
        print(f"  {key}: {value:.2f}" if isinstance(value, float) else f"  {key}: {value}")
    if result["users_not_asked_exactly_once"]:
        sys.exit(1)


if __name__ == "__main__":
    main()
