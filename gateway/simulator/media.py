"""Media at the simulated Meta: voicemail, call recordings and transcripts, and their URLs.

docs/meta-2026-settings-events.md §2 (voicemail) and §4 (recording, transcription); the
section numbers below are that note's:

* **Voicemail.** With ``calling.voicemail`` ENABLED, Meta answers a user's call itself when
  the business neither accepts nor rejects within ``timeout_seconds`` (trigger TIMEOUT) or when
  it rejects (trigger REJECT), plays the announcement and records the caller. The recording
  arrives on field ``messages`` as an inbound ``audio`` message whose id is the call's wacid
  (tests/fixtures/payloads/webhook-messages-voicemail.json).
* **Recording / transcription.** Opted in per call by a ``recording`` / ``transcription``
  object on ``accept`` (user-initiated) or ``connect`` (business-initiated). About a minute
  after the call ends (:attr:`recording_delay_s` here), ``call_recording_available`` /
  ``call_transcription_available`` webhooks carry the media id and a URL valid for 5 minutes
  (tests/fixtures/payloads/webhook-call-recording-available.json); after that a fresh URL comes from
  the
  Media API (``GET /{version}/{media_id}``).

The files are real: an Ogg Opus recording and a transcript JSON in the documented shape.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import io
import json
import math
import re
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from aiohttp import web

from gateway.simulator.graph_api import GraphApi
from gateway.simulator.meta import ApiRequest, GraphError, invalid
from gateway.simulator.payloads import Payloads
from gateway.simulator.runtime import Background, Clock
from gateway.simulator.waba import Waba
from gateway.simulator.webhooks import WebhookSender

if TYPE_CHECKING:
    from gateway.simulator.call import SimulatedCall

OPUS_MIME = "audio/ogg; codecs=opus"
JSON_MIME = "application/json"
PURPOSE_MAX = 250
_LANGUAGE = re.compile(r"[a-z]{2}(_[A-Z]{2})?")
ANNOUNCEMENT_USE_CASE = "call_voicemail_announcement"
ANNOUNCEMENT_MAX_S = 60.0
"""§1: the voicemail announcement is Opus in Ogg, shorter than 60 s."""
OPT_IN_ACTIONS = ("accept", "connect")
"""§4: the objects go on accept (user-initiated) and connect (business-initiated); Meta does
not document them on pre_accept."""


@dataclass
class MediaFile:
    """One file Meta holds for the business (voicemail, recording, transcript)."""

    media_id: str
    content: bytes
    mime_type: str
    call_id: str
    use: str
    """voicemail | recording | transcription"""
    created_at: float

    @property
    def sha256(self) -> str:
        """Meta writes the hash base64-encoded (the samples' ``Y9vv…=``)."""
        return base64.b64encode(hashlib.sha256(self.content).digest()).decode()


def ogg_opus_seconds(content: bytes) -> float:
    """Duration of an Ogg Opus file; ValueError when it is not one."""
    import av

    if not content.startswith(b"OggS") or b"OpusHead" not in content[:512]:
        raise ValueError("not an Ogg Opus file")
    try:
        with av.open(io.BytesIO(content), format="ogg") as container:
            stream = container.streams.audio[0]
            end = 0.0
            for packet in container.demux(stream):
                if packet.pts is not None and packet.time_base is not None:
                    end = max(end, float((packet.pts + (packet.duration or 0))
                                         * packet.time_base))
    except (av.error.FFmpegError, IndexError) as exc:
        raise ValueError(f"not a readable Ogg Opus file: {exc}") from None
    return end


def opt_in_objects(body: dict[str, Any], action: str) -> dict[str, dict[str, Any]]:
    """The enabled ``recording`` / ``transcription`` objects of a /calls request, checked as
    §4 describes (status, purpose of at most 250 characters when ENABLED, a language code).

    ASSUMPTION: the error codes for bad objects are not documented; error 100 is answered, as
    for every invalid parameter. On pre_accept, reject or terminate the objects are refused."""
    found: dict[str, dict[str, Any]] = {}
    for key in ("recording", "transcription"):
        if key not in body:
            continue
        obj = body[key]
        if action not in OPT_IN_ACTIONS:
            raise invalid(f"{key} is only accepted on accept and connect, not {action}")
        if not isinstance(obj, dict):
            raise invalid(f"{key} must be an object {{status, purpose, announcement_language}}")
        unknown = set(obj) - {"status", "purpose", "announcement_language"}
        if unknown:
            raise invalid(f"{key} has unknown field(s) {', '.join(sorted(unknown))}")
        status = obj.get("status")
        if status not in ("ENABLED", "DISABLED"):
            raise invalid(f"{key}.status must be ENABLED or DISABLED, got {status!r}")
        if status == "DISABLED":
            continue
        purpose = obj.get("purpose")
        if not isinstance(purpose, str) or not purpose.strip():
            raise invalid(f"{key}.purpose is required when {key} is ENABLED")
        if len(purpose) > PURPOSE_MAX:
            raise invalid(f"{key}.purpose is limited to {PURPOSE_MAX} characters")
        language = obj.get("announcement_language", "en_US")
        if not isinstance(language, str) or not _LANGUAGE.fullmatch(language):
            raise invalid(f"{key}.announcement_language must be a language code like en_US or "
                          f"es, got {language!r}")
        found[key] = {"status": status, "purpose": purpose, "announcement_language": language}
    return found


def announcement(opt_in: dict[str, dict[str, Any]]) -> str | None:
    """What Meta says to both sides: one combined announcement with the recording object's
    purpose and language when both are on (§4)."""
    if not opt_in:
        return None
    obj = opt_in.get("recording") or opt_in["transcription"]
    what = "recorded" if "recording" in opt_in else "transcribed"
    return (f"The audio of this call will be {what} for the following purpose: "
            f"{obj['purpose']} ({obj['announcement_language']})")


def ogg_opus(seconds: float, freq: float = 440.0) -> bytes:
    """A real Ogg Opus file with a tone, standing in for the caller's recorded audio."""
    import av
    import numpy as np

    buf = io.BytesIO()
    with av.open(buf, "w", format="ogg") as container:
        stream = container.add_stream("libopus", rate=48000)
        stream.layout = "mono"
        samples = max(960, int(48000 * seconds) // 960 * 960)
        pcm = (np.sin(np.arange(samples) * 2 * math.pi * freq / 48000) * 8000).astype("int16")
        frame = av.AudioFrame.from_ndarray(pcm.reshape(1, -1), format="s16", layout="mono")
        frame.sample_rate = 48000
        for packet in stream.encode(frame):
            container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)
    return buf.getvalue()


def transcript_document(call: SimulatedCall, seconds: float) -> bytes:
    """§4 transcript JSON: ``metadata`` and ``transcript{text, language, confidence,
    segments[{speaker, channel, start, end, text, words[]}]}``."""
    segments = [
        {"speaker": "Business", "channel": 0, "start": 0.0, "end": round(seconds / 2, 2),
         "text": "Hello, how can we help?",
         "words": [{"word": w, "start": 0.0, "end": 0.0}
                   for w in ("Hello,", "how", "can", "we", "help?")]},
        {"speaker": "Customer", "channel": 1, "start": round(seconds / 2, 2),
         "end": round(seconds, 2), "text": "I have a question about my order.",
         "words": [{"word": w, "start": 0.0, "end": 0.0}
                   for w in ("I", "have", "a", "question", "about", "my", "order.")]},
    ]
    doc = {"metadata": {"call_id": call.call_id, "duration": round(seconds, 2), "channels": 2},
           "transcript": {"text": " ".join(s["text"] for s in segments), "language": "en",
                          "confidence": 0.93, "segments": segments}}
    return json.dumps(doc).encode()


class CallMedia:
    """Meta's media for the business: voicemail, recordings, transcripts, media URLs."""

    def __init__(self, *, waba: Waba, graph: GraphApi, payloads: Payloads,
                 webhooks: WebhookSender, clock: Clock, background: Background,
                 base_url: Callable[[], str], media_url_ttl_s: float = 300.0,
                 recording_delay_s: float = 60.0, voicemail_length_s: float = 1.0):
        self.waba = waba
        self.graph = graph
        self.payloads = payloads
        self.webhooks = webhooks
        self.clock = clock
        self.background = background
        self._base_url = base_url
        self.media: dict[str, MediaFile] = {}
        """media id → file, for every voicemail, recording and transcript made."""
        self.media_url_ttl_s = media_url_ttl_s
        """§4: a media URL is valid for 5 minutes."""
        self.recording_delay_s = recording_delay_s
        """§4: the *_available webhooks come about one minute after the call ends."""
        self.voicemail_length_s = voicemail_length_s
        """How long the simulated caller speaks to voicemail before hanging up."""
        self.media_downloads: list[tuple[str, int]] = []
        """(media id or token, HTTP status) of every download attempt."""
        self._media_urls: dict[str, tuple[str, float]] = {}

    def add_routes(self, app: web.Application) -> None:
        app.router.add_get("/_media/{token}", self._handle_media_download)
        app.router.add_post("/{version}/{phone_number_id}/media", self._handle_media_upload)
        app.router.add_get(r"/{version:v\d+\.\d+}/{media_id:\d+}", self._handle_media_api)

    def _new_media(self, call: SimulatedCall, use: str, content: bytes,
                   mime_type: str) -> MediaFile:
        media_id = str(10**15 + secrets.randbelow(9 * 10**15))
        file = MediaFile(media_id=media_id, content=content, mime_type=mime_type,
                         call_id=call.call_id, use=use, created_at=self.clock.now())
        self.media[media_id] = file
        return file

    def media_url(self, media_id: str) -> str:
        """A fresh download URL for the file, valid :attr:`media_url_ttl_s`."""
        token = secrets.token_urlsafe(16)
        self._media_urls[token] = (media_id, self.clock.monotonic() + self.media_url_ttl_s)
        return f"{self._base_url()}/_media/{token}?mid={media_id}"

    async def _handle_media_download(self, request: web.Request) -> web.Response:
        """The URL in a webhook: an authenticated GET (§4).

        ASSUMPTION: an expired or unknown URL answers 404 (Meta's answer is not documented)."""
        token = request.match_info["token"]
        try:
            self.graph.check_auth(request)
        except GraphError as err:
            self.media_downloads.append((token, err.status))
            return web.json_response(err.body(), status=err.status)
        media_id, expires = self._media_urls.get(token, ("", 0.0))
        file = self.media.get(media_id)
        if file is None or self.clock.monotonic() > expires:
            self.media_downloads.append((token, 404))
            return web.Response(status=404, text="URL expired or unknown")
        self.media_downloads.append((media_id, 200))
        return web.Response(body=file.content, headers={"Content-Type": file.mime_type})

    async def _handle_media_api(self, request: web.Request) -> web.Response:
        """``GET /{version}/{media_id}``: the Media API's fresh URL for a file still kept."""
        try:
            self.graph.check_auth(request)
            file = self.media.get(request.match_info["media_id"])
            if file is None:
                raise invalid(f"Unknown media id {request.match_info['media_id']}")
        except GraphError as err:
            return web.json_response(err.body(), status=err.status)
        return web.json_response({"messaging_product": "whatsapp",
                                  "url": self.media_url(file.media_id),
                                  "mime_type": file.mime_type, "sha256": file.sha256,
                                  "file_size": len(file.content), "id": file.media_id})

    async def _handle_media_upload(self, request: web.Request) -> web.Response:
        """``POST /{phone_number_id}/media`` (multipart: messaging_product, type, file,
        use_case). With ``use_case=call_voicemail_announcement`` the file must be Ogg Opus
        shorter than 60 s (§1); the answer is ``{"id": ...}``.

        ASSUMPTION: a bad announcement is refused with error 100 (no code is documented)."""
        pnid = request.match_info["phone_number_id"]
        rec = ApiRequest(action="upload_media", body={}, time=self.clock.now(),
                         phone_number_id=pnid, endpoint="media")
        self.graph.requests.append(rec)
        try:
            self.graph.check_auth(request)
            self.graph.check_version(request.match_info["version"])
            if pnid not in self.waba.numbers:
                raise invalid(f"Unknown phone number id {pnid}")
            try:
                form = await request.post()
            except ValueError:
                raise invalid("the body must be multipart/form-data") from None
            rec.body = {k: v for k, v in form.items() if isinstance(v, str)}
            upload = form.get("file")
            if rec.body.get("messaging_product") != "whatsapp":
                raise invalid("messaging_product must be \"whatsapp\"")
            if upload is None or isinstance(upload, str):
                raise invalid("file is required")
            content = upload.file.read()
            mime = str(rec.body.get("type") or upload.content_type or "")
            use_case = rec.body.get("use_case")
            if use_case == ANNOUNCEMENT_USE_CASE:
                if not mime.startswith("audio/ogg"):
                    raise invalid(f"a voicemail announcement must be audio/ogg (Opus), not "
                                  f"{mime!r}")
                try:
                    seconds = ogg_opus_seconds(content)
                except ValueError as exc:
                    raise invalid(f"voicemail announcement: {exc}") from None
                if seconds >= ANNOUNCEMENT_MAX_S:
                    raise invalid(f"a voicemail announcement must be shorter than "
                                  f"{ANNOUNCEMENT_MAX_S:g} s, this one is {seconds:.1f} s")
            media_id = str(10**15 + secrets.randbelow(9 * 10**15))
            self.media[media_id] = MediaFile(media_id=media_id, content=content,
                                             mime_type=mime, call_id="",
                                             use=use_case or "message", created_at=self.clock.now())
            self.waba.note(f"media {media_id} uploaded ({use_case or 'message'}, {len(content)} "
                      f"bytes)")
            rec.status, rec.response = 200, {"id": media_id}
        except GraphError as err:
            rec.status, rec.response = err.status, err.body()
        return web.json_response(rec.response, status=rec.status)

    # --- voicemail ----------------------------------------------------------------------------

    async def voicemail_timer(self, call: SimulatedCall, timeout_s: float) -> None:
        """TIMEOUT trigger: not accepted nor rejected within ``timeout_s`` of ringing."""
        if await call.accepted_or_ended_within(timeout_s):
            return
        async with call.lock:
            if call.state in ("ringing", "pre_accepted"):
                await self.start_voicemail(call, f"not answered within {timeout_s:g} s "
                                                  f"(voicemail TIMEOUT trigger)")

    async def start_voicemail(self, call: SimulatedCall, why: str) -> None:
        """Meta answers for the business, plays the announcement, records the caller.

        ASSUMPTION: the caller's media stops reaching the business at once (Meta's voicemail
        takes it); later pre_accept/accept/reject are refused as invalid parameters; when the
        caller hangs up Meta sends the usual terminate webhook (FAILED: the business never
        accepted) and then the voicemail message. None of this is documented (§7)."""
        calling = self.waba.number_settings(call.phone_number_id).get("calling", {})
        media = (((calling.get("voicemail") or {}).get("audio") or {}).get("default") or {}) \
            .get("announcement_media_id")
        call.state = "voicemail"
        call.voicemail_at = self.clock.now()
        call.transcript.add(f"{why}: Meta's voicemail answers, plays the announcement "
                            f"{media or '(default)'} and records the caller")
        await call.phone.hangup()
        self.background.spawn(self._voicemail_caller_done(call))

    async def _voicemail_caller_done(self, call: SimulatedCall) -> None:
        await asyncio.sleep(self.voicemail_length_s)
        async with call.lock:
            if call.state == "voicemail":
                call.transcript.add("the caller finished the voicemail and hung up")
                await call.end(by="user")

    def voicemail_payload(self, call: SimulatedCall, file: MediaFile) -> dict[str, Any]:
        """Shaped like tests/fixtures/payloads/webhook-messages-voicemail.json."""
        message = {"id": call.call_id, "from": call.wa_id, "timestamp": str(int(self.clock.now())),
                   "type": "audio",
                   "audio": {"id": file.media_id, "sha256": file.sha256,
                             "mime_type": file.mime_type}}
        user = self.waba.user(call.wa_id)
        return self.payloads.messages_envelope(call.phone_number_id, "messages", [message], user)

    async def deliver_voicemail(self, call: SimulatedCall) -> None:
        """Best effort (§2): after the call, the recorded message as an inbound audio."""
        now = self.clock.now()
        seconds = max(0.1, (call.ended_at or now) - (call.voicemail_at or now))
        file = self._new_media(call, "voicemail", ogg_opus(min(seconds, 5.0)), OPUS_MIME)
        call.voicemail_media_id = file.media_id
        call.transcript.add(f"voicemail message webhook sent (audio {file.media_id})")
        await self.webhooks.send(self.voicemail_payload(call, file), transcript=call.transcript)

    # --- recording and transcription ----------------------------------------------------------

    def media_available_payload(self, call: SimulatedCall, file: MediaFile) -> dict[str, Any]:
        """Shaped like tests/fixtures/payloads/webhook-call-recording-available.json.

        ASSUMPTION: ``from`` is the user for either direction (the samples show only
        user-initiated calls; §7)."""
        obj = {"id": file.media_id, "sha256": file.sha256, "mime_type": file.mime_type,
               "url": self.media_url(file.media_id)}
        item: dict[str, Any] = {"id": call.call_id, "from": call.wa_id,
                                "timestamp": str(int(self.clock.now()))}
        if file.use == "recording":
            item["event"] = "call_recording_available"
            item["call_recording"] = {"type": "audio", "audio": obj}
        else:
            item["event"] = "call_transcription_available"
            item["call_transcript"] = {"document": obj}
        value = {"messaging_product": "whatsapp",
                 "metadata": {"display_phone_number": call.display_phone_number,
                              "phone_number_id": call.phone_number_id},
                 "calls": [item]}
        return {"object": "whatsapp_business_account",
                "entry": [{"id": self.waba.waba_id,
                           "changes": [{"field": "calls", "value": value}]}]}

    async def deliver_recordings(self, call: SimulatedCall) -> None:
        """After an answered call that opted in: the *_available webhooks (§4)."""
        await asyncio.sleep(self.recording_delay_s)
        now = self.clock.now()
        seconds = max(0.1, (call.ended_at or now) - (call.accepted_at or now))
        for use in ("recording", "transcription"):
            if use not in call.opt_in:
                continue
            if use == "recording":
                file = self._new_media(call, use, ogg_opus(min(seconds, 5.0)), OPUS_MIME)
            else:
                file = self._new_media(call, use, transcript_document(call, seconds), JSON_MIME)
            call.transcript.add(f"call_{use}_available webhook sent ({file.media_id})")
            await self.webhooks.send(self.media_available_payload(call, file),
                                    transcript=call.transcript)
