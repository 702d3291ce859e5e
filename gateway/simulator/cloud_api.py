"""Meta's Cloud API for calling, simulated: the Graph ``/calls`` endpoint and signed webhooks.

Stands in for graph.facebook.com so the gateway (or an admin testing a dialplan) can take
WhatsApp calls without Meta. Behaviour follows ../shared/reference/whatsapp-calling.md: request
validation and error bodies per §2/§11/§14, webhook bodies shaped like the samples in
reference/payloads/, signatures per payloads/webhook-verification.md. Where the reference is
silent, the choice made is written next to the code as an ASSUMPTION.

Both directions: a user calls the business (:meth:`CloudApiSimulator.place_call`), or the
business calls a user with ``connect`` (connect webhook with Meta's answer, RINGING / ACCEPTED /
REJECTED status webhooks, terminate). The users Meta knows (:class:`SimulatedUser`: call
permission, behaviour, Meta's counters) also drive ``GET call_permissions``, permission requests
and call buttons on ``POST messages``, and the number's ``GET|POST settings``.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import logging
import re
import secrets
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp
from aiohttp import web

from gateway.simulator import settings as number_settings
from gateway.simulator.phone import DEFAULT_TIMERS, NO_MEDIA_ERROR, PhoneTimers, SimulatedPhone
from gateway.simulator.transcript import Transcript
from gateway.simulator.users import (
    TEMPORARY_PERMISSION_S,
    UNANSWERED_TO_REVOKE,
    PairCounters,
    SimulatedUser,
    call_limits,
    exhausted,
    permissions_body,
    request_limits,
)

log = logging.getLogger(__name__)

DEFAULT_WABA_ID = "102290000000001"
DEFAULT_PHONE_NUMBER_ID = "106540000000002"
DEFAULT_DISPLAY_NUMBER = "15550001111"
MIN_CALLING_VERSION = (17, 0)
"""Calling needs Graph v17.0 or later (whatsapp-calling.md §1)."""
OPAQUE_MAX = 512
TROUBLESHOOTING_URL = ("https://developers.facebook.com/documentation/business-messaging/"
                       "whatsapp/calling/troubleshooting")
SIGN = object()
"""``signature=SIGN``: sign the body with the app secret, as Meta does."""
USER_INITIATED = "USER_INITIATED"
BUSINESS_INITIATED = "BUSINESS_INITIATED"
CALL_PERMISSIONS_PER_S = 5
"""§3/§14: design for 5 ``call_permissions`` GETs per second; beyond: 613 / HTTP 429."""
BLOCKED_CALLING_CODES = {"1": "USA/Canada", "20": "Egypt", "84": "Vietnam", "234": "Nigeria"}
"""§10: business numbers of these countries cannot call users (138013)."""
NANP_NOT_US_CA = frozenset({
    "242", "246", "264", "268", "284", "345", "441", "473", "649", "658", "664", "721", "758",
    "767", "784", "809", "829", "849", "868", "869", "876"})
"""+1 area codes of the Caribbean and Bermuda: other countries than the USA and Canada."""
TEST_AREA_CODE = "555"
"""+1 555 numbers are test numbers (every fake number of the project): not USA/Canada here."""


def business_country_block(display_number: str) -> str | None:
    """The country whose business numbers may not place calls (138013), or None."""
    digits = re.sub(r"\D", "", display_number)
    for code, country in BLOCKED_CALLING_CODES.items():
        if digits.startswith(code):
            if code == "1" and digits[1:4] in NANP_NOT_US_CA | {TEST_AREA_CODE}:
                return None
            return country
    return None


def new_wamid() -> str:
    """A message id shaped like Meta's ``wamid.`` + base64."""
    return "wamid." + base64.b64encode(b"HBgL" + secrets.token_bytes(24)).decode()


class GraphError(Exception):
    """An error the Graph API answers with (body per payloads/response-error.json)."""

    def __init__(self, code: int, message: str, details: str | None = None, status: int = 400,
                 type_: str = "OAuthException", subcode: int | None = None):
        super().__init__(message)
        self.code, self.message, self.details = code, message, details
        self.status, self.type, self.subcode = status, type_, subcode

    def body(self) -> dict[str, Any]:
        err: dict[str, Any] = {"message": self.message, "type": self.type, "code": self.code}
        if self.subcode is not None:
            err["error_subcode"] = self.subcode
        if self.details is not None:
            err["error_data"] = {"messaging_product": "whatsapp", "details": self.details}
        err["fbtrace_id"] = "A" + secrets.token_urlsafe(15)
        return {"error": err}


def invalid(details: str) -> GraphError:
    """Error 100, the code Meta uses for every invalid parameter, SDP problems included (§11)."""
    return GraphError(100, "(#100) Invalid parameter", details)


@dataclass
class ApiRequest:
    """One request the business made to the simulated Graph API, and what it got back."""

    action: str | None
    body: Any
    time: float
    """Wall-clock (``time.time()``) arrival."""
    phone_number_id: str
    status: int = 0
    response: dict[str, Any] = field(default_factory=dict)
    endpoint: str = "calls"
    """calls | messages | call_permissions | settings"""
    method: str = "POST"
    created_call_id: str | None = None
    """The wacid a successful ``connect`` returned."""

    @property
    def call_id(self) -> str | None:
        if self.created_call_id:
            return self.created_call_id
        return self.body.get("call_id") if isinstance(self.body, dict) else None

    @property
    def error_code(self) -> int | None:
        return self.response.get("error", {}).get("code")


@dataclass
class WebhookDelivery:
    """One POST of a webhook body to the business, with the answer it got."""

    body: bytes
    signature: str | None
    sent_at: float
    status: int | None = None
    """HTTP status of the business's answer; None when it did not answer at all."""
    error: str | None = None
    elapsed_s: float = 0.0
    attempt: int = 1

    @property
    def ok(self) -> bool:
        return self.status is not None and 200 <= self.status < 300

    @property
    def payload(self) -> Any:
        return json.loads(self.body)


def sign(app_secret: str, body: bytes) -> str:
    """``X-Hub-Signature-256`` value: HMAC-SHA256 of the exact body bytes
    (payloads/webhook-verification.md)."""
    return "sha256=" + hmac.new(app_secret.encode(), body, hashlib.sha256).hexdigest()


def new_wacid(wa_id: str, user_initiated: bool = True) -> str:
    """A call id shaped like Meta's: ``wacid.`` + base64 of a small binary record holding the
    user's number and a random id (decode payloads' wacids to see the same layout)."""
    direction = b"\x12" if user_initiated else b"\x11"
    raw = (b"\x1c\x18" + bytes([len(wa_id)]) + wa_id.encode() + b"\x15\x02\x00" + direction
           + b"\x18\x14" + secrets.token_hex(10).upper().encode() + b"\x00")
    return "wacid." + base64.b64encode(raw).decode()


@dataclass
class CallSummary:
    """How a simulated call went, in the terms an admin asks about."""

    call_id: str
    answered: bool
    answered_after_s: float | None
    pre_accepted: bool
    media_connected: bool
    digits_pressed: str
    dtmf_received: str
    heard: list[str]
    ended_by: str | None
    status: str | None
    error_code: int | None
    duration_s: int | None
    api_errors: list[str]

    def lines(self) -> list[str]:
        answered = (f"yes, after {self.answered_after_s:.1f} s" if self.answered
                    else "no" + (" (pre-accepted only)" if self.pre_accepted else ""))
        ended = f"{self.ended_by or 'still up'}"
        if self.status:
            ended += f", terminate webhook {self.status}"
        if self.error_code:
            ended += f" with error {self.error_code}"
        if self.duration_s is not None:
            ended += f", duration {self.duration_s} s"
        out = [
            f"call       {self.call_id}",
            f"answered   {answered}",
            f"media      {'connected' if self.media_connected else 'never connected'}",
            f"pressed    {self.digits_pressed or '-'}",
            f"got DTMF   {self.dtmf_received or '-'}",
            "heard      " + ("; ".join(self.heard) if self.heard else "-"),
            f"ended      {ended}",
        ]
        if self.api_errors:
            out.append("API errors " + "; ".join(self.api_errors))
        return out


class SimulatedCall:
    """One call, either direction: the user's phone, its state at Meta, and the story so far.

    User-initiated: ``ringing`` → ``pre_accepted`` → ``accepted`` → ``ended`` (pre_accept
    optional). Business-initiated: ``connecting`` (connect answered, connect webhook pending) →
    ``ringing`` (RINGING sent) → ``accepted`` (the user picked up) → ``ended``.
    Events: ``ringing``, ``accepted``, ``ended`` (and ``pre_accepted`` for user-initiated).
    """

    def __init__(self, sim: CloudApiSimulator, *, call_id: str, from_wa_id: str,
                 profile_name: str | None, phone_number_id: str, display_phone_number: str,
                 cta_payload: str | None, deeplink_payload: str | None,
                 transcript: Transcript, phone: SimulatedPhone,
                 direction: str = USER_INITIATED):
        self.sim = sim
        self.call_id = call_id
        self.direction = direction
        self.from_wa_id = from_wa_id
        """The user's number, whichever side called (kept under this name for callers of the
        user-initiated API); ``wa_id`` says the same."""
        self.wa_id = from_wa_id
        self.profile_name = profile_name
        self.phone_number_id = phone_number_id
        self.display_phone_number = display_phone_number
        self.cta_payload = cta_payload
        self.deeplink_payload = deeplink_payload
        self.transcript = transcript
        self.phone = phone
        self.state = "ringing" if direction == USER_INITIATED else "connecting"
        self.ringing = asyncio.Event()
        if direction == USER_INITIATED:
            self.ringing.set()
        self.pre_accepted = asyncio.Event()
        self.accepted = asyncio.Event()
        self.ended = asyncio.Event()
        self.answer_sdp: str | None = None
        """The SDP answer: the business's (user-initiated) or Meta's (business-initiated)."""
        self.offer_sdp: str | None = None
        """The business's offer (business-initiated only)."""
        self.rejected = False
        """The user declined the business's call."""
        self.biz_opaque_callback_data: str | None = None
        self.started_at = time.time()
        self.accepted_at: float | None = None
        self.ended_at: float | None = None
        self.ended_by: str | None = None
        """``user`` (hung up, or declined a business call), ``business`` (terminate/reject),
        ``ring timeout`` or ``phone`` (no media)."""
        self.end_status: str | None = None
        self.error_code: int | None = None
        self.webhooks: list[WebhookDelivery] = []
        self.lock = asyncio.Lock()
        phone.on_give_up = self._phone_gave_up

    @property
    def outbound(self) -> bool:
        return self.direction == BUSINESS_INITIATED

    @property
    def is_over(self) -> bool:
        """Ended, or ending (the business's terminate/reject is being processed)."""
        return self.state in ("ending", "ended")

    @property
    def media_connected(self) -> asyncio.Event:
        return self.phone.connected

    async def hangup(self) -> None:
        """The user hangs up: media stops and Meta sends the terminate webhook."""
        async with self.lock:
            if self.is_over:
                return
            self.transcript.add("user hung up")
            await self._end(by="user")

    async def wait_ended(self, timeout: float | None = None) -> None:
        await asyncio.wait_for(self.ended.wait(), timeout)

    def summary(self) -> CallSummary:
        api_errors = [f"{r.action} → {r.error_code}" for r in self.sim.requests_for(self.call_id)
                      if r.error_code is not None]
        duration = None
        if self.accepted_at is not None and self.ended_at is not None:
            duration = int(self.ended_at) - int(self.accepted_at)
        return CallSummary(
            call_id=self.call_id,
            answered=self.accepted_at is not None,
            answered_after_s=None if self.accepted_at is None
            else self.accepted_at - self.started_at,
            pre_accepted=self.pre_accepted.is_set(),
            media_connected=self.phone.connected.is_set(),
            digits_pressed="".join(self.phone.digits_pressed),
            dtmf_received="".join(self.phone.dtmf_received),
            heard=[str(s) for s in self.phone.heard_segments],
            ended_by=self.ended_by,
            status=self.end_status,
            error_code=self.error_code,
            duration_s=duration,
            api_errors=api_errors,
        )

    # --- Meta's side -------------------------------------------------------------------------

    def _phone_gave_up(self, code: int, reason: str) -> None:
        async def end() -> None:
            async with self.lock:
                if not self.is_over:
                    await self._end(by="phone", error_code=code, error_detail=reason)
        self.sim._spawn(end())

    async def _end(self, *, by: str, error_code: int | None = None,
                   error_detail: str | None = None) -> None:
        """End the call once, whoever ended it, and send Meta's terminate webhook.

        ASSUMPTION: Meta sends the terminate webhook for every call end, including ends the
        business asked for with terminate or reject (§6 "terminate (any call end, either
        direction)"; §2 only waives the business's terminate when the *user* hung up). Status is
        COMPLETED for a call that was accepted and FAILED otherwise (missed, rejected, cancelled,
        or ended by an error), with start/end/duration only when it was accepted.
        """
        self.state = "ended"
        self.ended_at = time.time()
        self.ended_by = by
        self.error_code = error_code
        self.end_status = "COMPLETED" if self.accepted_at is not None and error_code is None \
            else "FAILED"
        await self.phone.hangup()
        await self.sim._send_call_webhook(self, self.sim.terminate_payload(
            self, error_code=error_code, error_detail=error_detail))
        self.ended.set()
        if self.outbound:
            await self.sim._outbound_ended(self)


class CloudApiSimulator:
    """graph.facebook.com for the calling API, plus the phones of the users who call.

    ``url`` is the Graph base to configure in the gateway (``http://127.0.0.1:PORT/v23.0``).
    Extra routes (the admin control API) can be added to ``app`` before :meth:`start`.
    """

    def __init__(self, *, app_secret: str, access_token: str, webhook_url: str | None = None,
                 host: str = "127.0.0.1", port: int = 0, version: str = "v23.0",
                 waba_id: str = DEFAULT_WABA_ID,
                 phone_number_id: str = DEFAULT_PHONE_NUMBER_ID,
                 display_phone_number: str = DEFAULT_DISPLAY_NUMBER,
                 ring_timeout_s: float = 60.0, phone_timers: PhoneTimers = DEFAULT_TIMERS,
                 webhook_timeout_s: float = 20.0,
                 webhook_retry_delays: tuple[float, ...] = (1.0, 3.0),
                 hearing_window_s: float = 0.5):
        self.app_secret = app_secret
        self.access_token = access_token
        self.webhook_url = webhook_url
        self.host, self.port, self.version = host, port, version
        self.waba_id = waba_id
        self.numbers: dict[str, str] = {phone_number_id: display_phone_number}
        """phone_number_id → display number of the business numbers this account has."""
        self.default_phone_number_id = phone_number_id
        self.ring_timeout_s = ring_timeout_s
        """How long the phone rings unanswered before giving up (§8: about 30-60 s)."""
        self.phone_timers = phone_timers
        self.webhook_timeout_s = webhook_timeout_s
        self.webhook_retry_delays = webhook_retry_delays
        """Meta retries failed deliveries, briefly for calling (§7.1)."""
        self.hearing_window_s = hearing_window_s
        self.requests: list[ApiRequest] = []
        self.calls: dict[str, SimulatedCall] = {}
        self.webhooks: list[WebhookDelivery] = []
        self.call_listeners: list[Callable[[SimulatedCall], None]] = []
        """Called with each new call before its connect webhook goes out (e.g. to print its
        transcript live)."""
        self.app = web.Application()
        self.app.router.add_post("/{version}/{phone_number_id}/calls", self._handle_calls)
        self._runner: web.AppRunner | None = None
        self._session: aiohttp.ClientSession | None = None
        self._tasks: set[asyncio.Task[Any]] = set()

    # --- lifecycle ----------------------------------------------------------------------------

    async def start(self) -> None:
        self._session = aiohttp.ClientSession()
        self._runner = web.AppRunner(self.app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]

    async def close(self) -> None:
        for call in list(self.calls.values()):
            if call.state != "ended":
                await call.phone.hangup()
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._runner:
            await self._runner.cleanup()
        if self._session:
            await self._session.close()

    async def __aenter__(self) -> CloudApiSimulator:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def url(self) -> str:
        """Graph API base with version, as the gateway's ``whatsapp.graph_url`` expects."""
        return f"{self.base_url}/{self.version}"

    def _spawn(self, coro: Awaitable[Any]) -> asyncio.Task[Any]:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    # --- the user calls -----------------------------------------------------------------------

    async def place_call(self, *, from_wa_id: str, profile_name: str | None = "Test User",
                         phone_number_id: str | None = None,
                         display_phone_number: str | None = None,
                         cta_payload: str | None = None, deeplink_payload: str | None = None,
                         idle_audio: bytes | None = None) -> SimulatedCall:
        """The user taps "call": the phone rings at once and Meta sends the connect webhook.
        Returns when the webhook has been delivered (or delivery failed)."""
        phone_number_id = phone_number_id or self.default_phone_number_id
        display = display_phone_number or self.numbers.get(phone_number_id) \
            or DEFAULT_DISPLAY_NUMBER
        self.numbers.setdefault(phone_number_id, display)
        transcript = Transcript()
        phone = SimulatedPhone(transcript=transcript, name=f"phone {from_wa_id}",
                               timers=self.phone_timers, idle_audio=idle_audio,
                               hearing_window_s=self.hearing_window_s)
        await phone.make_offer()
        call = SimulatedCall(self, call_id=new_wacid(from_wa_id), from_wa_id=from_wa_id,
                             profile_name=profile_name, phone_number_id=phone_number_id,
                             display_phone_number=display, cta_payload=cta_payload,
                             deeplink_payload=deeplink_payload, transcript=transcript,
                             phone=phone)
        self.calls[call.call_id] = call
        transcript.t0 = time.monotonic()
        call.started_at = time.time()
        self._spawn(self._ring_timeout(call))
        for listener in self.call_listeners:
            listener(call)
        await self._send_call_webhook(call, self.connect_payload(call))
        return call

    async def _ring_timeout(self, call: SimulatedCall) -> None:
        waits = [asyncio.ensure_future(call.accepted.wait()),
                 asyncio.ensure_future(call.ended.wait())]
        try:
            done, _ = await asyncio.wait(waits, timeout=self.ring_timeout_s,
                                         return_when=asyncio.FIRST_COMPLETED)
        finally:
            for w in waits:
                w.cancel()
        if not done:
            async with call.lock:
                if not call.is_over and call.accepted_at is None:
                    call.transcript.add(f"not answered within {self.ring_timeout_s:g} s: "
                                        'phone shows "Not answered"')
                    await call._end(by="ring timeout")

    # --- webhook bodies -----------------------------------------------------------------------

    def _envelope(self, call: SimulatedCall, calls: list[dict[str, Any]],
                  errors: list[dict[str, Any]] | None = None,
                  contacts: bool = False) -> dict[str, Any]:
        value: dict[str, Any] = {
            "messaging_product": "whatsapp",
            "metadata": {"display_phone_number": call.display_phone_number,
                         "phone_number_id": call.phone_number_id},
        }
        if contacts:
            contact: dict[str, Any] = {"wa_id": call.from_wa_id}
            if call.profile_name:
                contact = {"profile": {"name": call.profile_name}, "wa_id": call.from_wa_id}
            value["contacts"] = [contact]
        value["calls"] = calls
        if errors:
            value["errors"] = errors
        return {"object": "whatsapp_business_account",
                "entry": [{"id": self.waba_id,
                           "changes": [{"value": value, "field": "calls"}]}]}

    def connect_payload(self, call: SimulatedCall) -> dict[str, Any]:
        """Shaped like payloads/webhook-connect-user-initiated.json."""
        item: dict[str, Any] = {
            "id": call.call_id,
            "to": call.display_phone_number,
            "from": call.from_wa_id,
            "event": "connect",
            "timestamp": str(int(call.started_at)),
            "direction": call.direction,
        }
        if call.deeplink_payload is not None:
            item["deeplink_payload"] = call.deeplink_payload
        if call.cta_payload is not None:
            item["cta_payload"] = call.cta_payload
        item["session"] = {"sdp_type": "offer", "sdp": call.phone.offer_sdp}
        return self._envelope(call, [item], contacts=True)

    def terminate_payload(self, call: SimulatedCall, *, error_code: int | None = None,
                          error_detail: str | None = None) -> dict[str, Any]:
        """Shaped like payloads/webhook-terminate-{completed,failed}.json."""
        item: dict[str, Any] = {
            "id": call.call_id,
            "to": call.display_phone_number,
            "from": call.from_wa_id,
            "event": "terminate",
            "direction": call.direction,
        }
        for key in ("deeplink_payload", "cta_payload", "biz_opaque_callback_data"):
            if getattr(call, key) is not None:
                item[key] = getattr(call, key)
        item["timestamp"] = str(int(call.ended_at or time.time()))
        item["status"] = call.end_status or "FAILED"
        if call.accepted_at is not None:
            item["start_time"] = str(int(call.accepted_at))
            item["end_time"] = str(int(call.ended_at or time.time()))
            item["duration"] = int(call.ended_at or time.time()) - int(call.accepted_at)
        errors = None
        if error_code is not None:
            message = {NO_MEDIA_ERROR: "No media received"}.get(error_code, "Call failed")
            details = error_detail or message
            # Both levels, as delivered events do (§7.6): `value` with href, `calls[i]` with title.
            errors = [{"code": error_code, "message": message, "href": TROUBLESHOOTING_URL,
                       "error_data": {"details": details}}]
            item["errors"] = [{"code": error_code, "title": message, "message": message,
                               "error_data": {"details": details}}]
        return self._envelope(call, [item], errors)

    # --- webhook delivery ---------------------------------------------------------------------

    @staticmethod
    def encode(payload: Any) -> bytes:
        """Compact JSON, as Meta posts it; the signature covers exactly these bytes."""
        return json.dumps(payload, separators=(",", ":")).encode()

    async def _send_call_webhook(self, call: SimulatedCall, payload: dict[str, Any]) -> None:
        event = payload["entry"][0]["changes"][0]["value"]["calls"][0]
        what = event["event"]
        if what == "terminate":
            what += f" {event['status']}"
            if call.error_code:
                what += f" {call.error_code}"
        call.transcript.add(f"{what} webhook sent ({call.call_id})")
        body = self.encode(payload)
        delivery = await self.send_raw_webhook(body)
        call.webhooks.append(delivery)
        self._report_delivery(delivery, call.transcript)
        if not delivery.ok and self.webhook_url is not None and self.webhook_retry_delays:
            # Retries run beside the call: the phone keeps ringing meanwhile.
            self._spawn(self._retry(body, call.webhooks, call.transcript))

    async def send_webhook(self, payload: Any, *,
                           transcript: Transcript | None = None) -> WebhookDelivery:
        """Deliver a JSON body the way Meta does: signed, retried briefly on failure; returns
        the last attempt."""
        deliveries: list[WebhookDelivery] = [await self.send_raw_webhook(self.encode(payload))]
        self._report_delivery(deliveries[0], transcript)
        if not deliveries[0].ok and self.webhook_url is not None:
            await self._retry(deliveries[0].body, deliveries, transcript)
        return deliveries[-1]

    async def _retry(self, body: bytes, deliveries: list[WebhookDelivery],
                     transcript: Transcript | None) -> None:
        for attempt, delay in enumerate(self.webhook_retry_delays, start=2):
            if transcript:
                transcript.add(f"Meta retries the webhook in {delay:g} s")
            await asyncio.sleep(delay)
            delivery = await self.send_raw_webhook(body)
            delivery.attempt = attempt
            deliveries.append(delivery)
            self._report_delivery(delivery, transcript)
            if delivery.ok:
                return

    @staticmethod
    def _report_delivery(delivery: WebhookDelivery, transcript: Transcript | None) -> None:
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

    async def send_raw_webhook(self, body: bytes, *, signature: Any = SIGN,
                               content_type: str = "application/json") -> WebhookDelivery:
        """POST exact bytes once. ``signature``: SIGN (correct), None (no header) or any string
        to send as ``X-Hub-Signature-256`` verbatim (for negative tests)."""
        sig = sign(self.app_secret, body) if signature is SIGN else signature
        delivery = WebhookDelivery(body=body, signature=sig, sent_at=time.time())
        self.webhooks.append(delivery)
        if self.webhook_url is None:
            delivery.error = "no webhook URL configured"
            return delivery
        assert self._session is not None, "start() the simulator first"
        headers = {"Content-Type": content_type, "User-Agent": "facebookexternalua"}
        if sig is not None:
            headers["X-Hub-Signature-256"] = sig
        start = time.monotonic()
        try:
            async with self._session.post(
                    self.webhook_url, data=body, headers=headers,
                    timeout=aiohttp.ClientTimeout(total=self.webhook_timeout_s)) as resp:
                await resp.read()
                delivery.status = resp.status
        except aiohttp.ClientConnectorError:
            delivery.error = f"cannot connect to {self.webhook_url}"
        except TimeoutError:
            delivery.error = f"no answer within {self.webhook_timeout_s:g} s"
        except aiohttp.ClientError as exc:
            delivery.error = f"{type(exc).__name__}: {exc}"
        delivery.elapsed_s = time.monotonic() - start
        return delivery

    async def redeliver(self, delivery: WebhookDelivery) -> WebhookDelivery:
        """Send the very same bytes and signature again: Meta's duplicates (§7.2)."""
        return await self.send_raw_webhook(delivery.body, signature=delivery.signature)

    # --- recorded API traffic -----------------------------------------------------------------

    def requests_for(self, call_id: str | None = None,
                     action: str | None = None) -> list[ApiRequest]:
        return [r for r in self.requests
                if (call_id is None or r.call_id == call_id)
                and (action is None or r.action == action)]

    # --- POST /{version}/{phone_number_id}/calls ----------------------------------------------

    async def _handle_calls(self, request: web.Request) -> web.Response:
        phone_number_id = request.match_info["phone_number_id"]
        raw = await request.read()
        try:
            body: Any = json.loads(raw) if raw else {}
        except ValueError:
            body = raw.decode(errors="replace")
        rec = ApiRequest(action=body.get("action") if isinstance(body, dict) else None,
                         body=body, time=time.time(), phone_number_id=phone_number_id)
        self.requests.append(rec)
        try:
            self._check_auth(request)
            self._check_version(request.match_info["version"])
            if not isinstance(body, dict):
                raise invalid("The request body is not a JSON object")
            if phone_number_id not in self.numbers:
                raise GraphError(
                    100, f"Unsupported post request. Object with ID '{phone_number_id}' does "
                    "not exist, cannot be loaded due to missing permissions, or does not "
                    "support this operation.", subcode=33)
            result = await self._calls_action(phone_number_id, body)
            rec.status, rec.response = 200, result
        except GraphError as err:
            rec.status, rec.response = err.status, err.body()
            call = self.calls.get(rec.call_id or "")
            if call is not None:
                call.transcript.add(f"business sent {rec.action}: refused with error "
                                    f"{err.code} ({err.details or err.message})")
        return web.json_response(rec.response, status=rec.status)

    def _check_auth(self, request: web.Request) -> None:
        header = request.headers.get("Authorization", "")
        token = header[7:].strip() if header.lower().startswith("bearer ") else ""
        if not token or not hmac.compare_digest(token.encode(), self.access_token.encode()):
            raise GraphError(190, "Invalid OAuth access token - Cannot parse access token",
                             status=401)

    @staticmethod
    def _check_version(version: str) -> None:
        m = re.fullmatch(r"v(\d+)\.(\d+)", version)
        if not m:
            raise GraphError(2500, f"Unknown path components: /{version}", status=400)
        if (int(m.group(1)), int(m.group(2))) < MIN_CALLING_VERSION:
            # ASSUMPTION: the FAQ gives v17.0 as the minimum for calling; the exact error an
            # older version gets is not documented, so it is reported as an invalid parameter.
            raise invalid(f"Calling requires Graph API v17.0 or later, not {version}")

    async def _calls_action(self, phone_number_id: str, body: dict[str, Any]) -> dict[str, Any]:
        if body.get("messaging_product") != "whatsapp":
            raise invalid("messaging_product must be \"whatsapp\"")
        action = body.get("action")
        if action == "connect":
            # Business-initiated calls (connect, status webhooks, call_permissions) come later.
            raise invalid("The simulator does not place business-initiated calls yet")
        if action not in ("pre_accept", "accept", "reject", "terminate"):
            raise invalid(f"action must be one of connect, pre_accept, accept, reject, "
                          f"terminate; got {action!r}")
        call_id = body.get("call_id")
        if not isinstance(call_id, str) or not call_id:
            raise invalid(f"call_id is required for {action}")
        call = self.calls.get(call_id)
        if call is None or call.phone_number_id != phone_number_id:
            # ASSUMPTION: an unknown call id is an invalid parameter (code 100).
            raise invalid(f"Unknown call_id {call_id} for phone number {phone_number_id}")
        async with call.lock:
            if action in ("pre_accept", "accept"):
                await self._answer(call, action, body)
            elif action == "reject":
                await self._reject(call)
            else:
                await self._terminate(call)
        return {"messaging_product": "whatsapp", "success": True}

    @staticmethod
    def _session_sdp(action: str, body: dict[str, Any]) -> str:
        session = body.get("session")
        if not isinstance(session, dict):
            raise invalid(f"session {{sdp_type, sdp}} is required for {action}")
        if session.get("sdp_type") != "answer":
            # §14: the reference tables say "offer", Meta's examples and behaviour "answer".
            raise invalid(f"session.sdp_type must be \"answer\" for {action}, "
                          f"got {session.get('sdp_type')!r}")
        sdp = session.get("sdp")
        if not isinstance(sdp, str) or "m=audio" not in sdp:
            raise invalid("session.sdp must be an SDP answer with an audio section")
        if not re.search(r"a=rtpmap:\d+ opus/48000", sdp, re.IGNORECASE):
            raise invalid("SDP answer has no Opus/48000 codec")
        if "a=fingerprint:sha-256 " not in sdp:
            raise invalid("SDP answer needs a sha-256 DTLS fingerprint")
        return sdp

    async def _answer(self, call: SimulatedCall, action: str, body: dict[str, Any]) -> None:
        if call.is_over:
            # ASSUMPTION: actions on an ended call are refused as an invalid parameter.
            raise invalid(f"Call {call.call_id} has already ended")
        sdp = self._session_sdp(action, body)
        opaque = body.get("biz_opaque_callback_data")
        if opaque is not None and (not isinstance(opaque, str) or len(opaque) > OPAQUE_MAX):
            raise invalid(f"biz_opaque_callback_data must be a string of at most {OPAQUE_MAX} "
                          "characters")
        if call.answer_sdp is not None and sdp != call.answer_sdp:
            raise invalid(f"The SDP in {action} differs from the SDP sent in pre_accept; "
                          "accept must carry exactly the same SDP")
        if call.state == "accepted" or (action == "pre_accept" and call.state == "pre_accepted"):
            # ASSUMPTION: repeating an action with the same SDP (a retry) changes nothing and
            # succeeds; the reference does not say what Meta answers.
            call.transcript.add(f"business repeated {action} (same SDP): no change")
            return
        if action == "pre_accept" and call.state != "ringing":
            raise invalid("pre_accept must come before accept")
        if call.answer_sdp is None:
            try:
                await call.phone.apply_answer(sdp)
            except ValueError as exc:  # SdpError included
                raise invalid(f"SDP answer rejected: {exc}") from exc
            call.answer_sdp = sdp
        if action == "pre_accept":
            call.state = "pre_accepted"
            call.transcript.add('business sent pre_accept: phone shows "Ringing"')
            call.pre_accepted.set()
            return
        if opaque is not None:
            call.biz_opaque_callback_data = opaque
        call.state = "accepted"
        call.accepted_at = time.time()
        call.phone.answered = True
        call.transcript.add("business sent accept: call answered")
        call.accepted.set()

    async def _reject(self, call: SimulatedCall) -> None:
        if call.is_over:
            raise invalid(f"Call {call.call_id} has already ended")
        if call.state == "accepted":
            raise invalid("reject is only for a call not yet accepted; use terminate")
        call.transcript.add("business sent reject: phone shows the call declined")
        call.state = "ending"
        self._spawn(self._end_locked(call))

    async def _terminate(self, call: SimulatedCall) -> None:
        if call.is_over:
            raise invalid(f"Call {call.call_id} has already ended")
        if call.state == "ringing":
            # The reference: reject is for a call not yet accepted, terminate ends a connected
            # call. Meta's answer to terminate on a ringing call is not documented: end it, say so.
            call.transcript.add("business sent terminate on a call it never pre-accepted or "
                                "accepted (reject is the action for that)")
        else:
            call.transcript.add("hung up by the business (terminate)")
        # The HTTP answer goes out first; the terminate webhook follows, as from Meta.
        call.state = "ending"
        self._spawn(self._end_locked(call))

    async def _end_locked(self, call: SimulatedCall) -> None:
        async with call.lock:
            if call.state != "ended":
                await call._end(by="business")
