"""A live gateway's /metrics, after a real call through Asterisk, passes ``promtool check
metrics`` (Prometheus's own lint: naming, units, help, types), carries build_info and no
``_created`` series."""

from __future__ import annotations

import asyncio
import shutil

import aiohttp
import pytest

from gateway.version import version

from .conftest import Stack

pytestmark = pytest.mark.asterisk
PROMTOOL = shutil.which("promtool")


@pytest.mark.skipif(PROMTOOL is None, reason="promtool is not installed (scripts/setup.sh "
                                             "--test installs Debian's prometheus)")
async def test_live_metrics_pass_promtool(stack: Stack) -> None:
    call = await stack.place_call("test-echo")
    await asyncio.wait_for(call.accepted.wait(), 10)
    await call.phone.press("1")
    await call.hangup()
    await stack.wait_idle()

    async with aiohttp.ClientSession() as session, \
            session.get(f"{stack.gateway.url}/metrics") as resp:
        assert resp.status == 200
        body = await resp.read()
    text = body.decode()
    assert 'whatsapp_gateway_calls_total{direction="inbound"' in text
    assert "_created" not in text
    assert 'whatsapp_gateway_build_info{aiortc="' in text and f'version="{version()}"' in text

    proc = await asyncio.create_subprocess_exec(
        PROMTOOL, "check", "metrics", stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
    out, _ = await asyncio.wait_for(proc.communicate(body), 30)
    assert proc.returncode == 0 and out.decode().strip() == "", out.decode()
