"""The whole product on loopback: the WhatsApp simulator, the gateway, and the real Asterisk.

Each business number of the test config routes into one scenario context of
asterisk-overlay/extensions_local.conf (or the sample IVR), so a test picks its dialplan by
the number the simulated user calls.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from gateway.app import Gateway
from gateway.config import parse_config
from gateway.media import aiortc_hooks
from gateway.sandbox.local_asterisk import LocalAsterisk
from gateway.simulator.cloud_api import CloudApiSimulator
from tests.ports import udp_range

PAYLOADS = Path(__file__).resolve().parents[1] / "fixtures" / "payloads"
APP_SECRET = "e2e-app-secret"
ACCESS_TOKEN = "e2e-access-token"
API_TOKEN = "e2e-api-token"

# phone_number_id -> (display number, context)
NUMBERS = {
    "100000000000001": ("15550000001", "test-marker"),
    "100000000000002": ("15550000002", "test-echo"),
    "100000000000003": ("15550000003", "test-read"),
    "100000000000004": ("15550000004", "test-hangup"),
    "100000000000005": ("15550000005", "from-whatsapp"),
    "100000000000006": ("15550000006", "test-wait"),
    "100000000000007": ("15550000007", "from-whatsapp-recorded"),
    "100000000000008": ("15550000008", "from-whatsapp-queue"),
    # The number the sample [to-whatsapp] context calls from (outbound tests).
    "106540000000002": ("15550001111", "from-whatsapp"),
}


def number_for(context: str) -> tuple[str, str]:
    for pnid, (display, ctx) in NUMBERS.items():
        if ctx == context:
            return pnid, display
    raise KeyError(context)


@dataclass
class Stack:
    sim: CloudApiSimulator
    gateway: Gateway
    asterisk: LocalAsterisk
    events: list[dict] = field(default_factory=list)
    _waiters: list[tuple] = field(default_factory=list)

    def on_event(self, ev: dict) -> None:
        self.events.append(ev)
        for predicate, fut in list(self._waiters):
            if not fut.done() and predicate(ev):
                fut.set_result(ev)

    async def wait_event(self, predicate, timeout: float = 15.0) -> dict:
        for ev in self.events:
            if predicate(ev):
                return ev
        fut = asyncio.get_running_loop().create_future()
        self._waiters.append((predicate, fut))
        return await asyncio.wait_for(fut, timeout)

    async def place_call(self, context: str, **kwargs):
        pnid, display = number_for(context)
        kwargs.setdefault("from_wa_id", "15550002222")
        return await self.sim.place_call(phone_number_id=pnid, display_phone_number=display,
                                         **kwargs)

    async def channels(self) -> list[dict]:
        return [c for c in await self.gateway.ami.core_show_channels()
                if c.get("Uniqueid", "").startswith("wa-")]

    async def records_written(self, timeout: float = 10.0) -> None:
        """Until the call store and the ledger have written what ended calls left them (a
        call's record is saved by a write queued as it ends, so it can still be in flight)."""
        for part in (self.gateway.store, self.gateway.ledger):
            if part is not None:
                await asyncio.wait_for(part.writes.drained.wait(), timeout)

    async def wait_idle(self, timeout: float = 10.0) -> None:
        """Until the gateway holds no call and Asterisk no channel of ours."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            await self.gateway.calls.settle(max(0.1, deadline - loop.time()))
            if not self.gateway.calls.live_calls() and not await self.channels():
                await self.records_written(max(0.1, deadline - loop.time()))
                return
            if loop.time() > deadline:
                raise AssertionError(f"not idle: calls={self.gateway.calls.live_calls()} "
                                     f"channels={await self.channels()}")
            # Asterisk removes a hung-up channel asynchronously: poll its own listing.
            await asyncio.sleep(0.05)


def numbers_config(extra: dict[str, dict] | None = None) -> list[dict]:
    """The test numbers as config, with ``extra`` fields for some, named by context or
    phone_number_id: ``numbers_config({"test-wait": {"max_calls": 1}})``."""
    extra = extra or {}
    return [{"phone_number_id": pnid, "display_number": display, "context": ctx,
             **extra.get(pnid, extra.get(ctx, {}))} for pnid, (display, ctx) in NUMBERS.items()]


def make_config(graph_url: str, ami_port: int, **overrides):
    """The e2e gateway config; each override replaces a top-level key, or for a dict is merged
    into it (``media={"no_media_timeout": 2}``; a None value removes that key:
    ``asterisk={"ami": None, "servers": [...]}``)."""
    data = {
        "whatsapp": {"graph_url": graph_url, "access_token": ACCESS_TOKEN,
                     "app_secret": APP_SECRET, "verify_token": "e2e-verify"},
        "numbers": numbers_config(),
        "asterisk": {"ami": {"host": "127.0.0.1", "port": ami_port, "username": "gateway",
                             "secret": "gateway-secret"}, "codec": "g722"},
        "media": {"webrtc_addresses": ["127.0.0.1"], "rtp_ports": udp_range(0, 200),
                  "webrtc_ports": udp_range(200, 200)},
        "http": {"listen": "127.0.0.1:0"},
        "api": {"tokens": [API_TOKEN]},
    }
    for key, value in overrides.items():
        if isinstance(value, dict):
            value = {k: v for k, v in {**data.get(key, {}), **value}.items() if v is not None}
        data[key] = value
    return parse_config(data, env={})


async def start_simulator() -> CloudApiSimulator:
    """The simulated Meta, started, with the business numbers the tests' dialplan routes."""
    sim = CloudApiSimulator(app_secret=APP_SECRET, access_token=ACCESS_TOKEN)
    for pnid, (display, _context) in NUMBERS.items():
        sim.numbers[pnid] = display
    await sim.start()
    return sim


@pytest.fixture(autouse=True)
async def no_channel_outlives_its_test(request: pytest.FixtureRequest) -> AsyncIterator[None]:
    """Each test starts on an empty Asterisk: what a test left up (an agent's ``Local``
    channel still in ``Wait()``, a channel of a call that failed its assertions) is hung up
    after it, so one failure cannot cascade into the next test's channel counts or dials. The
    tests that claim "no channel left" check it themselves before this runs."""
    yield
    if "asterisk" not in request.fixturenames:
        return
    pbx: LocalAsterisk = request.getfixturevalue("asterisk")
    if pbx.running:
        with contextlib.suppress(Exception):
            await pbx.cli("channel request hangup all")


@contextlib.asynccontextmanager
async def open_stack(asterisk: LocalAsterisk, /, **config: Any) -> AsyncIterator[Stack]:
    """The simulator and a started gateway (``config``: sections for :func:`make_config`,
    ``store`` at least), stopped at the end."""
    aiortc_hooks.install()
    aiortc_hooks.set_host_addresses(["127.0.0.1", "::1"])
    sim = await start_simulator()
    try:
        gateway = Gateway(make_config(sim.url, asterisk.ami_port, **config))
        await gateway.start()
    except BaseException:
        await sim.close()
        raise
    try:
        sim.webhook_url = f"{gateway.url}/webhook"
        s = Stack(sim=sim, gateway=gateway, asterisk=asterisk)
        gateway.ami.add_event_listener("*", s.on_event)
        yield s
    finally:
        await gateway.stop()
        await sim.close()


MakeStack = Callable[..., Awaitable[Stack]]


@pytest.fixture
async def make_stack(asterisk: LocalAsterisk, tmp_path) -> AsyncIterator[MakeStack]:
    """``await make_stack(**overrides)``: the simulator, a gateway whose config has the
    overrides (as :func:`make_config`), and the session's Asterisk. A test that needs another
    config starts its gateway with it, rather than changing a running one. Everything made is
    stopped at the end, the newest first."""
    async with contextlib.AsyncExitStack() as made:
        count = 0

        async def make(**overrides: Any) -> Stack:
            nonlocal count
            overrides.setdefault("store", {"path": str(tmp_path / f"gateway-{count}.sqlite3")})
            count += 1
            return await made.enter_async_context(open_stack(asterisk, **overrides))

        yield make


@pytest.fixture
async def stack(make_stack: MakeStack) -> Stack:
    """The stack with the standard test config."""
    return await make_stack()
