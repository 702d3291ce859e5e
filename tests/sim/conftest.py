"""Fixtures of the simulator tests: loopback-only ICE, a reference business, a simulator."""

import pytest

from gateway.media import aiortc_hooks
from tests.sim.business import IPV6, Business, make_sim


@pytest.fixture(autouse=True)
def loopback_only():
    aiortc_hooks.set_host_addresses(["127.0.0.1", "::1"] if IPV6 else ["127.0.0.1"])
    yield
    aiortc_hooks.set_host_addresses(None)


@pytest.fixture
async def business():
    b = Business()
    await b.start()
    yield b
    await b.close()


@pytest.fixture
async def sim(business):
    s = make_sim(business)
    await s.start()
    yield s
    await s.close()
