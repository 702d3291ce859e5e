"""A running gateway with no Asterisk behind it, and the simulator as Meta.

What the security tests send never needs a dialplan: every hostile request must be refused
(or a call admitted and then refused because AMI is down) at the HTTP boundary. So AMI points
at a port nobody listens on; the gateway starts, refuses calls with a reason, and the Graph
requests it makes (reject) reach the simulator, where a test can count them.
"""

from __future__ import annotations

import json
import socket
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from gateway.app import Gateway
from gateway.config import parse_config
from gateway.simulator.cloud_api import CloudApiSimulator
from gateway.whatsapp.signature import sign

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "payloads"
APP_SECRET = "security-app-secret"
ACCESS_TOKEN = "security-access-token"
API_TOKEN = "security-api-token"
VERIFY_TOKEN = "security-verify-token"
PNID = "100000000000001"
DISPLAY = "15550000001"


def connect_sample() -> dict[str, Any]:
    """tests/fixtures/payloads/webhook-connect-user-initiated.json, aimed at the test number."""
    body = json.loads((FIXTURES / "webhook-connect-user-initiated.json").read_text())
    body["entry"][0]["changes"][0]["value"]["metadata"]["phone_number_id"] = PNID
    return body


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Running:
    gateway: Gateway
    sim: CloudApiSimulator
    http: aiohttp.ClientSession

    @property
    def url(self) -> str:
        return self.gateway.url

    async def webhook(self, body: bytes, signature: str | None = None,
                      **headers: str) -> aiohttp.ClientResponse:
        sig = sign(APP_SECRET, body) if signature is None else signature
        async with self.http.post(f"{self.url}/webhook", data=body, headers={
                "X-Hub-Signature-256": sig, "Content-Type": "application/json",
                **headers}) as resp:
            await resp.read()
            return resp

    async def api(self, method: str, path: str, *, data: bytes | None = None,
                  token: str = API_TOKEN) -> tuple[int, Any]:
        headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
        async with self.http.request(method, f"{self.url}{path}", data=data,
                                     headers=headers) as resp:
            text = await resp.text()
            try:
                return resp.status, json.loads(text)
            except ValueError:
                return resp.status, text

    async def settle(self) -> None:
        """Until every task the gateway spawned for the requests so far has finished."""
        assert await self.gateway.calls.settle(5)


@pytest.fixture
async def running(tmp_path) -> AsyncIterator[Running]:
    sim = CloudApiSimulator(app_secret=APP_SECRET, access_token=ACCESS_TOKEN)
    sim.numbers[PNID] = DISPLAY
    await sim.start()
    config = parse_config({
        "whatsapp": {"graph_url": sim.url, "access_token": ACCESS_TOKEN,
                     "app_secret": APP_SECRET, "verify_token": VERIFY_TOKEN},
        "numbers": [{"phone_number_id": PNID, "display_number": DISPLAY,
                     "context": "from-whatsapp"}],
        "asterisk": {"ami": {"host": "127.0.0.1", "port": closed_port(),
                             "username": "gateway", "secret": "x", "connect_timeout": 0.2}},
        "http": {"listen": "127.0.0.1:0"},
        "api": {"tokens": [API_TOKEN]},
        "store": {"path": str(tmp_path / "gateway.sqlite3")},
    }, env={})
    gateway = Gateway(config)
    await gateway.start()
    sim.webhook_url = f"{gateway.url}/webhook"
    http = aiohttp.ClientSession()
    try:
        yield Running(gateway=gateway, sim=sim, http=http)
    finally:
        await http.close()
        await gateway.stop()
        await sim.close()
