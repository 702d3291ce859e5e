"""Graph API calls the gateway makes: the ``/calls`` actions (docs/meta-calling.md §2).

Errors are branched on ``error.code`` only (the one documented stable field) and carried as
:class:`GraphError` so callers can map Meta codes to Q.850 causes and metrics. Every request has
a timeout: a hung Graph request must never hold a call (or the event loop) forever.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp

from gateway.config import WhatsAppSettings
from gateway.errors import MetaRefused
from gateway.whatsapp.identity import is_bsuid
from gateway.whatsapp.messages import recipient_fields

log = logging.getLogger(__name__)

# §11: what each calling error code means, for logs and call records.
ERROR_TEXT = {
    100: "invalid parameter",
    131055: "calling Graph endpoints used on a SIP-enabled number",
    131062: "BSUID recipients are not supported for this message",
    138000: "calling not enabled on this number",
    138001: "receiver cannot be called",
    138002: "1000 concurrent calls reached",
    138003: "a call with this user is already in progress",
    138004: "connection error while setting up",
    138005: "call initiation rate limit",
    138006: "no approved call permission",
    138007: "connect timeout: SDP not applied in time",
    138009: "permission request limit reached",
    138012: "100 connected business-initiated calls per 24 h reached",
    138013: "business-initiated calling not available in the number's country",
    138014: "calling temporarily disabled (quality)",
    138017: "permanent permission already exists",
    138019: "call setup failed on the WhatsApp client",
    138020: "client could not reach the media relay",
    138021: "client received no media for too long",
    138022: "client could not send media for too long",
    138023: "call accepted but ended without any media",
}


class GraphError(MetaRefused):
    """A Graph request failed: Meta's error, an HTTP error without a body, or no answer."""

    def __init__(self, action: str, message: str, *, code: int | None = None,
                 http_status: int | None = None, details: str = "",
                 error_data: dict[str, Any] | None = None, timed_out: bool = False,
                 unreachable: bool = False, retry_after: float | None = None):
        self.action = action
        self.code = code
        self.http_status = http_status
        self.details = details
        self.error_data = error_data or {}
        """Meta's whole ``error_data`` (138012 says when the next call is allowed there)."""
        self.timed_out = timed_out
        """No answer within graph_timeout_s (Meta may or may not have done it)."""
        self.unreachable = unreachable
        """The request never got an HTTP answer (connection refused, reset, DNS)."""
        self.retry_after = retry_after
        """Seconds from the answer's ``Retry-After`` header, if it had one."""
        text = f"Graph {action} failed"
        if code is not None:
            text += f": code {code}"
        if http_status is not None:
            text += f" (HTTP {http_status})"
        super().__init__(f"{text}: {message}")
        self.meta_message = message

    @property
    def retryable(self) -> bool:
        """Worth asking again: Meta was overloaded or unreachable, not refusing the request."""
        return self.timed_out or self.unreachable or self.http_status == 429 or \
            (self.http_status is not None and self.http_status >= 500) or \
            self.code in RETRYABLE_CODES


RETRYABLE_CODES = frozenset({1, 2, 4, 17, 32, 613})
"""Graph's transient codes: unknown/service errors and the rate limits (613: calls per
second; 4/17/32: app, user and page request limits)."""

RETRY_DELAYS_S = (0.5, 1.0, 2.0, 4.0)
"""Backoff between attempts of an action that is safe to repeat (reject, terminate)."""
RETRY_AFTER_CAP_S = 10.0
"""A longer ``Retry-After`` than this is not waited for in full: the WhatsApp user is on a
dead line meanwhile, and Meta ends an unanswered call by itself in about a minute."""


def _retry_after(value: str | None) -> float | None:
    """``Retry-After`` in seconds (the HTTP-date form is not used by Graph)."""
    try:
        return max(0.0, float(value)) if value else None
    except ValueError:
        return None


_GRAPH_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")
"""What a phone number id may look like in a Graph URL path (Meta's are digits)."""


def _meta_error(action: str, data: Any, status: int) -> GraphError:
    """Meta's error body (§2: branch on ``code`` only), or a bare HTTP failure."""
    err = data.get("error") if isinstance(data, dict) else None
    if not isinstance(err, dict):
        return GraphError(action, "unexpected answer", http_status=status)
    raw = err.get("code")
    code = int(raw) if isinstance(raw, (int, str)) and str(raw).isdigit() else None
    error_data = err.get("error_data")
    details = error_data.get("details", "") if isinstance(error_data, dict) else ""
    return GraphError(action, str(err.get("message", "")), code=code, http_status=status,
                      details=str(details),
                      error_data=error_data if isinstance(error_data, dict) else None)


MAX_MEDIA_BYTES = 64 << 20
"""A call recording is Opus at a few KB per second; 64 MiB is hours."""
MEDIA_DOWNLOAD_TIMEOUT_S = 120.0
"""An hour-long recording is ~10 MB: more than the Graph timeout allows, well within the URL's
5 minutes."""

CALL_PERMISSIONS_PER_S = 5
"""§3/§14: design for 5 call_permissions requests per second (error 613 / HTTP 429 beyond)."""

Observer = Callable[[str, str, float], None]
"""(action, result, seconds): result is "ok", a Meta error code, "http_<status>" or "timeout"."""


class GraphClient:
    def __init__(self, settings: WhatsAppSettings, *, observer: Observer | None = None):
        self.settings = settings
        self._session: aiohttp.ClientSession | None = None
        self._observer = observer or (lambda action, result, seconds: None)
        self._permission_gets: deque[float] = deque(maxlen=CALL_PERMISSIONS_PER_S)
        self._permissions_pace = asyncio.Lock()

    async def start(self) -> None:
        if self._session is None:
            timeout = aiohttp.ClientTimeout(total=self.settings.graph_timeout_s)
            self._session = aiohttp.ClientSession(timeout=timeout)

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def __aenter__(self) -> GraphClient:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    async def _post(self, phone_number_id: str, path: str, action: str,
                    body: dict[str, Any]) -> dict[str, Any]:
        return await self._request("POST", phone_number_id, path, action, json=body)

    async def _get(self, phone_number_id: str, path: str, action: str,
                   params: dict[str, str]) -> dict[str, Any]:
        return await self._request("GET", phone_number_id, path, action, params=params)

    async def _request(self, method: str, phone_number_id: str, path: str, action: str,
                       **kwargs: Any) -> dict[str, Any]:
        """One Graph request: Bearer auth, timeout, Meta's error body turned into GraphError,
        and one observer call with the result, whatever happens once it is sent. A phone
        number id that could change the URL's path is refused before anything is sent."""
        if not _GRAPH_ID.fullmatch(phone_number_id):
            # From a signed webhook, but still never a path of its own ("../", "?", "#").
            raise GraphError(action, f"phone_number_id {phone_number_id[:40]!r} is not a Graph "
                                     "id; request not sent")
        await self.start()
        assert self._session is not None
        url = f"{self.settings.graph_url}/{phone_number_id}/{path}"
        headers = {"Authorization": f"Bearer {self.settings.access_token.reveal()}"}
        started = time.perf_counter()
        result = "ok"
        try:
            async with self._session.request(method, url, headers=headers, **kwargs) as resp:
                try:
                    data = await resp.json(content_type=None)
                except (aiohttp.ContentTypeError, ValueError):
                    data = None
                if resp.status >= 400 or not isinstance(data, dict) or "error" in data:
                    err = _meta_error(action, data, resp.status)
                    err.retry_after = _retry_after(resp.headers.get("Retry-After"))
                    result = str(err.code) if err.code is not None else f"http_{resp.status}"
                    raise err
                return data
        except TimeoutError:
            result = "timeout"
            raise GraphError(action, f"no answer within {self.settings.graph_timeout_s} s",
                             timed_out=True) from None
        except aiohttp.ClientError as exc:
            result = "unreachable"
            raise GraphError(action, f"cannot reach the Graph API: {exc}",
                             unreachable=True) from None
        finally:
            self._observer(action, result, time.perf_counter() - started)

    async def _call_action(self, phone_number_id: str, action: str, call_id: str,
                           **extra: Any) -> dict[str, Any]:
        body = {"messaging_product": "whatsapp", "call_id": call_id, "action": action, **extra}
        return await self._post(phone_number_id, "calls", action, body)

    async def pre_accept(self, phone_number_id: str, call_id: str, sdp: str) -> None:
        await self._call_action(phone_number_id, "pre_accept", call_id,
                                session={"sdp_type": "answer", "sdp": sdp})

    async def accept(self, phone_number_id: str, call_id: str, sdp: str,
                     callback_data: str | None = None,
                     opt_in: dict[str, dict[str, str]] | None = None) -> None:
        """``opt_in``: the ``recording`` / ``transcription`` objects
        (docs/meta-2026-settings-events.md §4)."""
        extra: dict[str, Any] = {"session": {"sdp_type": "answer", "sdp": sdp}}
        if callback_data:
            extra["biz_opaque_callback_data"] = callback_data[:512]
        extra.update(opt_in or {})
        await self._call_action(phone_number_id, "accept", call_id, **extra)

    async def reject(self, phone_number_id: str, call_id: str) -> None:
        """Refuse a call not yet accepted; retried while Meta is overloaded (see _ending)."""
        await self._ending_action(phone_number_id, "reject", call_id)

    async def terminate(self, phone_number_id: str, call_id: str) -> None:
        """End a call; retried while Meta is overloaded (see _ending)."""
        await self._ending_action(phone_number_id, "terminate", call_id)

    async def _ending_action(self, phone_number_id: str, action: str, call_id: str) -> None:
        """reject and terminate end a call, so asking twice is harmless, and not getting
        through leaves the WhatsApp user on a dead line: retried (see :meth:`_retried`)."""
        await self._retried(f"call {call_id}", action,
                            lambda: self._call_action(phone_number_id, action, call_id))

    async def _retried(self, subject: str, action: str,
                       send: Callable[[], Awaitable[dict[str, Any]]]) -> dict[str, Any]:
        """Send a request that is safe to repeat: a 5xx, 429, rate-limit code, timeout or
        unreachable Graph is retried after :data:`RETRY_DELAYS_S` (or Meta's
        ``Retry-After``, up to :data:`RETRY_AFTER_CAP_S`). Meta's refusals (4xx with a code,
        e.g. the call is already over) are final. Raises the last error."""
        for attempt, delay in enumerate((*RETRY_DELAYS_S, None), start=1):
            try:
                data = await send()
                if attempt > 1:
                    log.info("%s: %s went through on attempt %d", subject, action, attempt)
                return data
            except GraphError as exc:
                if delay is None or not exc.retryable:
                    raise
                wait = min(RETRY_AFTER_CAP_S, exc.retry_after) \
                    if exc.retry_after is not None else delay
                log.warning("%s: %s attempt %d failed (%s); again in %.1f s", subject, action,
                            attempt, exc, wait)
                await asyncio.sleep(wait)
        raise AssertionError("unreachable: the last attempt returns or raises")

    async def connect(self, phone_number_id: str, to: str, sdp: str,
                      callback_data: str | None = None,
                      opt_in: dict[str, dict[str, str]] | None = None) -> str:
        """Start a business-initiated call; returns Meta's call id (wacid). ``to`` is the
        user's number, or a BSUID, which goes as ``recipient``
        (docs/meta-2026-identity.md §1). ``opt_in``: the ``recording`` /
        ``transcription`` objects (docs/meta-2026-settings-events.md §4)."""
        body: dict[str, Any] = {"messaging_product": "whatsapp", **recipient_fields(to),
                                "action": "connect",
                                "session": {"sdp_type": "offer", "sdp": sdp}}
        if callback_data:
            body["biz_opaque_callback_data"] = callback_data[:512]
        body.update(opt_in or {})
        data = await self._post(phone_number_id, "calls", "connect", body)
        try:
            return str(data["calls"][0]["id"])
        except (KeyError, IndexError, TypeError):
            raise GraphError("connect", f"answer has no calls[0].id: {data}") from None

    # ---- outbound calls: messages and call permissions (docs/meta-calling.md §3, §5) -------

    async def send_message(self, phone_number_id: str, body: dict[str, Any]) -> str:
        """``POST /{pnid}/messages`` (§5); returns Meta's message id (``wamid.``...).

        ``body`` is the message without ``messaging_product``, which is added here."""
        data = await self._post(phone_number_id, "messages", "messages",
                                {"messaging_product": "whatsapp", **body})
        try:
            return str(data["messages"][0]["id"])
        except (KeyError, IndexError, TypeError):
            raise GraphError("messages", f"answer has no messages[0].id: {data}") from None

    async def get_call_permissions(self, phone_number_id: str, user_wa_id: str) -> dict[str, Any]:
        """``GET /{pnid}/call_permissions?user_wa_id=`` (§3): Meta's permission and limits.

        Meta allows about 5 of these per second (§3 ⚠, error 613 beyond): a burst of outbound
        calls from a CRM waits its turn here instead of being refused."""
        async with self._permissions_pace:
            loop = asyncio.get_running_loop()
            recent = self._permission_gets
            while len(recent) >= CALL_PERMISSIONS_PER_S and loop.time() - recent[0] < 1.0:
                await asyncio.sleep(1.0 - (loop.time() - recent[0]))
                while recent and loop.time() - recent[0] >= 1.0:
                    recent.popleft()
            recent.append(loop.time())
        # docs/meta-2026-identity.md §1: a user known only by BSUID is looked up with
        # ``recipient=``.
        query = {"recipient": user_wa_id} if is_bsuid(user_wa_id) else {"user_wa_id": user_wa_id}
        return await self._get(phone_number_id, "call_permissions", "call_permissions", query)

    # ---- the number's calling settings (docs/meta-calling.md §4) -----------------------------

    async def get_settings(self, phone_number_id: str) -> dict[str, Any]:
        """``GET /{pnid}/settings``: the number's settings, ``calling`` among other keys
        (with ``restrictions`` in it when Meta restricts calling). Retried like reject:
        reading changes nothing at Meta."""
        return await self._retried(f"number {phone_number_id}", "settings",
                                   lambda: self._get(phone_number_id, "settings", "settings", {}))

    async def set_settings(self, phone_number_id: str, body: dict[str, Any]) -> None:
        """``POST /{pnid}/settings`` with ``body`` (``{"calling": {...}}``). Retried like
        reject: a POST replaces the keys it names (``call_hours`` whole), so sending the same
        body twice leaves Meta as sending it once."""
        await self._retried(f"number {phone_number_id}", "settings",
                            lambda: self._post(phone_number_id, "settings", "settings", body))

    # ---- media: voicemails, recordings, transcripts (docs/meta-2026-settings-events.md §2, §4)

    async def upload_media(self, phone_number_id: str, content: bytes, mime_type: str,
                           filename: str, use_case: str | None = None) -> str:
        """``POST /{pnid}/media`` (multipart); returns the media id. ``use_case`` e.g.
        ``call_voicemail_announcement`` (docs/meta-2026-settings-events.md §1)."""
        form = aiohttp.FormData()
        form.add_field("messaging_product", "whatsapp")
        form.add_field("type", mime_type)
        if use_case:
            form.add_field("use_case", use_case)
        form.add_field("file", content, filename=filename, content_type=mime_type)
        data = await self._request("POST", phone_number_id, "media", "media", data=form)
        if not data.get("id"):
            raise GraphError("media", f"answer has no id: {data}")
        return str(data["id"])

    async def media_url(self, media_id: str) -> str:
        """``GET /{media_id}``: a fresh download URL (valid 5 minutes) for a file Meta keeps."""
        await self.start()
        assert self._session is not None
        url = f"{self.settings.graph_url}/{media_id}"
        headers = {"Authorization": f"Bearer {self.settings.access_token.reveal()}"}
        try:
            async with self._session.get(url, headers=headers) as resp:
                data = await resp.json(content_type=None)
                if resp.status >= 400 or not isinstance(data, dict) or not data.get("url"):
                    raise _meta_error("media", data, resp.status)
                return str(data["url"])
        except TimeoutError:
            raise GraphError("media", "no answer from the Media API") from None
        except (aiohttp.ClientError, ValueError) as exc:
            raise GraphError("media", f"cannot reach the Media API: {exc}") from None

    async def download(self, url: str, max_bytes: int = MAX_MEDIA_BYTES) -> bytes:
        """An authenticated GET of a media URL (Meta's URLs need the access token)."""
        await self.start()
        assert self._session is not None
        headers = {"Authorization": f"Bearer {self.settings.access_token.reveal()}"}
        try:
            async with self._session.get(url, headers=headers,
                                         timeout=aiohttp.ClientTimeout(
                                             total=MEDIA_DOWNLOAD_TIMEOUT_S)) as resp:
                if resp.status != 200:
                    raise GraphError("media", "download refused", http_status=resp.status)
                data = await resp.content.read(max_bytes + 1)
        except TimeoutError:
            raise GraphError("media", "download timed out") from None
        except aiohttp.ClientError as exc:
            raise GraphError("media", f"download failed: {exc}") from None
        if len(data) > max_bytes:
            raise GraphError("media", f"file larger than {max_bytes} bytes")
        return data
