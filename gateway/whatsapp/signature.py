"""Meta's webhook signature: ``X-Hub-Signature-256: sha256=<hex HMAC-SHA256(secret, body)>``.

Checked on the raw bytes exactly as received (tests/fixtures/payloads/webhook-verification.md):
re-serialised JSON would hash differently. Constant-time comparison; the SHA-1
``X-Hub-Signature`` is ignored.
"""

from __future__ import annotations

import hashlib
import hmac

HEADER = "X-Hub-Signature-256"


def sign(app_secret: str, raw_body: bytes) -> str:
    """The header value Meta would send for ``raw_body`` (used by the simulator and tests)."""
    return "sha256=" + hmac.new(app_secret.encode(), raw_body, hashlib.sha256).hexdigest()


def signature_ok(app_secret: str, raw_body: bytes, header: str | None) -> bool:
    if not header or not header.startswith("sha256=") or not app_secret:
        return False
    expected = hmac.new(app_secret.encode(), raw_body, hashlib.sha256).hexdigest()
    return hmac.compare_digest(expected, header[len("sha256="):].strip().lower())
