"""The simulated Meta's vocabulary: ids, error bodies, recorded requests and webhook
deliveries, and the country rule for business-initiated calls (docs/meta-calling.md §10-11)."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import re
import secrets
from dataclasses import dataclass, field
from typing import Any

DEFAULT_WABA_ID = "102290000000001"
DEFAULT_PHONE_NUMBER_ID = "106540000000002"
DEFAULT_DISPLAY_NUMBER = "15550001111"
DEFAULT_VERSION = "v25.0"
"""A current Graph version (docs/meta-2026-identity.md §7: v25.0 or v26.0 preferred)."""
LATEST_VERSION = 26
VERSION_AVAILABLE_UNTIL: dict[int, str | None] = {
    17: "2025-09-12", 18: "2025-09-12", 19: "2025-09-12", 20: "2025-09-12",
    21: "2027-01-21", 22: "2027-05-20", 23: "2027-05-20", 24: "2027-05-20",
    25: "2028-07-29", 26: None,
}
"""The last day each Graph version answers (docs/meta-2026-identity.md §7, from Meta's Graph
API changelog; None: not announced). Meta gives ranges for v17-v20 ("expired 2025-09-12 to
2026-09-24") and v22-v24 ("2027-05-20 to 2028-02-18"): each range is read as its earliest
date (ASSUMPTION, the strict reading: a version is never treated as alive longer than Meta
may keep it). Versions below v17 never had calling."""
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


def version_refusal(version: str, today: str) -> GraphError | None:
    """Meta's answer to a request on an expired, unknown or malformed Graph version
    (docs/meta-2026-identity.md §7), or
    None when ``version`` works on ``today`` (``YYYY-MM-DD``, UTC).

    ASSUMPTION: the reference says v17-v20 "expired" without showing Meta's answer. The
    strict reading is taken -- the request is refused (code 2635, "deprecated version") --
    rather than silently served by a newer version, so a gateway configured with a dead
    version finds out in its tests."""
    m = re.fullmatch(r"v(\d+)\.(\d+)", version)
    if not m:
        return GraphError(2500, f"Unknown path components: /{version}", status=400)
    major = int(m.group(1))
    if major > LATEST_VERSION or m.group(2) != "0":
        return GraphError(2500, f"Unknown path components: /{version}", status=400)
    until = VERSION_AVAILABLE_UNTIL.get(major, "")
    if until == "" or (until is not None and today > until):
        return GraphError(2635, f"(#2635) You are calling a deprecated version of the Graph "
                          f"API ({version}). Please update to the latest version: "
                          f"v{LATEST_VERSION}.0.",
                          f"{version} is no longer available" + (f" (since {until})"
                                                                 if until else ""))
    return None


def new_wamid() -> str:
    """A message id shaped like Meta's ``wamid.`` + base64."""
    return "wamid." + base64.b64encode(b"HBgL" + secrets.token_bytes(24)).decode()


class GraphError(Exception):
    """An error the Graph API answers with (body per
    tests/fixtures/payloads/response-error.json)."""

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
    (tests/fixtures/payloads/webhook-verification.md)."""
    return "sha256=" + hmac.new(app_secret.encode(), body, hashlib.sha256).hexdigest()


def new_wacid(wa_id: str, user_initiated: bool = True) -> str:
    """A call id shaped like Meta's: ``wacid.`` + base64 of a small binary record holding the
    user's number and a random id (decode payloads' wacids to see the same layout)."""
    direction = b"\x12" if user_initiated else b"\x11"
    raw = (b"\x1c\x18" + bytes([len(wa_id)]) + wa_id.encode() + b"\x15\x02\x00" + direction
           + b"\x18\x14" + secrets.token_hex(10).upper().encode() + b"\x00")
    return "wacid." + base64.b64encode(raw).decode()


def session_sdp(body: dict[str, Any], action: str, sdp_type: str) -> str:
    """The ``session`` of a /calls request, checked like Meta checks it (§2, §9, §14): an
    ``offer`` for connect, an ``answer`` for pre_accept/accept, with audio, Opus and a
    sha-256 fingerprint. Raises the error 100 Meta would answer."""
    session = body.get("session")
    if not isinstance(session, dict):
        raise invalid(f"session {{sdp_type, sdp}} is required for {action}")
    if session.get("sdp_type") != sdp_type:
        # §14: the reference tables say "offer" for pre_accept/accept; Meta's examples and
        # behaviour say "answer".
        raise invalid(f"session.sdp_type must be \"{sdp_type}\" for {action}, "
                      f"got {session.get('sdp_type')!r}")
    sdp = session.get("sdp")
    if not isinstance(sdp, str) or "m=audio" not in sdp:
        raise invalid(f"session.sdp must be an SDP {sdp_type} with an audio section")
    # An answer may pick G.711 instead, when the offer carried it (the number's
    # audio.additional_codecs, docs/meta-2026-settings-events.md §1): the phone checks that.
    codecs = r"opus/48000" if sdp_type == "offer" else r"(opus/48000|PCMU/8000|PCMA/8000)"
    if not re.search(rf"a=rtpmap:\d+ {codecs}", sdp, re.IGNORECASE):
        raise invalid(f"SDP {sdp_type} has no Opus/48000 codec")
    if "a=fingerprint:sha-256 " not in sdp:
        raise invalid(f"SDP {sdp_type} needs a sha-256 DTLS fingerprint")
    return sdp
