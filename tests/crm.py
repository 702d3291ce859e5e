"""A CRM endpoint for tests: a real aiohttp server that checks the gateway's signature."""

from __future__ import annotations

import asyncio
import json

from aiohttp import web

from gateway.crm_events import SIGNATURE_HEADER, signature_ok

SECRET = "crm-test-secret"


class Crm:
    """A CRM endpoint: answers with ``status`` (settable) and keeps what it accepted."""

    def __init__(self) -> None:
        self.status = 200
        self.accepted: list[dict] = []
        self.attempts = 0
        self.bad_signatures = 0
        self.arrived = asyncio.Condition()
        self.url = ""
        self.port = 0
        self._runner: web.AppRunner | None = None

    async def start(self, port: int = 0) -> None:
        """Listen (again, on the same port after :meth:`close` when ``port`` is given)."""
        app = web.Application()
        app.router.add_post("/events", self._post)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", port)
        await site.start()
        self.port = self._runner.addresses[0][1]
        self.url = f"http://127.0.0.1:{self.port}/events"

    async def close(self) -> None:
        """Down: the port refuses connections until :meth:`start` again."""
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def _post(self, request: web.Request) -> web.Response:
        body = await request.read()
        async with self.arrived:
            self.attempts += 1
            self.arrived.notify_all()
        if not signature_ok(SECRET, body, request.headers.get(SIGNATURE_HEADER)):
            self.bad_signatures += 1
            return web.Response(status=401)
        if self.status != 200:
            return web.Response(status=self.status)
        event = json.loads(body)
        assert request.headers["X-Gateway-Event"] == event["event"]
        async with self.arrived:
            self.accepted.append(event)
            self.arrived.notify_all()
        return web.Response(text="ok")

    async def wait_attempts(self, count: int, timeout: float = 10) -> None:
        async with self.arrived:
            await asyncio.wait_for(self.arrived.wait_for(lambda: self.attempts >= count),
                                   timeout)

    async def wait_for(self, count: int, timeout: float = 10) -> list[dict]:
        async with self.arrived:
            await asyncio.wait_for(self.arrived.wait_for(lambda: len(self.accepted) >= count),
                                   timeout)
        return self.accepted


