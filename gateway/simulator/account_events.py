"""Meta's account notices, simulated: ``account_update`` and ``account_settings_update``.

Shaped like tests/fixtures/payloads/webhook-account-update-{low-pickup,calling-restriction}.json and
tests/fixtures/payloads/webhook-account-settings-update.json (docs/meta-2026-settings-events.md §3;
section numbers below are that note's). Meta decides on its own when a number's pickup rate or
quality is too low; its thresholds are not published, so the simulator does not guess them: a test
(or an admin) sends the notice it wants to see with :meth:`AccountEvents.send_account_violation` /
:meth:`AccountEvents.restrict_calling`. A restriction is also written into the number's
``restrictions_list`` (what ``GET settings`` shows) so business-initiated calls are refused with
138014 while it lasts.
"""

from __future__ import annotations

from typing import Any

from gateway.simulator import settings as number_settings
from gateway.simulator.meta import WebhookDelivery
from gateway.simulator.runtime import Clock
from gateway.simulator.waba import Waba
from gateway.simulator.webhooks import WebhookSender

VIOLATIONS = ("USER_INITIATED_CALLS_LOW_PICKUP_RATE", "LOW_USER_INITIATED_CALLING_QUALITY",
              "LOW_BUSINESS_INITIATED_CALLING_QUALITY")
RESTRICTIONS = ("RESTRICTED_BUSINESS_INITIATED_CALLING",
                "RESTRICTED_USER_INITIATED_CALLING_CALL_BUTTON_HIDDEN")
"""The two restrictions Meta documents (§3): the 7-day pause of business-initiated calling
(which also stops permission requests) and the hidden call button."""
BUTTON_HIDDEN = "RESTRICTED_USER_INITIATED_CALLING_CALL_BUTTON_HIDDEN"
PAUSE_S = 7 * 24 * 3600
"""§3: a calling pause lasts 7 days."""
PICKUP_REMEDIATION = ("Please identify and address the cause of user-initiated calls not being "
                      "picked up.")
BUTTON_REMEDIATION = ("Answer more of the calls you receive, then turn the call button back on "
                      "in WhatsApp Manager.")


class AccountEvents:
    """Meta's account-level webhooks for one business account."""

    def __init__(self, *, waba: Waba, webhooks: WebhookSender, clock: Clock):
        self.waba = waba
        self.webhooks = webhooks
        self.clock = clock

    def _account_envelope(self, field_name: str, value: dict[str, Any],
                          with_time: bool = True) -> dict[str, Any]:
        entry: dict[str, Any] = {"id": self.waba.waba_id}
        if with_time:
            entry["time"] = int(self.clock.now())
        entry["changes"] = [{"field": field_name, "value": value}]
        return {"object": "whatsapp_business_account", "entry": [entry]}

    def account_update_payload(self, phone_number_id: str, event: str,
                               **value: Any) -> dict[str, Any]:
        display = self.waba.numbers.get(phone_number_id, phone_number_id)
        return self._account_envelope("account_update",
                                      {"phone_number": display, "event": event, **value})

    async def send_account_violation(self, phone_number_id: str | None = None,
                                     violation_type: str = VIOLATIONS[0],
                                     remediation: str | None = None) -> WebhookDelivery:
        """Meta's early warning (§3): ``ACCOUNT_VIOLATION`` with ``violation_info``; the
        pickup-rate warning carries a ``remediation`` text."""
        if violation_type not in VIOLATIONS:
            raise ValueError(f"violation_type must be one of {', '.join(VIOLATIONS)}")
        pnid = phone_number_id or self.waba.default_phone_number_id
        info: dict[str, Any] = {"violation_type": violation_type}
        if remediation is None and violation_type == VIOLATIONS[0]:
            remediation = PICKUP_REMEDIATION
        if remediation is not None:
            info["remediation"] = remediation
        self.waba.note(f"account_update ACCOUNT_VIOLATION {violation_type} for {pnid}")
        return await self.webhooks.send(self.account_update_payload(
            pnid, "ACCOUNT_VIOLATION", violation_info=info))

    async def restrict_calling(self, phone_number_id: str | None = None,
                               restriction_type: str = RESTRICTIONS[0],
                               duration_s: float | None = PAUSE_S,
                               remediation: str | None = None) -> WebhookDelivery:
        """``ACCOUNT_RESTRICTION`` (§3): a 7-day pause with an ``expiration``, or the call
        button hidden (no expiration, a ``remediation``). The restriction also appears in
        ``GET settings`` ``restrictions_list``."""
        if restriction_type not in RESTRICTIONS:
            raise ValueError(f"restriction_type must be one of {', '.join(RESTRICTIONS)}")
        pnid = phone_number_id or self.waba.default_phone_number_id
        item: dict[str, Any] = {"restriction_type": restriction_type}
        listed: dict[str, Any] = {"type": restriction_type,
                                  "reason": remediation or "Calling is restricted for this "
                                  "phone number."}
        if restriction_type == BUTTON_HIDDEN:
            item["remediation"] = remediation or BUTTON_REMEDIATION
        elif duration_s is not None:
            expiration = int(self.clock.now() + duration_s)
            item["expiration"] = expiration
            listed["expiration"] = expiration
        calling = self.waba.number_settings(pnid).setdefault("calling", {})
        restrictions = calling.setdefault("restrictions", {}).setdefault("restrictions_list", [])
        restrictions[:] = [r for r in restrictions if r.get("type") != restriction_type]
        restrictions.append(listed)
        self.waba.note(f"account_update ACCOUNT_RESTRICTION {restriction_type} for {pnid}")
        return await self.webhooks.send(self.account_update_payload(
            pnid, "ACCOUNT_RESTRICTION", restriction_info=[item]))

    def account_settings_payload(self, phone_number_id: str) -> dict[str, Any]:
        """``account_settings_update`` (§3): type ``phone_number_settings`` as in the sample
        (the table says ``PHONE_NUMBER_SETTINGS``), with the tracked calling settings."""
        calling = self.waba.number_settings(phone_number_id).get("calling") or {}
        value = {"messaging_product": "whatsapp", "timestamp": str(int(self.clock.now())),
                 "type": "phone_number_settings",
                 "phone_number_settings": {"phone_number_id": phone_number_id,
                                           "calling": number_settings.tracked_settings(calling)
                                           or None}}
        return self._account_envelope("account_settings_update", value, with_time=False)

    async def settings_changed(self, phone_number_id: str, before: dict[str, Any],
                                after: dict[str, Any]) -> None:
        """Meta notifies the business of tracked settings changes, its own included (§3)."""
        if number_settings.tracked_settings(before) == number_settings.tracked_settings(after):
            return
        self.waba.note(f"account_settings_update webhook sent for {phone_number_id}")
        await self.webhooks.send(self.account_settings_payload(phone_number_id))
