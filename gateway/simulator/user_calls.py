"""User-initiated calls at the simulated Meta: the user taps "call", the phone offers, Meta
sends the connect webhook and starts its timers (ring timeout, voicemail, callback
permission)."""

from __future__ import annotations

import time

from gateway.simulator import settings as number_settings
from gateway.simulator.call import SimulatedCall
from gateway.simulator.calls import CallRegistry, Phones
from gateway.simulator.media import CallMedia
from gateway.simulator.meta import new_wacid
from gateway.simulator.payloads import Payloads
from gateway.simulator.permission_replies import PermissionReplies
from gateway.simulator.runtime import Background, Clock, MetaTimings
from gateway.simulator.transcript import Transcript
from gateway.simulator.waba import Waba
from gateway.simulator.webhooks import WebhookSender


class UserCalls:
    """A WhatsApp user calls one of the account's business numbers."""

    def __init__(self, *, waba: Waba, registry: CallRegistry, phones: Phones,
                 payloads: Payloads, webhooks: WebhookSender, media: CallMedia,
                 permissions: PermissionReplies, timings: MetaTimings, clock: Clock,
                 background: Background):
        self.waba = waba
        self.registry = registry
        self.phones = phones
        self.payloads = payloads
        self.webhooks = webhooks
        self.media = media
        self.permissions = permissions
        self.timings = timings
        self.clock = clock
        self.background = background

    async def place_call(self, *, from_wa_id: str, profile_name: str | None = "Test User",
                         phone_number_id: str | None = None,
                         display_phone_number: str | None = None,
                         cta_payload: str | None = None, deeplink_payload: str | None = None,
                         idle_audio: bytes | None = None) -> SimulatedCall:
        """The user taps "call": the phone rings at once and Meta sends the connect webhook.
        Returns when the webhook has been delivered (or delivery failed). ``from_wa_id`` is the
        user's number or, for a user added without one, their BSUID; whether the webhook shows
        the number follows docs/meta-2026-identity.md §1 (:meth:`Waba.shows_number`)."""
        waba = self.waba
        phone_number_id = phone_number_id or waba.default_phone_number_id
        user = waba.user(from_wa_id, profile_name)
        from_wa_id = user.wa_id
        display = display_phone_number or waba.display_number(phone_number_id)
        waba.numbers.setdefault(phone_number_id, display)
        transcript = Transcript()
        calling = waba.calling(phone_number_id)
        phone = self.phones.new(transcript, f"phone {user.key}", idle_audio,
                                g711=number_settings.additional_codecs(calling))
        await phone.make_offer()
        call = self.registry.new_call(
            call_id=new_wacid(user.key), from_wa_id=from_wa_id, profile_name=profile_name,
            phone_number_id=phone_number_id, display_phone_number=display,
            cta_payload=cta_payload, deeplink_payload=deeplink_payload, transcript=transcript,
            phone=phone, user=user, show_number=waba.shows_number(phone_number_id, user))
        # The story starts when the phone rings (the offer took its time); the transcript and
        # the phone's audio share the real monotonic clock.
        transcript.t0 = time.monotonic()
        call.started_at = self.clock.now()
        if call.show_number:
            waba.number_contact(phone_number_id, user, call.started_at)
        else:
            transcript.add(f"user {user.user_id} (username {user.username}) calls without a "
                           "visible number: no contact with this business number in 30 days")
        user.in_service_window = True  # §10: a call opens the customer-service window
        self.background.spawn(call.ring_until_timeout(self.timings.ring_timeout_s))
        await self.registry.add(call)
        await self.webhooks.send_call_webhook(call, self.payloads.connect(call))
        voicemail_after = number_settings.voicemail_timeout(calling)
        if voicemail_after is not None:
            self.background.spawn(self.media.voicemail_timer(call, voicemail_after))
        if calling.get("callback_permission_status") == "ENABLED":
            self.background.spawn(self.permissions.grant_callback(
                call, user, self.timings.callback_grant_delay_s))
        return call
