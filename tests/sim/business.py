"""A minimal business written from the reference alone, for the simulator's tests.

What docs/meta-calling.md §8 describes, nothing more: a webhook receiver that checks Meta's
signature, and real WebRtcLegs that answer the phone's offer, with pre_accept / accept /
terminate sent over HTTP. No gateway code runs.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import socket
from typing import Any

import aiohttp
from aiohttp import web

from gateway.media.codecs import RATE
from gateway.media.webrtc import WebRtcLeg
from gateway.simulator.cloud_api import CloudApiSimulator

USER_ID_KEYS = frozenset({
    "user_id", "parent_user_id", "from_user_id", "from_parent_user_id", "to_user_id",
    "to_parent_user_id", "recipient_user_id", "recipient_parent_user_id"})
"""Fields docs/meta-2026-identity.md §1 added to every webhook since April 2026 (BSUIDs)."""


def pre_bsuid(obj: Any) -> Any:
    """``obj`` without the 2026 BSUID fields: what a pre-2026 sample in
    tests/fixtures/payloads/ shows, so a body can still be compared with it key for key."""
    if isinstance(obj, dict):
        return {k: pre_bsuid(v) for k, v in obj.items() if k not in USER_ID_KEYS}
    if isinstance(obj, list):
        return [pre_bsuid(v) for v in obj]
    return obj


APP_SECRET = "0123456789abcdef0123456789abcdef"
TOKEN = "EAAG-test-token"


def _has_ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as s:
            s.bind(("::1", 0))
        return True
    except OSError:
        return False


IPV6 = _has_ipv6_loopback()


class Business:
    """Webhook receiver + Graph client, the way a business integrates per the reference."""

    def __init__(self) -> None:
        self.events: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        """``calls`` field items; call status webhooks come as ``{"event": "status", ...}``."""
        self.messages: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        """``messages`` field items (permission replies)."""
        self.message_statuses: list[dict[str, Any]] = []
        self._message_status_queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self.notices: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        """Whole bodies of account-level webhooks (``account_update``,
        ``account_settings_update``)."""
        self.raw: list[tuple[bytes, str | None]] = []
        self.bad_signatures = 0
        self.legs: list[WebRtcLeg] = []
        self.tasks: list[asyncio.Task[None]] = []
        self.fail_next = 0
        """Answer this many deliveries with HTTP 500 (to see Meta's retries)."""
        self.url = ""
        self._runner: web.AppRunner | None = None
        self.http: aiohttp.ClientSession | None = None

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/webhook", self._webhook)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = self._runner.addresses[0][1]
        self.url = f"http://127.0.0.1:{port}/webhook"
        self.http = aiohttp.ClientSession()

    async def close(self) -> None:
        for task in self.tasks:
            task.cancel()
        for leg in self.legs:
            await leg.close()
        await self.http.close()
        await self._runner.cleanup()

    async def _webhook(self, request: web.Request) -> web.Response:
        body = await request.read()
        header = request.headers.get("X-Hub-Signature-256")
        self.raw.append((body, header))
        expected = "sha256=" + hmac.new(APP_SECRET.encode(), body, hashlib.sha256).hexdigest()
        if header is None or not hmac.compare_digest(expected, header):
            self.bad_signatures += 1
            return web.Response(status=401)
        if self.fail_next:
            self.fail_next -= 1
            return web.Response(status=500)
        payload = json.loads(body)
        for entry in payload["entry"]:
            for change in entry["changes"]:
                value = change["value"]
                if change["field"] not in ("calls", "messages"):
                    self.notices.put_nowait(payload)
                    continue
                if change["field"] == "messages":
                    for msg in value.get("messages", []):
                        self.messages.put_nowait({"value": value, "message": msg})
                    for st in value.get("statuses", []):
                        self.message_statuses.append(st)
                        self._message_status_queue.put_nowait(st)
                    continue
                for call in value.get("calls", []):
                    self.events.put_nowait({"value": value, "call": call})
                for status in value.get("statuses", []):
                    self.events.put_nowait({"value": value, "call": {"event": "status",
                                                                     **status}})
        return web.Response(text="ok")

    async def next_event(self, event: str, timeout: float = 10) -> dict[str, Any]:
        while True:
            item = await asyncio.wait_for(self.events.get(), timeout)
            if item["call"]["event"] == event:
                return item

    async def post(self, sim: CloudApiSimulator, body: dict[str, Any],
                   token: str | None = TOKEN) -> tuple[int, dict[str, Any]]:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        async with self.http.post(f"{sim.url}/{sim.default_phone_number_id}/calls",
                                  json=body, headers=headers) as resp:
            return resp.status, await resp.json()

    async def graph(self, sim: CloudApiSimulator, method: str, path: str,
                    body: dict[str, Any] | None = None,
                    params: dict[str, str] | None = None) -> tuple[int, dict[str, Any]]:
        """Any Graph request on the default number: ``graph(sim, "GET", "call_permissions",
        params={"user_wa_id": ...})``."""
        async with self.http.request(
                method, f"{sim.url}/{sim.default_phone_number_id}/{path}", json=body,
                params=params, headers={"Authorization": f"Bearer {TOKEN}"}) as resp:
            return resp.status, await resp.json()

    async def next_status(self, timeout: float = 10) -> dict[str, Any]:
        """The next call event that is a status webhook item (others are dropped)."""
        return (await self.next_event("status", timeout))["call"]

    async def next_message(self, timeout: float = 10) -> dict[str, Any]:
        return await asyncio.wait_for(self.messages.get(), timeout)

    async def next_message_status(self, timeout: float = 10) -> dict[str, Any]:
        """The next ``statuses[]`` item on field ``messages``."""
        return await asyncio.wait_for(self._message_status_queue.get(), timeout)

    async def next_notice(self, timeout: float = 10) -> dict[str, Any]:
        return await asyncio.wait_for(self.notices.get(), timeout)

    async def answer(self, offer: str) -> tuple[WebRtcLeg, str]:
        leg = WebRtcLeg(name="business")
        self.legs.append(leg)
        return leg, await leg.answer(offer)

    async def action(self, sim: CloudApiSimulator, action: str, call_id: str,
                     sdp: str | None = None, **extra: Any) -> tuple[int, dict[str, Any]]:
        body: dict[str, Any] = {"messaging_product": "whatsapp", "call_id": call_id,
                                "action": action, **extra}
        if sdp is not None:
            body["session"] = {"sdp_type": "answer", "sdp": sdp}
        return await self.post(sim, body)


def make_sim(business: Business, **kw: Any) -> CloudApiSimulator:
    """A simulator wired to ``business``; no webhook retries, so tests see each delivery once."""
    kw.setdefault("webhook_retry_delays", ())
    return CloudApiSimulator(app_secret=APP_SECRET, access_token=TOKEN,
                             webhook_url=business.url, **kw)


async def auto_answer(business: Business, sim: CloudApiSimulator, *, tone_hz: float | None = 440,
                      hangup_after: float | None = None) -> list[str]:
    """Answer the next call like §8 says (pre_accept, accept), play a tone to the caller for as
    long as the call lasts, optionally terminate after ``hangup_after`` s. Returns the list the
    caller's digits are appended to, filled while the call runs."""
    from gateway.simulator import audio

    item = await business.next_event("connect")
    call_id = item["call"]["id"]
    leg, answer = await business.answer(item["call"]["session"]["sdp"])
    digits: list[str] = []
    leg.on_dtmf = lambda d, ms: digits.append(d)
    await business.action(sim, "pre_accept", call_id, answer)
    await leg.connected.wait()
    await business.action(sim, "accept", call_id, answer)

    async def play() -> None:
        started = asyncio.get_running_loop().time()
        while sim.calls[call_id].state == "accepted":
            if tone_hz:
                leg.play(audio.tone(tone_hz, 0.1))
            await asyncio.sleep(0.1)  # media pacing: the leg takes real-time audio
            if hangup_after is not None and \
                    asyncio.get_running_loop().time() - started >= hangup_after:
                await business.action(sim, "terminate", call_id)
                return

    business.tasks.append(asyncio.ensure_future(play()))
    return digits


async def play_paced(leg: WebRtcLeg, pcm: bytes, chunk_s: float = 0.1) -> None:
    """Feed audio to a leg in real time: the leg queues only 200 ms ahead (a live source),
    so a longer sound is handed over piece by piece (media pacing, not synchronisation)."""
    step = int(chunk_s * 2 * RATE)
    for i in range(0, len(pcm), step):
        leg.play(pcm[i:i + step])
        await asyncio.sleep(chunk_s)
