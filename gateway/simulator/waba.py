"""The WhatsApp Business Account the simulated Meta serves: its business numbers and their
settings, the users Meta knows, Meta's counters per number and user, and the account's story.

Every other part of the simulator reads and changes this state through the one :class:`Waba`
it is given.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from gateway.simulator import settings as number_settings
from gateway.simulator.meta import DEFAULT_DISPLAY_NUMBER, invalid
from gateway.simulator.runtime import Clock
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


class Waba:
    """One business account at Meta: numbers, settings, users, counters, messages sent."""

    def __init__(self, *, clock: Clock, waba_id: str, phone_number_id: str,
                 display_phone_number: str, default_user: SimulatedUser | None = None):
        self.clock = clock
        self.waba_id = waba_id
        self.numbers: dict[str, str] = {phone_number_id: display_phone_number}
        """phone_number_id → display number of the business numbers this account has."""
        self.default_phone_number_id = phone_number_id
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
        self.notes = Transcript()
        """Account-level story: permission requests and replies, settings changes, users."""
        self.note_listeners: list[Callable[[str], None]] = []

    def note(self, text: str) -> None:
        """Add a line to the account-level story (:attr:`notes`)."""
        line = self.notes.add(text)
        for listener in self.note_listeners:
            listener(line)

    def display_number(self, phone_number_id: str) -> str:
        return self.numbers.get(phone_number_id, DEFAULT_DISPLAY_NUMBER)

    # --- users --------------------------------------------------------------------------------

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
                user.permission_expires_at = self.clock.now() + TEMPORARY_PERMISSION_S
            self.users[wa_id] = user
        return user

    def add_user(self, wa_id: str, **fields: Any) -> SimulatedUser:
        """Configure a user (replacing any earlier one): ``add_user("15550002222",
        permission="temporary", on_call="reject", answer_after_s=0.5)``. A temporary permission
        without ``permission_expires_at`` lasts 7 days from now. ``username="testuser"`` hides
        the number from business numbers without recent contact; ``wa_id=""`` with a
        ``user_id`` makes a user whose number is never shown."""
        user = SimulatedUser(wa_id=wa_id.lstrip("+"), **fields)
        if not user.key:
            raise ValueError("a user needs a wa_id or a user_id")
        if user.permission == "temporary" and user.permission_expires_at is None:
            user.permission_expires_at = self.clock.now() + TEMPORARY_PERMISSION_S
        self.users[user.key] = user
        return user

    def recipient(self, body: dict[str, Any]) -> tuple[SimulatedUser, bool]:
        """Who a ``connect`` or a message is for, and whether it named the user's number.

        docs/meta-2026-identity.md §1: ``to`` (the number) or ``recipient`` (a BSUID or parent
        BSUID); **``to`` wins if both
        are sent**. A number finds its account in any of Meta's forms (Brazil's ninth digit,
        Mexico's 521). ASSUMPTION: no call-specific error exists for an unknown or
        foreign-portfolio BSUID (docs/meta-2026-identity.md §1 unknown), so it is an invalid
        parameter (100)."""
        to, recipient = body.get("to"), body.get("recipient")
        if to is not None:
            if not isinstance(to, str) or not re.fullmatch(r"\+?\d{6,15}", to.strip()):
                raise invalid("to must be the user's phone number (digits, optionally with +)")
            return self.user(to.strip().lstrip("+")), True
        if recipient is None:
            raise invalid("to (the user's phone number) or recipient (the user's BSUID) is "
                          "required")
        if not isinstance(recipient, str) or not BSUID.fullmatch(recipient.strip()):
            raise invalid("recipient must be a BSUID (e.g. US.13491208655302741918) or a "
                          "parent BSUID")
        user = self.find_user(recipient.strip())
        if user is None:
            raise invalid(f"recipient {recipient} is not a user of this business portfolio")
        return user, False

    # --- Meta's counters per business number and user -----------------------------------------

    def pair(self, phone_number_id: str, wa_id: str) -> PairCounters:
        """Meta's counters for a business number + user pair (the user by number or BSUID)."""
        return self.counters.setdefault((phone_number_id, self.user(wa_id).key), PairCounters())

    def shows_number(self, phone_number_id: str, user: SimulatedUser,
                     now: float | None = None) -> bool:
        """Does this business number see the user's number now (docs/meta-2026-identity.md §1)?"""
        return number_visible(user, self.pair(phone_number_id, user.key),
                              self.clock.now() if now is None else now)

    def number_contact(self, phone_number_id: str, user: SimulatedUser,
                       now: float | None = None) -> None:
        """The business number and the user's number were in contact (30-day rule,
        docs/meta-2026-identity.md §1)."""
        if user.wa_id:
            self.pair(phone_number_id, user.key).number_contact_at = \
                self.clock.now() if now is None else now

    # --- the numbers' settings ----------------------------------------------------------------

    def number_settings(self, phone_number_id: str) -> dict[str, Any]:
        """The number's settings (``{"calling": {...}}``), created from the sample on first use.
        Tests may edit them directly (e.g. add ``calling.restrictions``)."""
        if phone_number_id not in self.settings:
            self.settings[phone_number_id] = number_settings.default_settings()
        return self.settings[phone_number_id]

    def calling(self, phone_number_id: str) -> dict[str, Any]:
        """The number's ``calling`` settings."""
        return self.number_settings(phone_number_id).get("calling", {})
