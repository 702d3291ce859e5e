"""Webhook delivery at the simulated Meta: compact JSON, signed with the app secret
(tests/fixtures/payloads/webhook-verification.md), posted to the business, retried briefly on
failure (docs/meta-calling.md §7.1), every attempt recorded."""

from __future__ import annotations

import asyncio
import json
import time
from typing import TYPE_CHECKING, Any

import aiohttp

from gateway.simulator.meta import SIGN, WebhookDelivery, sign
from gateway.simulator.runtime import Background, Clock
from gateway.simulator.transcript import Transcript

if TYPE_CHECKING:
    from gateway.simulator.call import SimulatedCall


def encode(payload: Any) -> bytes:
    """Compact JSON, as Meta posts it; the signature covers exactly these bytes."""
    return json.dumps(payload, separators=(",", ":")).encode()


class WebhookSender:
    """Posts webhooks to the business's URL the way Meta does."""

    def __init__(self, *, app_secret: str, url: str | None, clock: Clock,
                 background: Background, timeout_s: float = 20.0,
                 retry_delays: tuple[float, ...] = (1.0, 3.0)):
        self.app_secret = app_secret
        self.url = url
        """The business's webhook URL; None: deliveries fail and are recorded."""
        self.clock = clock
        self.background = background
        self.timeout_s = timeout_s
        self.retry_delays = retry_delays
        """Meta retries failed deliveries, briefly for calling (§7.1)."""
        self.deliveries: list[WebhookDelivery] = []
        self._session: aiohttp.ClientSession | None = None

    async def start(self) -> None:
        self._session = aiohttp.ClientSession()

    async def close(self) -> None:
        if self._session:
            await self._session.close()

    async def send_call_webhook(self, call: SimulatedCall, payload: dict[str, Any]) -> None:
        """One call's webhook: noted in its story; retries run beside the call (the phone keeps
        ringing meanwhile)."""
        value = payload["entry"][0]["changes"][0]["value"]
        event = (value.get("calls") or value.get("statuses"))[0]
        what = event.get("event") or f"status {event['status']}"
        if what == "terminate":
            what += f" {event['status']}"
            if call.error_code:
                what += f" {call.error_code}"
        call.transcript.add(f"{what} webhook sent ({call.call_id})")
        body = encode(payload)
        delivery = await self.send_raw(body)
        call.webhooks.append(delivery)
        _report(delivery, call.transcript)
        if not delivery.ok and self.url is not None and self.retry_delays:
            self.background.spawn(self._retry(body, call.webhooks, call.transcript))

    async def send(self, payload: Any, *, transcript: Transcript | None = None) -> WebhookDelivery:
        """Deliver a JSON body the way Meta does: signed, retried briefly on failure; returns
        the last attempt."""
        deliveries: list[WebhookDelivery] = [await self.send_raw(encode(payload))]
        _report(deliveries[0], transcript)
        if not deliveries[0].ok and self.url is not None:
            await self._retry(deliveries[0].body, deliveries, transcript)
        return deliveries[-1]

    async def _retry(self, body: bytes, deliveries: list[WebhookDelivery],
                     transcript: Transcript | None) -> None:
        for attempt, delay in enumerate(self.retry_delays, start=2):
            if transcript:
                transcript.add(f"Meta retries the webhook in {delay:g} s")
            await asyncio.sleep(delay)
            delivery = await self.send_raw(body)
            delivery.attempt = attempt
            deliveries.append(delivery)
            _report(delivery, transcript)
            if delivery.ok:
                return

    async def send_raw(self, body: bytes, *, signature: Any = SIGN,
                       content_type: str = "application/json") -> WebhookDelivery:
        """POST exact bytes once. ``signature``: SIGN (correct), None (no header) or any string
        to send as ``X-Hub-Signature-256`` verbatim (for negative tests)."""
        sig = sign(self.app_secret, body) if signature is SIGN else signature
        delivery = WebhookDelivery(body=body, signature=sig, sent_at=self.clock.now())
        self.deliveries.append(delivery)
        if self.url is None:
            delivery.error = "no webhook URL configured"
            return delivery
        assert self._session is not None, "start() the simulator first"
        headers = {"Content-Type": content_type, "User-Agent": "facebookexternalua"}
        if sig is not None:
            headers["X-Hub-Signature-256"] = sig
        start = time.monotonic()  # a measured duration: the real clock, not the seam
        try:
            async with self._session.post(
                    self.url, data=body, headers=headers,
                    timeout=aiohttp.ClientTimeout(total=self.timeout_s)) as resp:
                await resp.read()
                delivery.status = resp.status
        except aiohttp.ClientConnectorError:
            delivery.error = f"cannot connect to {self.url}"
        except TimeoutError:
            delivery.error = f"no answer within {self.timeout_s:g} s"
        except aiohttp.ClientError as exc:
            delivery.error = f"{type(exc).__name__}: {exc}"
        delivery.elapsed_s = time.monotonic() - start
        return delivery

    async def redeliver(self, delivery: WebhookDelivery) -> WebhookDelivery:
        """Send the very same bytes and signature again: Meta's duplicates (§7.2)."""
        return await self.send_raw(delivery.body, signature=delivery.signature)


def _report(delivery: WebhookDelivery, transcript: Transcript | None) -> None:
    if transcript is None:
        return
    if not delivery.ok:
        why = delivery.error or f"HTTP {delivery.status}"
        transcript.add(f"webhook delivery failed: {why}")
    elif delivery.elapsed_s > 2.0:
        transcript.add(f"webhook answered only after {delivery.elapsed_s:.1f} s "
                       "(Meta expects a fast 200, §7.1)")
    elif delivery.attempt > 1:
        transcript.add(f"webhook delivered on attempt {delivery.attempt}")
