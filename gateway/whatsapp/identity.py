"""Who a WhatsApp user is to the gateway: the one place that decides how a user is keyed.

Since April 2026 Meta identifies users by a business-scoped user id (BSUID, ``US.1349…``;
parent BSUIDs ``US.ENT.…``) next to, or instead of, their phone number: a user with a username
and no recent contact with the business number arrives with no number at all
(docs/meta-2026-identity.md §1). Records, logs, metrics and the permission ledger all key a user
with :func:`user_key`: the number when there is one, in the one canonical form of
:func:`canonical_number`, else the BSUID. When both are known the ledger links them, so either
finds the same user.

Numbers: the number a business dials and the ``wa_id`` Meta reports can differ for the same
account -- Brazil's ninth mobile digit (dialled ``55 11 9 8765 4321``, wa_id often
``55 11 8765 4321``) and Mexico's ``521`` (wa_id ``521 55 1234 5678``, dialled ``52 55 1234
5678``). :func:`canonical_number` maps every form to one key, so a permission reply and the
call limit land on the same user whichever form arrived.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

BSUID = re.compile(r"[A-Z]{2}\.(?:ENT\.)?[A-Za-z0-9]{1,128}")
"""docs/meta-2026-identity.md §1: ISO-3166 alpha-2 country, a period, up to 128 alphanumerics;
parents contain ``ENT``."""
E164_DIGITS = re.compile(r"[1-9]\d{6,14}")


def is_bsuid(text: str | None) -> bool:
    """A BSUID or parent BSUID (``US.1000…``, ``US.ENT.2000…``)."""
    return bool(text) and BSUID.fullmatch(str(text).strip()) is not None


def number_digits(number: str | None) -> str:
    """``+55 (11) 98765-4321`` → ``5511987654321``; empty for no number."""
    return re.sub(r"\D", "", number or "")


def canonical_number(number: str | None) -> str:
    """The one key for a WhatsApp number, whichever form Meta or an admin wrote it in.

    - Brazil (55): a 13-digit mobile (two-digit area code, then 9 and eight digits) loses the
      ninth digit: ``5511987654321`` → ``551187654321``, the form old accounts' wa_ids have.
      Twelve-digit numbers stay (landlines and old-form mobiles alike).
    - Mexico (52): ``521`` + 10 digits (the wa_id form) → ``52`` + 10 digits (the dialled one).
    - Anything else: the digits as given.

    The key is only for matching; what is sent to Meta is always what the admin or Meta
    wrote (never a rewritten number)."""
    digits = number_digits(number)
    if digits.startswith("55") and len(digits) == 13 and digits[4] == "9":
        return digits[:4] + digits[5:]
    if digits.startswith("521") and len(digits) == 13:
        return "52" + digits[3:]
    return digits


def user_key(wa_id: str | None = None, user_id: str | None = None) -> str:
    """How the gateway keys a user: the canonical number when known, else the BSUID; empty
    when neither is known."""
    number = canonical_number(wa_id)
    if number:
        return number
    return (user_id or "").strip()


@dataclass(frozen=True)
class WhatsAppUser:
    """The user on the far side of a call or a permission reply, as Meta described them."""

    wa_id: str = ""
    """The phone number (wa_id), digits; empty when Meta left it out (docs/meta-2026-identity.md
    §1)."""
    user_id: str = ""
    """The BSUID; empty in payloads from before April 2026."""
    parent_user_id: str = ""
    username: str = ""
    profile_name: str = ""

    @property
    def key(self) -> str:
        return user_key(self.wa_id, self.user_id)

    @property
    def linkable(self) -> bool:
        """Both number and BSUID known: the ledger links them (docs/meta-2026-identity.md §1)."""
        return bool(self.wa_id and self.user_id)


def parse_target(text: str | None) -> tuple[str, str]:
    """A user to call or ask, from the API or the dialplan: ``(number, bsuid)`` with exactly
    one of them set; ValueError when ``text`` is neither an E.164 number nor a BSUID."""
    text = (text or "").strip()
    if is_bsuid(text):
        return "", text
    digits = text.lstrip("+")
    if E164_DIGITS.fullmatch(digits):
        return digits, ""
    raise ValueError("must be an E.164 number like +5511987650000 or a BSUID like "
                     "US.13491208655302741918")
