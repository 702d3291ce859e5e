"""``/webhook``: Meta's verification handshake (GET) and event delivery (POST).

POST order matters (docs/meta-calling.md §7): the signature is checked on the raw bytes before
anything is parsed; then the body is parsed and handed off, and Meta gets its 200 at once —
the calls are set up in their own tasks, never inside the request.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from aiohttp import web

from gateway.config import WhatsAppSettings
from gateway.whatsapp.events import MalformedWebhook, ParsedWebhook, parse_body
from gateway.whatsapp.signature import HEADER, signature_ok

log = logging.getLogger(__name__)

MAX_BODY = 1 << 20  # webhook bodies are a few KB; 1 MiB is generous

EventSink = Callable[[ParsedWebhook], int]
"""Takes the parsed events; returns how many were duplicates."""
ResultObserver = Callable[[str], None]
"""Told one result per request: ok, bad_signature, malformed, duplicate, verify_ok|failed."""


def add_webhook_routes(app: web.Application, settings: WhatsAppSettings, sink: EventSink,
                       observe: ResultObserver | None = None, path: str = "/webhook") -> None:
    observe = observe or (lambda result: None)

    async def verify(request: web.Request) -> web.Response:
        q = request.query
        token = settings.verify_token.reveal()
        if q.get("hub.mode") == "subscribe" and token and q.get("hub.verify_token") == token:
            observe("verify_ok")
            return web.Response(text=q.get("hub.challenge", ""), content_type="text/plain")
        observe("verify_failed")
        log.warning("webhook: verification refused (mode=%r, token mismatch)",
                    q.get("hub.mode"))
        return web.Response(status=403)

    async def deliver(request: web.Request) -> web.Response:
        raw = await request.content.read(MAX_BODY + 1)
        if len(raw) > MAX_BODY:
            observe("malformed")
            return web.json_response({"error": "body too large"}, status=413)
        if not signature_ok(settings.app_secret.reveal(), raw, request.headers.get(HEADER)):
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
        duplicates = sink(parsed)
        observe("duplicate" if duplicates and duplicates == len(parsed.events) else "ok")
        return web.Response(text="ok")

    app.router.add_get(path, verify)
    app.router.add_post(path, deliver)
