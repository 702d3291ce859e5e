"""How a user's call permission changes at Meta, and the ``call_permission_reply`` webhooks
that say so (docs/meta-calling.md §4-§6, §10): the user answers a request on the phone, a
user's call grants the callback permission, unanswered business calls revoke it."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

from gateway.simulator.meta import WebhookDelivery
from gateway.simulator.payloads import Payloads
from gateway.simulator.runtime import Clock
from gateway.simulator.transcript import Transcript
from gateway.simulator.users import UNANSWERED_TO_REVOKE, SimulatedUser
from gateway.simulator.waba import Waba
from gateway.simulator.webhooks import WebhookSender

if TYPE_CHECKING:
    from gateway.simulator.call import SimulatedCall


class PermissionReplies:
    """Changes users' call permissions the way Meta and the users do, and tells the business."""

    def __init__(self, *, waba: Waba, payloads: Payloads, webhooks: WebhookSender,
                 clock: Clock):
        self.waba = waba
        self.payloads = payloads
        self.webhooks = webhooks
        self.clock = clock

    async def send(self, phone_number_id: str, user: SimulatedUser, *, response: str,
                   source: str, context_id: str | None, permanent: bool, now: float,
                   transcript: Transcript | None = None) -> WebhookDelivery:
        payload = self.payloads.permission_reply(
            phone_number_id, user, response=response, source=source, context_id=context_id,
            permanent=permanent, expires_at=user.permission_expires_at, now=now)
        if transcript is not None:
            transcript.add(f"call_permission_reply webhook sent ({response}, {source})")
        self.waba.note(f"call_permission_reply webhook sent for {user.wa_id}: {response} "
                       f"({source})")
        return await self.webhooks.send(payload, transcript=transcript)

    async def answer_request(self, phone_number_id: str, user: SimulatedUser,
                             wamid: str) -> None:
        """The user answers the permission request on the phone (§6 permission reply).

        ASSUMPTION: a decline leaves the user without permission (the latest answer wins)."""
        how = user.on_permission_request
        if how == "ignore":
            self.waba.note(f"user {user.key} ignores the permission request {wamid}")
            return
        await asyncio.sleep(user.reply_after_s)
        now = self.clock.now()
        if how == "reject":
            user.set_permission("no_permission", now)
        else:
            user.set_permission("permanent" if how == "accept_permanent" else "temporary", now)
        self.waba.note(f"user {user.key} answers the permission request: "
                       f"{'reject' if how == 'reject' else user.permission}")
        await self.send(
            phone_number_id, user, response="reject" if how == "reject" else "accept",
            source="user_action", context_id=wamid, permanent=how == "accept_permanent",
            now=now)

    async def grant_callback(self, call: SimulatedCall, user: SimulatedUser,
                             delay_s: float) -> None:
        """§4 callback_permission_status ENABLED: a user who calls (answered or missed) grants
        a temporary permission; the reply webhook names the call (context.id = wacid,
        tests/fixtures/payloads/webhook-call-permission-reply-automatic-callback.json).

        ASSUMPTION: nothing is granted (nor sent) while a permanent permission exists; an
        existing temporary one is renewed for 7 days, with a webhook."""
        await asyncio.sleep(delay_s)
        now = self.clock.now()
        if user.permission_status(now) == "permanent":
            return
        user.set_permission("temporary", now)
        call.transcript.add("callback permission granted automatically (temporary, 7 days)")
        self.waba.note(f"user {user.wa_id} called: temporary call permission granted "
                       "automatically")
        await self.send(call.phone_number_id, user, response="accept", source="automatic",
                        context_id=call.call_id, permanent=False, now=now,
                        transcript=call.transcript)

    async def count_unanswered(self, call: SimulatedCall) -> None:
        """§10: declined or unanswered business calls in a row; 4 revoke the permission, with
        an automatic reject reply
        (tests/fixtures/payloads/webhook-call-permission-reply-auto-revoked.json).

        ASSUMPTION: only what the user did counts (declined, or not picked up before the ring
        timeout); a call the business cancelled or that failed on media does not."""
        if call.accepted_at is not None or call.ended_by not in ("user", "ring timeout"):
            return
        counters = self.waba.pair(call.phone_number_id, call.user.key)
        counters.unanswered_streak += 1
        call.transcript.add(f"unanswered business calls in a row: {counters.unanswered_streak}")
        if counters.unanswered_streak < UNANSWERED_TO_REVOKE:
            return
        counters.unanswered_streak = 0
        user = call.user
        now = self.clock.now()
        user.set_permission("no_permission", now)
        call.transcript.add(f"{UNANSWERED_TO_REVOKE} unanswered calls in a row: call permission "
                            "revoked automatically")
        await self.send(call.phone_number_id, user, response="reject", source="automatic",
                        context_id=None, permanent=False, now=now, transcript=call.transcript)
