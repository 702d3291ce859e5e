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

:class:`CloudApiSimulator` holds the parts, each with the references it needs and nothing
else, and serves them on one HTTP server:

=====================  ========================================================================
``waba``               the account: numbers, settings, users, Meta's counters (waba.py)
``graph``              request log, auth/version/number checks, injected faults (graph_api.py)
``webhooks``           signed delivery with Meta's retries (webhooks.py)
``payloads``           webhook bodies (payloads.py)
``registry``           the calls, both directions, and the phones (calls.py)
``user_calls``         a user calls the business (user_calls.py)
``business``           the business calls a user: ``connect`` (outbound.py)
``calls_api``          ``POST /calls`` (calls_api.py)
``account``            ``call_permissions``, ``settings``, ``messages`` (account.py)
``account_events``     ``account_update`` / ``account_settings_update`` (account_events.py)
``media_store``        voicemail, recordings, transcripts, media URLs (media.py)
=====================  ========================================================================
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from aiohttp import web

from gateway.simulator.account import AccountApi
from gateway.simulator.account_events import PAUSE_S, RESTRICTIONS, VIOLATIONS, AccountEvents
from gateway.simulator.call import SimulatedCall
from gateway.simulator.calls import CallEnds, CallRegistry, Phones
from gateway.simulator.calls_api import CallsEndpoint
from gateway.simulator.graph_api import GraphApi, InjectedFault
from gateway.simulator.media import CallMedia, MediaFile
from gateway.simulator.meta import (
    DEFAULT_DISPLAY_NUMBER,
    DEFAULT_PHONE_NUMBER_ID,
    DEFAULT_VERSION,
    DEFAULT_WABA_ID,
    SIGN,
    ApiRequest,
    WebhookDelivery,
)
from gateway.simulator.outbound import BusinessCalls
from gateway.simulator.payloads import Payloads
from gateway.simulator.permission_replies import PermissionReplies
from gateway.simulator.phone import DEFAULT_TIMERS, PhoneTimers
from gateway.simulator.prompts import PromptLibrary
from gateway.simulator.runtime import Background, Clock, MetaTimings, SystemClock
from gateway.simulator.transcript import Transcript
from gateway.simulator.user_calls import UserCalls
from gateway.simulator.users import PairCounters, SimulatedUser
from gateway.simulator.waba import Waba
from gateway.simulator.webhooks import WebhookSender, encode

__all__ = ["DEFAULT_DISPLAY_NUMBER", "DEFAULT_PHONE_NUMBER_ID", "DEFAULT_WABA_ID",
           "CloudApiSimulator", "InjectedFault", "SimulatedCall"]


class CloudApiSimulator:
    """graph.facebook.com for the calling API, plus the phones of the users who call.

    ``url`` is the Graph base to configure in the gateway (``http://127.0.0.1:PORT/v25.0``).
    Extra routes (the admin control API) can be added to ``app`` before :meth:`start`.
    ``clock`` is where Meta reads the time (tests pass one they move forward).
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
                 accept_latency_s: float = 0.0, clock: Clock | None = None):
        self.host, self.port, self.version = host, port, version
        self.clock: Clock = clock or SystemClock()
        self.background = Background()
        self.timings = MetaTimings(
            ring_timeout_s=ring_timeout_s, connect_webhook_delay_s=connect_webhook_delay_s,
            ringing_delay_s=ringing_delay_s, callback_grant_delay_s=callback_grant_delay_s,
            accept_latency_s=accept_latency_s)
        common = {"clock": self.clock, "background": self.background}
        self.waba = Waba(clock=self.clock, waba_id=waba_id, phone_number_id=phone_number_id,
                         display_phone_number=display_phone_number, default_user=default_user)
        self.graph = GraphApi(waba=self.waba, clock=self.clock, access_token=access_token)
        self.webhooks = WebhookSender(app_secret=app_secret, url=webhook_url,
                                      timeout_s=webhook_timeout_s,
                                      retry_delays=webhook_retry_delays, **common)
        self.payloads = Payloads(waba=self.waba, clock=self.clock)
        self.permissions = PermissionReplies(waba=self.waba, payloads=self.payloads,
                                             webhooks=self.webhooks, clock=self.clock)
        self.media_store = CallMedia(
            waba=self.waba, graph=self.graph, payloads=self.payloads, webhooks=self.webhooks,
            base_url=lambda: self.base_url, media_url_ttl_s=media_url_ttl_s,
            recording_delay_s=recording_delay_s, voicemail_length_s=voicemail_length_s,
            **common)
        self.phones = Phones(timers=phone_timers, hearing_window_s=hearing_window_s)
        self.registry = CallRegistry(
            ending=CallEnds(payloads=self.payloads, webhooks=self.webhooks,
                            media=self.media_store, permissions=self.permissions,
                            background=self.background),
            requests=self.graph, **common)
        parts = {"waba": self.waba, "registry": self.registry, "phones": self.phones,
                 "payloads": self.payloads, "webhooks": self.webhooks,
                 "timings": self.timings, **common}
        self.user_calls = UserCalls(media=self.media_store, permissions=self.permissions,
                                    **parts)
        self.business = BusinessCalls(**parts)
        self.calls_api = CallsEndpoint(waba=self.waba, graph=self.graph,
                                       registry=self.registry, business=self.business,
                                       media=self.media_store, timings=self.timings, **common)
        self.account_events = AccountEvents(waba=self.waba, webhooks=self.webhooks,
                                            clock=self.clock)
        self.account = AccountApi(waba=self.waba, graph=self.graph, payloads=self.payloads,
                                  webhooks=self.webhooks, permissions=self.permissions,
                                  events=self.account_events, **common)
        self.app = web.Application()
        for part in (self.calls_api, self.account, self.media_store, self.graph):
            part.add_routes(self.app)
        self._runner: web.AppRunner | None = None

    # --- lifecycle ----------------------------------------------------------------------------

    async def start(self) -> None:
        await self.webhooks.start()
        self._runner = web.AppRunner(self.app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port)
        await site.start()
        self.port = self._runner.addresses[0][1]

    async def close(self) -> None:
        await self.registry.hang_up_all()
        await self.background.close()
        if self._runner:
            await self._runner.cleanup()
        await self.webhooks.close()

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

    # --- what tests and the admin tools reach: the parts' state, by its usual name ------------

    @property
    def webhook_url(self) -> str | None:
        return self.webhooks.url

    @webhook_url.setter
    def webhook_url(self, url: str | None) -> None:
        self.webhooks.url = url

    @property
    def prompts(self) -> PromptLibrary | None:
        """Asterisk's sound files: phones name the prompts they hear (simulator/prompts.py)."""
        return self.phones.prompts

    @prompts.setter
    def prompts(self, library: PromptLibrary | None) -> None:
        self.phones.prompts = library

    @property
    def numbers(self) -> dict[str, str]:
        return self.waba.numbers

    @property
    def default_phone_number_id(self) -> str:
        return self.waba.default_phone_number_id

    @property
    def users(self) -> dict[str, SimulatedUser]:
        return self.waba.users

    @property
    def default_user(self) -> SimulatedUser:
        return self.waba.default_user

    @property
    def counters(self) -> dict[tuple[str, str], PairCounters]:
        return self.waba.counters

    @property
    def settings(self) -> dict[str, dict[str, Any]]:
        return self.waba.settings

    @property
    def messages(self) -> list[dict[str, Any]]:
        return self.waba.messages

    @property
    def notes(self) -> Transcript:
        return self.waba.notes

    @property
    def note_listeners(self) -> list[Callable[[str], None]]:
        return self.waba.note_listeners

    @property
    def calls(self) -> dict[str, SimulatedCall]:
        return self.registry.calls

    @property
    def call_listeners(self) -> list[Callable[[SimulatedCall], None]]:
        return self.registry.listeners

    @property
    def outbound_calls(self) -> list[SimulatedCall]:
        return self.registry.outbound_calls

    @property
    def requests(self) -> list[ApiRequest]:
        return self.graph.requests

    @property
    def faults(self) -> list[InjectedFault]:
        return self.graph.faults

    @property
    def media(self) -> dict[str, MediaFile]:
        return self.media_store.media

    @property
    def media_downloads(self) -> list[tuple[str, int]]:
        return self.media_store.media_downloads

    # --- what tests and the admin tools do: the parts' methods, by their usual name -----------

    def note(self, text: str) -> None:
        self.waba.note(text)

    def user(self, wa_id: str, profile_name: str | None = None) -> SimulatedUser:
        return self.waba.user(wa_id, profile_name)

    def find_user(self, who: str) -> SimulatedUser | None:
        return self.waba.find_user(who)

    def add_user(self, wa_id: str, **fields: Any) -> SimulatedUser:
        return self.waba.add_user(wa_id, **fields)

    def pair(self, phone_number_id: str, wa_id: str) -> PairCounters:
        return self.waba.pair(phone_number_id, wa_id)

    def number_settings(self, phone_number_id: str) -> dict[str, Any]:
        return self.waba.number_settings(phone_number_id)

    async def place_call(self, *, from_wa_id: str, profile_name: str | None = "Test User",
                         phone_number_id: str | None = None,
                         display_phone_number: str | None = None,
                         cta_payload: str | None = None, deeplink_payload: str | None = None,
                         idle_audio: bytes | None = None) -> SimulatedCall:
        """A user calls the business: :meth:`UserCalls.place_call`."""
        return await self.user_calls.place_call(
            from_wa_id=from_wa_id, profile_name=profile_name, phone_number_id=phone_number_id,
            display_phone_number=display_phone_number, cta_payload=cta_payload,
            deeplink_payload=deeplink_payload, idle_audio=idle_audio)

    async def wait_outbound_call(self, to: str | None = None,
                                 timeout: float | None = 10.0) -> SimulatedCall:
        return await self.registry.wait_outbound_call(to, timeout)

    def requests_for(self, call_id: str | None = None, action: str | None = None,
                     endpoint: str | None = None) -> list[ApiRequest]:
        return self.graph.requests_for(call_id, action, endpoint)

    def fail_next(self, action: str, status: int = 500, count: int = 1, *,
                  retry_after: float | None = None, delay_s: float = 0.0) -> InjectedFault:
        return self.graph.fail_next(action, status, count, retry_after=retry_after,
                                    delay_s=delay_s)

    encode = staticmethod(encode)

    async def send_webhook(self, payload: Any, *,
                           transcript: Transcript | None = None) -> WebhookDelivery:
        return await self.webhooks.send(payload, transcript=transcript)

    async def send_raw_webhook(self, body: bytes, *, signature: Any = SIGN,
                               content_type: str = "application/json") -> WebhookDelivery:
        return await self.webhooks.send_raw(body, signature=signature,
                                            content_type=content_type)

    async def redeliver(self, delivery: WebhookDelivery) -> WebhookDelivery:
        return await self.webhooks.redeliver(delivery)

    def connect_payload(self, call: SimulatedCall) -> dict[str, Any]:
        return self.payloads.connect(call)

    def media_url(self, media_id: str) -> str:
        return self.media_store.media_url(media_id)

    async def send_account_violation(self, phone_number_id: str | None = None,
                                     violation_type: str = VIOLATIONS[0],
                                     remediation: str | None = None) -> WebhookDelivery:
        return await self.account_events.send_account_violation(
            phone_number_id, violation_type, remediation)

    async def restrict_calling(self, phone_number_id: str | None = None,
                               restriction_type: str = RESTRICTIONS[0],
                               duration_s: float | None = PAUSE_S,
                               remediation: str | None = None) -> WebhookDelivery:
        return await self.account_events.restrict_calling(
            phone_number_id, restriction_type, duration_s, remediation)

