"""``/webhook``: Meta's verification handshake (GET) and event delivery (POST).

POST order matters (docs/meta-calling.md §7): the whole body is read (however many TCP
segments it arrives in, up to :data:`MAX_BODY`), the signature is checked on those raw bytes
before anything is parsed; then the body is parsed strictly (gateway/strict_json.py) and handed
off, and Meta gets its 200 at once — the calls are set up in their own tasks, never inside the
request. Every credential is compared as bytes in constant time, so a malformed or non-ASCII
one is a plain 403, never an exception.
"""

from __future__ import annotations

import hmac
import logging
from collections.abc import Callable

from aiohttp import web

from gateway.config import WhatsAppSettings
from gateway.errors import BadInput
from gateway.whatsapp.events import MalformedWebhook, ParsedWebhook, parse_body
from gateway.whatsapp.signature import HEADER, signature_ok

log = logging.getLogger(__name__)

MAX_BODY = 4 << 20
"""Call webhooks are a few KB, but a batched ``messages`` delivery can reach ~3 MB (the
reference's largest sample): 4 MiB keeps every real body and bounds what one request costs."""


class BodyTooLarge(BadInput):
    """The request body is over the cap: refused with 413 before any of it is used."""


async def read_body(request: web.Request, limit: int = MAX_BODY) -> bytes:
    """The whole request body, however it was split on the wire; :class:`BodyTooLarge` past
    ``limit`` (checked against Content-Length first, then while reading)."""
    if request.content_length is not None and request.content_length > limit:
        raise BodyTooLarge
    chunks, size = [], 0
    async for chunk in request.content.iter_any():
        size += len(chunk)
        if size > limit:
            raise BodyTooLarge
        chunks.append(chunk)
    return b"".join(chunks)


def same_secret(given: str | None, expected: str) -> bool:
    """Constant-time comparison of a credential from a request with ours, as bytes: any text
    (non-ASCII, undecodable) compares unequal instead of raising."""
    if not given or not expected:
        return False
    return hmac.compare_digest(given.encode("utf-8", "surrogatepass"),
                               expected.encode("utf-8"))

EventSink = Callable[[ParsedWebhook], int]
"""Takes the parsed events; returns how many were duplicates."""
ResultObserver = Callable[[str], None]
"""Told one result per request: ok, bad_signature, malformed, duplicate, verify_ok|failed."""


def add_webhook_routes(app: web.Application,
                       settings: WhatsAppSettings | Callable[[], WhatsAppSettings],
                       sink: EventSink, observe: ResultObserver | None = None,
                       path: str = "/webhook") -> None:
    """``settings`` may be a function returning the running settings (a reload rotates the
    app secret and verify token for the next request)."""
    observe = observe or (lambda result: None)
    current: Callable[[], WhatsAppSettings] = settings if callable(settings) \
        else (lambda: settings)

    async def verify(request: web.Request) -> web.Response:
        q = request.query
        token = current().verify_token.reveal()
        if q.get("hub.mode") == "subscribe" and same_secret(q.get("hub.verify_token"), token):
            observe("verify_ok")
            return web.Response(text=q.get("hub.challenge", ""), content_type="text/plain")
        observe("verify_failed")
        log.warning("webhook: verification refused (mode=%r, token mismatch)",
                    q.get("hub.mode"))
        return web.Response(status=403)

    async def deliver(request: web.Request) -> web.Response:
        try:
            raw = await read_body(request)
        except BodyTooLarge:
            observe("malformed")
            log.warning("webhook: body from %s over %d bytes (Content-Length %s): nothing "
                        "processed", request.remote, MAX_BODY, request.content_length)
            refusal = web.json_response({"error": f"body over {MAX_BODY} bytes"}, status=413)
            refusal.force_close()  # the rest of the body is never read: drop the connection
            return refusal
        if not signature_ok(current().app_secret.reveal(), raw, request.headers.get(HEADER)):
            observe("bad_signature")
            log.warning("webhook: %s from %s: nothing processed",
                        "missing signature" if HEADER not in request.headers
                        else "signature mismatch", request.remote)
            return web.Response(status=403)
        try:
            parsed = parse_body(raw)
        except MalformedWebhook as exc:
            observe("malformed")
            log.warning("webhook: malformed body: %s", exc)
            return web.json_response({"error": str(exc)}, status=400)
        parsed.raw = raw
        duplicates = sink(parsed)
        observe("duplicate" if duplicates and duplicates == len(parsed.events) else "ok")
        return web.Response(text="ok")

    app.router.add_get(path, verify)
    app.router.add_post(path, deliver)
