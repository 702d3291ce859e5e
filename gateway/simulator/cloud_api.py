"""Meta's Cloud API for calling, simulated: the Graph ``/calls`` endpoint and signed webhooks.

Stands in for graph.facebook.com so the gateway (or an admin testing a dialplan) can take
WhatsApp calls without Meta. Behaviour follows docs/meta-calling.md: request
validation and error bodies per §2/§11/§14, webhook bodies shaped like the samples in
tests/fixtures/payloads/, signatures per tests/fixtures/payloads/webhook-verification.md. Where
the reference is silent, the choice made is written next to the code as an ASSUMPTION.

Both directions: a user calls the business (:meth:`CloudApiSimulator.place_call`), or the
business calls a user with ``connect`` (connect webhook with Meta's answer, RINGING / ACCEPTED /
REJECTED status webhooks, terminate). The users Meta knows (:class:`SimulatedUser`: call
permission, behaviour, Meta's counters) also drive ``GET call_permissions``, permission requests
and call buttons on ``POST messages``, and the number's ``GET|POST settings``.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import aiohttp
from aiohttp import web

from gateway.simulator import settings as number_settings
from gateway.simulator.account import AccountApi
from gateway.simulator.account_events import AccountEvents
from gateway.simulator.call import (
    SimulatedCall,
)
from gateway.simulator.media import CallMedia, announcement, opt_in_objects
from gateway.simulator.meta import (
    DEFAULT_DISPLAY_NUMBER,
    DEFAULT_PHONE_NUMBER_ID,
    DEFAULT_VERSION,
    DEFAULT_WABA_ID,
    OPAQUE_MAX,
    SIGN,
    TROUBLESHOOTING_URL,
    ApiRequest,
    GraphError,
    WebhookDelivery,
    invalid,
    new_wacid,
    new_wamid,
    session_sdp,
    sign,
    version_refusal,
)
from gateway.simulator.outbound import BusinessCalling
from gateway.simulator.phone import DEFAULT_TIMERS, NO_MEDIA_ERROR, PhoneTimers, SimulatedPhone
from gateway.simulator.prompts import PromptLibrary
from gateway.simulator.transcript import Transcript
from gateway.simulator.users import (
    BSUID,
    TEMPORARY_PERMISSION_S,
    PairCounters,
    SimulatedUser,
    meta_number_forms,
    meta_wa_id,
    number_visible,
)

log = logging.getLogger(__name__)


@dataclass
class InjectedFault:
    """A test aid, not Meta behaviour: the next ``count`` requests for ``action`` (a calls
    action, message type or ``call_permissions``) get an error instead of being carried out.

    ``status`` 500 answers Graph's transient unknown error (code 1), 429 its rate limit (code
    4, with ``Retry-After`` if given), anything else code 2 (service unavailable).
    ``delay_s`` holds the answer that long first, to run a client into its timeout."""

    action: str
    status: int = 500
    count: int = 1
    retry_after: float | None = None
    delay_s: float = 0.0

    def error(self) -> GraphError:
        if self.status == 429:
            return GraphError(4, "(#4) Application request limit reached", status=429)
        if self.status == 500:
            return GraphError(1, "An unknown error has occurred.", status=500)
        return GraphError(2, "Service temporarily unavailable", status=self.status)


class CloudApiSimulator(BusinessCalling, AccountApi, AccountEvents, CallMedia):
    """graph.facebook.com for the calling API, plus the phones of the users who call.

    ``url`` is the Graph base to configure in the gateway (``http://127.0.0.1:PORT/v25.0``).
    Extra routes (the admin control API) can be added to ``app`` before :meth:`start`.
    """

    def __init__(self, *, app_secret: str, access_token: str, webhook_url: str | None = None,
                 host: str = "127.0.0.1", port: int = 0, version: str = DEFAULT_VERSION,
                 waba_id: str = DEFAULT_WABA_ID,
                 phone_number_id: str = DEFAULT_PHONE_NUMBER_ID,
                 display_phone_number: str = DEFAULT_DISPLAY_NUMBER,
                 ring_timeout_s: float = 60.0, phone_timers: PhoneTimers = DEFAULT_TIMERS,
                 webhook_timeout_s: float = 20.0,
                 webhook_retry_delays: tuple[float, ...] = (1.0, 3.0),
                 hearing_window_s: float = 0.5,
                 default_user: SimulatedUser | None = None,
                 connect_webhook_delay_s: float = 0.2, ringing_delay_s: float = 0.3,
                 callback_grant_delay_s: float = 5.0, media_url_ttl_s: float = 300.0,
                 recording_delay_s: float = 60.0, voicemail_length_s: float = 1.0,
                 accept_latency_s: float = 0.0):
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
        self.prompts: PromptLibrary | None = None
        """Asterisk's sound files: phones name the prompts they hear (simulator/prompts.py)."""
        self.requests: list[ApiRequest] = []
        self.calls: dict[str, SimulatedCall] = {}
        self.webhooks: list[WebhookDelivery] = []
        self.call_listeners: list[Callable[[SimulatedCall], None]] = []
        """Called with each new call, either direction, before its connect webhook goes out
        (e.g. to print its transcript live); ``call.direction`` tells them apart."""
        self.users: dict[str, SimulatedUser] = {}
        """wa_id (or the BSUID of a user without a number) → the users Meta knows; unknown
        numbers become users made from :attr:`default_user`."""
        self.default_user = default_user or SimulatedUser()
        """Template for users not in :attr:`users` (its ``wa_id`` is ignored)."""
        self.counters: dict[tuple[str, str], PairCounters] = {}
        """(phone_number_id, user key) → Meta's counters for the pair (the key is the wa_id,
        or the BSUID of a user without a number)."""
        self.settings: dict[str, dict[str, Any]] = {}
        """phone_number_id → the number's settings (``GET|POST settings``); see
        :meth:`number_settings`."""
        self.messages: list[dict[str, Any]] = []
        """Every message the business sent: ``{id, to, type, interactive_type, body, time}``."""
        self.connect_webhook_delay_s = connect_webhook_delay_s
        """After a business's connect: until Meta's connect webhook with the answer."""
        self.ringing_delay_s = ringing_delay_s
        """After that webhook: until the user's phone rings (RINGING)."""
        self.callback_grant_delay_s = callback_grant_delay_s
        """After a user's call starts: until the automatic callback permission arrives (the
        samples' timestamps are 5 s apart)."""
        self.accept_latency_s = accept_latency_s
        """How long Meta takes to answer an ``accept`` (the call is answered when the 200 goes
        out). Real ones take from tens of ms to over a second; a business must hold the PBX's
        first prompt that long (docs/meta-calling.md §9) and still play it whole."""
        self.notes = Transcript()
        """Account-level story: permission requests and replies, settings changes, users."""
        self.note_listeners: list[Callable[[str], None]] = []
        self.app = web.Application()
        self.app.router.add_post("/{version}/{phone_number_id}/calls", self._handle_calls)
        self.app.router.add_post("/{version}/{phone_number_id}/messages", self._handle_messages)
        self.app.router.add_get("/{version}/{phone_number_id}/call_permissions",
                                self._handle_call_permissions)
        self.app.router.add_get("/{version}/{phone_number_id}/settings",
                                self._handle_get_settings)
        self.app.router.add_post("/{version}/{phone_number_id}/settings",
                                 self._handle_post_settings)
        self._init_media(media_url_ttl_s=media_url_ttl_s, recording_delay_s=recording_delay_s,
                         voicemail_length_s=voicemail_length_s)
        self.app.router.add_post("/_sim/faults", self._handle_faults)
        self.faults: list[InjectedFault] = []
        """Test aid: Graph requests to fail on purpose (:meth:`fail_next`)."""
        self._permission_gets: dict[str, list[float]] = {}
        self._claimed: set[str] = set()
        self._outbound_added = asyncio.Condition()
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

    def note(self, text: str) -> None:
        """Add a line to the account-level story (:attr:`notes`)."""
        line = self.notes.add(text)
        for listener in self.note_listeners:
            listener(line)

    # --- users, their counters, the number's settings -----------------------------------------

    def find_user(self, who: str) -> SimulatedUser | None:
        """The known user with this wa_id, dialled number (Brazil's ninth digit and Mexico's
        521 are the same account, :func:`meta_number_forms`), BSUID or parent BSUID."""
        who = who.strip().lstrip("+")
        if BSUID.fullmatch(who):
            return next((u for u in self.users.values()
                         if who in (u.user_id, u.parent_user_id)), None)
        for form in meta_number_forms(who):
            if form in self.users:
                return self.users[form]
        return None

    def user(self, wa_id: str, profile_name: str | None = None) -> SimulatedUser:
        """The user Meta knows by this number (or BSUID), made from :attr:`default_user` if
        the number is new (with Meta's wa_id for it, :func:`meta_wa_id`)."""
        wa_id = wa_id.strip().lstrip("+")
        if not wa_id:
            raise ValueError("a user is named by their number or BSUID")
        user = self.find_user(wa_id)
        if user is None:
            if BSUID.fullmatch(wa_id):
                raise KeyError(f"no simulated user has the BSUID {wa_id}")
            wa_id = meta_wa_id(wa_id)
            user = self.default_user.copy_for(wa_id)
            if profile_name is not None:
                user.name = profile_name
            if user.permission == "temporary" and user.permission_expires_at is None:
                # A default temporary permission is granted when Meta first sees the user.
                user.permission_expires_at = time.time() + TEMPORARY_PERMISSION_S
            self.users[wa_id] = user
        return user

    def add_user(self, wa_id: str, **fields: Any) -> SimulatedUser:
        """Configure a user (replacing any earlier one): ``sim.add_user("15550002222",
        permission="temporary", on_call="reject", answer_after_s=0.5)``. A temporary permission
        without ``permission_expires_at`` lasts 7 days from now. ``username="testuser"`` hides
        the number from business numbers without recent contact; ``wa_id=""`` with a
        ``user_id`` makes a user whose number is never shown."""
        user = SimulatedUser(wa_id=wa_id.lstrip("+"), **fields)
        if not user.key:
            raise ValueError("a user needs a wa_id or a user_id")
        if user.permission == "temporary" and user.permission_expires_at is None:
            user.permission_expires_at = time.time() + TEMPORARY_PERMISSION_S
        self.users[user.key] = user
        return user

    def pair(self, phone_number_id: str, wa_id: str) -> PairCounters:
        """Meta's counters for a business number + user pair (the user by number or BSUID)."""
        return self.counters.setdefault((phone_number_id, self.user(wa_id).key), PairCounters())

    def shows_number(self, phone_number_id: str, user: SimulatedUser,
                     now: float | None = None) -> bool:
        """Does this business number see the user's number now (docs/meta-2026-identity.md §1)?"""
        return number_visible(user, self.pair(phone_number_id, user.key),
                              time.time() if now is None else now)

    def number_contact(self, phone_number_id: str, user: SimulatedUser,
                       now: float | None = None) -> None:
        """The business number and the user's number were in contact (30-day rule,
        docs/meta-2026-identity.md §1)."""
        if user.wa_id:
            self.pair(phone_number_id, user.key).number_contact_at = \
                time.time() if now is None else now

    def number_settings(self, phone_number_id: str) -> dict[str, Any]:
        """The number's settings (``{"calling": {...}}``), created from the sample on first use.
        Tests may edit them directly (e.g. add ``calling.restrictions``)."""
        if phone_number_id not in self.settings:
            self.settings[phone_number_id] = number_settings.default_settings()
        return self.settings[phone_number_id]

    @property
    def outbound_calls(self) -> list[SimulatedCall]:
        """Business-initiated calls, oldest first."""
        return [c for c in self.calls.values() if c.outbound]

    async def wait_outbound_call(self, to: str | None = None,
                                 timeout: float | None = 10.0) -> SimulatedCall:
        """The next business-initiated call (to ``to`` if given) not returned before by this
        method: an earlier one if it already exists, else the next to arrive. Raises
        TimeoutError."""
        wanted = to.lstrip("+") if to else None

        def find() -> SimulatedCall | None:
            return next((c for c in self.outbound_calls if c.call_id not in self._claimed
                         and (wanted is None or wanted == c.user.user_id
                              or c.wa_id in meta_number_forms(wanted))), None)

        async with self._outbound_added:
            call = await asyncio.wait_for(self._outbound_added.wait_for(find), timeout)
        assert call is not None
        self._claimed.add(call.call_id)
        return call

    # --- the user calls -----------------------------------------------------------------------

    async def place_call(self, *, from_wa_id: str, profile_name: str | None = "Test User",
                         phone_number_id: str | None = None,
                         display_phone_number: str | None = None,
                         cta_payload: str | None = None, deeplink_payload: str | None = None,
                         idle_audio: bytes | None = None) -> SimulatedCall:
        """The user taps "call": the phone rings at once and Meta sends the connect webhook.
        Returns when the webhook has been delivered (or delivery failed). ``from_wa_id`` is the
        user's number or, for a user added without one, their BSUID; whether the webhook shows
        the number follows docs/meta-2026-identity.md §1 (:meth:`shows_number`)."""
        phone_number_id = phone_number_id or self.default_phone_number_id
        user = self.user(from_wa_id, profile_name)
        from_wa_id = user.wa_id
        display = display_phone_number or self.numbers.get(phone_number_id) \
            or DEFAULT_DISPLAY_NUMBER
        self.numbers.setdefault(phone_number_id, display)
        transcript = Transcript()
        calling = self.number_settings(phone_number_id).get("calling", {})
        phone = SimulatedPhone(transcript=transcript, name=f"phone {user.key}",
                               timers=self.phone_timers, idle_audio=idle_audio,
                               hearing_window_s=self.hearing_window_s, prompts=self.prompts,
                               g711=number_settings.additional_codecs(calling))
        await phone.make_offer()
        call = SimulatedCall(self, call_id=new_wacid(user.key), from_wa_id=from_wa_id,
                             profile_name=profile_name, phone_number_id=phone_number_id,
                             display_phone_number=display, cta_payload=cta_payload,
                             deeplink_payload=deeplink_payload, transcript=transcript,
                             phone=phone, user=user,
                             show_number=self.shows_number(phone_number_id, user))
        self.calls[call.call_id] = call
        transcript.t0 = time.monotonic()
        call.started_at = time.time()
        if call.show_number:
            self.number_contact(phone_number_id, user, call.started_at)
        else:
            transcript.add(f"user {user.user_id} (username {user.username}) calls without a "
                           "visible number: no contact with this business number in 30 days")
        user.in_service_window = True  # §10: a call opens the customer-service window
        self._spawn(self._ring_timeout(call))
        for listener in self.call_listeners:
            listener(call)
        await self._send_call_webhook(call, self.connect_payload(call))
        voicemail_after = number_settings.voicemail_timeout(calling)
        if voicemail_after is not None:
            self._spawn(self._voicemail_timer(call, voicemail_after))
        if calling.get("callback_permission_status") == "ENABLED":
            self._spawn(self._callback_grant(call, user))
        return call

    async def _callback_grant(self, call: SimulatedCall, user: SimulatedUser) -> None:
        """§4 callback_permission_status ENABLED: a user who calls (answered or missed) grants
        a temporary permission; the reply webhook names the call (context.id = wacid,
        tests/fixtures/payloads/webhook-call-permission-reply-automatic-callback.json).

        ASSUMPTION: nothing is granted (nor sent) while a permanent permission exists; an
        existing temporary one is renewed for 7 days, with a webhook."""
        await asyncio.sleep(self.callback_grant_delay_s)
        if user.permission_status(time.time()) == "permanent":
            return
        now = time.time()
        user.set_permission("temporary", now)
        call.transcript.add("callback permission granted automatically (temporary, 7 days)")
        self.note(f"user {user.wa_id} called: temporary call permission granted automatically")
        await self._send_permission_reply(call.phone_number_id, user, response="accept",
                                          source="automatic", context_id=call.call_id,
                                          permanent=False, now=now,
                                          transcript=call.transcript)

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
                if not call.is_over and call.accepted_at is None and call.state != "voicemail":
                    if call.outbound:
                        call.transcript.add(f"the user did not pick up within "
                                            f"{self.ring_timeout_s:g} s: the phone stops ringing")
                    else:
                        call.transcript.add(f"not answered within {self.ring_timeout_s:g} s: "
                                            'phone shows "Not answered"')
                    await call._end(by="ring timeout")

    # --- webhook bodies -----------------------------------------------------------------------

    def _envelope(self, call: SimulatedCall, calls: list[dict[str, Any]],
                  errors: list[dict[str, Any]] | None = None,
                  contacts: bool = False, key: str = "calls") -> dict[str, Any]:
        value: dict[str, Any] = {
            "messaging_product": "whatsapp",
            "metadata": {"display_phone_number": call.display_phone_number,
                         "phone_number_id": call.phone_number_id},
        }
        if contacts:
            contact = self._contact(call.user, call.show_number,
                                    name=None if call.outbound else call.profile_name,
                                    outbound=call.outbound)
            if key == "statuses":  # ids only, as webhook-status-ringing-with-bsuid.json
                contact.pop("profile", None)
            value["contacts"] = [contact]
        value[key] = calls
        if errors:
            value["errors"] = errors
        return {"object": "whatsapp_business_account",
                "entry": [{"id": self.waba_id,
                           "changes": [{"value": value, "field": "calls"}]}]}

    @staticmethod
    def _contact(user: SimulatedUser, show_number: bool, *, name: str | None,
                 outbound: bool = False) -> dict[str, Any]:
        """``contacts[0]`` (docs/meta-2026-identity.md §1; the samples
        tests/fixtures/payloads/webhook-connect-user-initiated-with-bsuid.json and
        ...-username-only.json): profile (name; username only if adopted), wa_id only when the
        number is shown, user_id, parent_user_id only when parent BSUIDs exist.
        Business-initiated contacts carry no profile name (as
        tests/fixtures/payloads/webhook-connect-business-initiated.json), and the username
        after the ids (Meta: "user_id, parent_user_id, wa_id and profile.username")."""
        profile: dict[str, Any] = {}
        if name:
            profile["name"] = name
        if user.username:
            profile["username"] = user.username
        contact: dict[str, Any] = {}
        if profile and not outbound:
            contact["profile"] = profile
        if show_number:
            contact["wa_id"] = user.wa_id
        contact["user_id"] = user.user_id
        if user.parent_user_id:
            contact["parent_user_id"] = user.parent_user_id
        if outbound and user.username:
            contact["profile"] = {"username": user.username}
        return contact

    @staticmethod
    def _parties(call: SimulatedCall) -> dict[str, str]:
        """``to``/``from``; the user's side is left out (not empty) when the number is hidden."""
        user_side = {"to" if call.outbound else "from": call.wa_id} if call.show_number else {}
        if call.outbound:
            return {**user_side, "from": call.display_phone_number}
        return {"to": call.display_phone_number, **user_side}

    @staticmethod
    def _user_ids(call: SimulatedCall) -> dict[str, str]:
        """``from_user_id``/``to_user_id`` (+ parent) of a ``calls[]`` item
        (docs/meta-2026-identity.md §1)."""
        side = "to" if call.outbound else "from"
        ids = {f"{side}_user_id": call.user.user_id}
        if call.user.parent_user_id:
            ids[f"{side}_parent_user_id"] = call.user.parent_user_id
        return ids

    def connect_payload(self, call: SimulatedCall) -> dict[str, Any]:
        """Shaped like tests/fixtures/payloads/webhook-connect-{user,business}-initiated.json."""
        if call.outbound:
            item: dict[str, Any] = {"id": call.call_id, **self._parties(call),
                                    "event": "connect", "timestamp": str(int(time.time())),
                                    "direction": call.direction}
            if call.biz_opaque_callback_data is not None:
                item["biz_opaque_callback_data"] = call.biz_opaque_callback_data
            item["session"] = {"sdp_type": "answer", "sdp": call.answer_sdp}
            item.update(self._user_ids(call))
            return self._envelope(call, [item], contacts=True)
        item = {
            "id": call.call_id,
            **self._parties(call),
            "event": "connect",
            "timestamp": str(int(call.started_at)),
            "direction": call.direction,
        }
        if call.deeplink_payload is not None:
            item["deeplink_payload"] = call.deeplink_payload
        if call.cta_payload is not None:
            item["cta_payload"] = call.cta_payload
        item["session"] = {"sdp_type": "offer", "sdp": call.phone.offer_sdp}
        item.update(self._user_ids(call))
        return self._envelope(call, [item], contacts=True)

    def terminate_payload(self, call: SimulatedCall, *, error_code: int | None = None,
                          error_detail: str | None = None) -> dict[str, Any]:
        """Shaped like tests/fixtures/payloads/webhook-terminate-{completed,failed}.json."""
        item: dict[str, Any] = {
            "id": call.call_id,
            **self._parties(call),
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
        # docs/meta-2026-identity.md §1: terminates carry the user ids and a contacts[] entry, as
        # connects do.
        item.update(self._user_ids(call))
        errors = None
        if error_code is not None:
            message = {NO_MEDIA_ERROR: "No media received"}.get(error_code, "Call failed")
            details = error_detail or message
            # Both levels, as delivered events do (§7.6): `value` with href, `calls[i]` with title.
            errors = [{"code": error_code, "message": message, "href": TROUBLESHOOTING_URL,
                       "error_data": {"details": details}}]
            item["errors"] = [{"code": error_code, "title": message, "message": message,
                               "error_data": {"details": details}}]
        return self._envelope(call, [item], errors, contacts=True)

    def status_payload(self, call: SimulatedCall, status: str) -> dict[str, Any]:
        """Shaped like tests/fixtures/payloads/webhook-status-ringing-with-bsuid.json:
        ``recipient_id`` only when the number is shown, ``recipient_user_id`` always,
        ``contacts`` with the ids."""
        item: dict[str, Any] = {"id": call.call_id, "timestamp": str(int(time.time())),
                                "type": "call", "status": status}
        if call.show_number:
            item["recipient_id"] = call.wa_id
        item["recipient_user_id"] = call.user.user_id
        if call.user.parent_user_id:
            item["recipient_parent_user_id"] = call.user.parent_user_id
        if call.biz_opaque_callback_data is not None:
            item["biz_opaque_callback_data"] = call.biz_opaque_callback_data
        return self._envelope(call, [item], key="statuses", contacts=True)

    def _messages_envelope(self, phone_number_id: str, key: str, items: list[dict[str, Any]],
                           user: SimulatedUser | None = None) -> dict[str, Any]:
        """Field ``messages`` (§6 permission replies; message statuses)."""
        value: dict[str, Any] = {
            "messaging_product": "whatsapp",
            "metadata": {"display_phone_number": self.numbers.get(phone_number_id,
                                                                  DEFAULT_DISPLAY_NUMBER),
                         "phone_number_id": phone_number_id},
        }
        if user is not None:
            value["contacts"] = [self._contact(user, self.shows_number(phone_number_id, user),
                                               name=user.name)]
        value[key] = items
        return {"object": "whatsapp_business_account",
                "entry": [{"id": self.waba_id,
                           "changes": [{"value": value, "field": "messages"}]}]}

    def permission_reply_payload(self, phone_number_id: str, user: SimulatedUser, *,
                                 response: str, source: str, context_id: str | None,
                                 permanent: bool, expires_at: float | None,
                                 now: float) -> dict[str, Any]:
        """Shaped like tests/fixtures/payloads/webhook-call-permission-reply*.json. ASSUMPTION: a
        reject carries only ``response`` and ``response_source`` (as the auto-revoked sample)."""
        reply: dict[str, Any] = {"response": response}
        if response == "accept":
            reply["is_permanent"] = permanent
            if not permanent and expires_at is not None:
                reply["expiration_timestamp"] = str(int(expires_at))
        reply["response_source"] = source
        shown = self.shows_number(phone_number_id, user, now)
        message: dict[str, Any] = {"from": user.wa_id} if shown else {}
        # docs/meta-2026-identity.md §1: permission replies carry from_user_id (and the parent
        # id), per Meta's user-call-permissions page.
        message["from_user_id"] = user.user_id
        if user.parent_user_id:
            message["from_parent_user_id"] = user.parent_user_id
        message |= {"id": new_wamid(), "timestamp": str(int(now))}
        if context_id is not None:
            message["context"] = ({"from": user.wa_id} if shown else {}) | {"id": context_id}
        message["type"] = "interactive"
        message["interactive"] = {"type": "call_permission_reply",
                                  "call_permission_reply": reply}
        return self._messages_envelope(phone_number_id, "messages", [message], user)

    async def _send_permission_reply(self, phone_number_id: str, user: SimulatedUser, *,
                                     response: str, source: str, context_id: str | None,
                                     permanent: bool, now: float,
                                     transcript: Transcript | None = None) -> WebhookDelivery:
        payload = self.permission_reply_payload(
            phone_number_id, user, response=response, source=source, context_id=context_id,
            permanent=permanent, expires_at=user.permission_expires_at, now=now)
        if transcript is not None:
            transcript.add(f"call_permission_reply webhook sent ({response}, {source})")
        self.note(f"call_permission_reply webhook sent for {user.wa_id}: {response} ({source})")
        return await self.send_webhook(payload, transcript=transcript)

    # --- webhook delivery ---------------------------------------------------------------------

    @staticmethod
    def encode(payload: Any) -> bytes:
        """Compact JSON, as Meta posts it; the signature covers exactly these bytes."""
        return json.dumps(payload, separators=(",", ":")).encode()

    async def _send_call_webhook(self, call: SimulatedCall, payload: dict[str, Any]) -> None:
        value = payload["entry"][0]["changes"][0]["value"]
        event = (value.get("calls") or value.get("statuses"))[0]
        what = event.get("event") or f"status {event['status']}"
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

    def requests_for(self, call_id: str | None = None, action: str | None = None,
                     endpoint: str | None = None) -> list[ApiRequest]:
        """Recorded requests. ``action``: the calls action, the message type
        (``call_permission_request``, ``voice_call``, ``text``, ``template``...),
        ``call_permissions``, ``get_settings`` or ``set_settings``."""
        return [r for r in self.requests
                if (call_id is None or r.call_id == call_id)
                and (action is None or r.action == action)
                and (endpoint is None or r.endpoint == endpoint)]

    async def _api(self, request: web.Request, endpoint: str,
                   handle: Callable[[str, Any, ApiRequest], Awaitable[dict[str, Any]]],
                   action: Callable[[Any], str | None]) -> web.Response:
        """Record a Graph request, check token, version and number, run ``handle`` and answer
        its result or its :class:`GraphError`."""
        phone_number_id = request.match_info["phone_number_id"]
        if request.method == "GET":
            body: Any = dict(request.query)
        else:
            raw = await request.read()
            try:
                body = json.loads(raw) if raw else {}
            except ValueError:
                body = raw.decode(errors="replace")
        rec = ApiRequest(action=action(body) if isinstance(body, dict) else None, body=body,
                         time=time.time(), phone_number_id=phone_number_id, endpoint=endpoint,
                         method=request.method)
        self.requests.append(rec)
        fault = self._take_fault(rec.action)
        if fault is not None:
            if fault.delay_s:
                await asyncio.sleep(fault.delay_s)
            err = fault.error()
            rec.status, rec.response = err.status, err.body()
            headers = {"Retry-After": f"{fault.retry_after:g}"} \
                if fault.retry_after is not None else None
            return web.json_response(rec.response, status=rec.status, headers=headers)
        try:
            self._check_auth(request)
            self._check_version(request.match_info["version"])
            if not isinstance(body, dict):
                raise invalid("The request body is not a JSON object")
            if phone_number_id not in self.numbers:
                raise GraphError(
                    100, f"Unsupported {request.method.lower()} request. Object with ID "
                    f"'{phone_number_id}' does not exist, cannot be loaded due to missing "
                    "permissions, or does not support this operation.", subcode=33)
            result = await handle(phone_number_id, body, rec)
            rec.status, rec.response = 200, result
        except GraphError as err:
            rec.status, rec.response = err.status, err.body()
        return web.json_response(rec.response, status=rec.status)

    # --- fault injection (a test aid) ---------------------------------------------------------

    def fail_next(self, action: str, status: int = 500, count: int = 1, *,
                  retry_after: float | None = None, delay_s: float = 0.0) -> InjectedFault:
        """Fail the next ``count`` ``action`` requests with ``status`` (see InjectedFault).
        Faults for one action are used up in the order they were added."""
        fault = InjectedFault(action, status, count, retry_after, delay_s)
        self.faults.append(fault)
        return fault

    def _take_fault(self, action: str | None) -> InjectedFault | None:
        fault = next((f for f in self.faults if f.action == action and f.count > 0), None)
        if fault is None:
            return None
        fault.count -= 1
        if fault.count == 0:
            self.faults.remove(fault)
        return fault

    async def _handle_faults(self, request: web.Request) -> web.Response:
        """``POST /_sim/faults`` ``{"action", "status", "count", "retry_after", "delay_s"}``."""
        try:
            body = await request.json()
            fault = self.fail_next(str(body["action"]), int(body.get("status", 500)),
                                   int(body.get("count", 1)),
                                   retry_after=body.get("retry_after"),
                                   delay_s=float(body.get("delay_s", 0.0)))
        except (ValueError, KeyError, TypeError) as exc:
            return web.json_response({"error": f"bad fault: {exc!r}"}, status=400)
        return web.json_response({"action": fault.action, "status": fault.status,
                                  "count": fault.count})

    # --- POST /{version}/{phone_number_id}/calls ----------------------------------------------

    async def _handle_calls(self, request: web.Request) -> web.Response:
        async def handle(phone_number_id: str, body: Any, rec: ApiRequest) -> dict[str, Any]:
            try:
                result = await self._calls_action(phone_number_id, body)
            except GraphError as err:
                call = self.calls.get(rec.call_id or "")
                if call is not None:
                    call.transcript.add(f"business sent {rec.action}: refused with error "
                                        f"{err.code} ({err.details or err.message})")
                raise
            if rec.action == "connect":
                rec.created_call_id = result["calls"][0]["id"]
            return result

        return await self._api(request, "calls", handle, lambda body: body.get("action"))

    def _check_auth(self, request: web.Request) -> None:
        header = request.headers.get("Authorization", "")
        token = header[7:].strip() if header.lower().startswith("bearer ") else ""
        if not token or not hmac.compare_digest(token.encode(), self.access_token.encode()):
            raise GraphError(190, "Invalid OAuth access token - Cannot parse access token",
                             status=401)

    def _check_version(self, version: str) -> None:
        refusal = version_refusal(version, time.strftime("%Y-%m-%d", time.gmtime()))
        if refusal is not None:
            raise refusal

    async def _calls_action(self, phone_number_id: str, body: dict[str, Any]) -> dict[str, Any]:
        if body.get("messaging_product") != "whatsapp":
            raise invalid("messaging_product must be \"whatsapp\"")
        sip = self.number_settings(phone_number_id).get("calling", {}).get("sip", {})
        if sip.get("status") == "ENABLED":
            # §13: a SIP-enabled number refuses the calling Graph endpoints.
            raise GraphError(131055, "Calling Graph API endpoints are not available for a "
                             "number with SIP enabled", "Disable calling.sip to use /calls")
        action = body.get("action")
        if action == "connect":
            return await self._connect(phone_number_id, body)
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
        call.opt_in_request = opt_in_objects(body, action)
        if call.outbound and action != "terminate":
            # ASSUMPTION: pre_accept/accept/reject are the user-initiated actions (§2 table);
            # on a business-initiated call they are an invalid parameter.
            raise invalid(f"{action} is for calls from users; call {call_id} was placed by the "
                          "business (use terminate)")
        if action == "accept" and self.accept_latency_s > 0:
            await asyncio.sleep(self.accept_latency_s)  # Meta is slow to answer this one
        async with call.lock:
            if action in ("pre_accept", "accept"):
                await self._answer(call, action, body)
            elif action == "reject":
                await self._reject(call)
            else:
                await self._terminate(call)
        return {"messaging_product": "whatsapp", "success": True}

    async def _answer(self, call: SimulatedCall, action: str, body: dict[str, Any]) -> None:
        if call.is_over:
            # ASSUMPTION: actions on an ended call are refused as an invalid parameter.
            raise invalid(f"Call {call.call_id} has already ended")
        if call.state == "voicemail":
            # ASSUMPTION (docs/meta-2026-settings-events.md §2, §7): once Meta's voicemail took
            # the call, the business can no longer answer it; refused as an invalid parameter.
            raise invalid(f"Call {call.call_id} was answered by voicemail")
        sdp = session_sdp(body, action, "answer")
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
        call.opt_in = call.opt_in_request
        spoken = announcement(call.opt_in)
        if spoken:
            call.transcript.add(f"Meta announces to both sides: {spoken}")
        call.accepted.set()
        self.pair(call.phone_number_id, call.user.key).reset_requests()  # §10: a connected call

    async def _reject(self, call: SimulatedCall) -> None:
        if call.is_over:
            raise invalid(f"Call {call.call_id} has already ended")
        if call.state == "accepted":
            raise invalid("reject is only for a call not yet accepted; use terminate")
        if call.state == "voicemail":
            raise invalid(f"Call {call.call_id} was answered by voicemail")
        calling = self.number_settings(call.phone_number_id).get("calling", {})
        if number_settings.voicemail_on_reject(calling):
            await self._start_voicemail(call, "business sent reject (voicemail REJECT trigger)")
            return
        call.transcript.add("business sent reject: phone shows the call declined")
        call.state = "ending"
        self._spawn(self._end_locked(call))

    async def _terminate(self, call: SimulatedCall) -> None:
        if call.is_over:
            raise invalid(f"Call {call.call_id} has already ended")
        if call.outbound:
            call.transcript.add("hung up by the business (terminate)" if call.accepted_at
                                else "the business cancelled the call (terminate) before the "
                                "user picked up")
        elif call.state == "ringing":
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
