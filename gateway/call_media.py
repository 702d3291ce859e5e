"""Meta's files about a call — a voicemail, a recording, a transcript — linked to its record.

docs/meta-2026-settings-events.md §2 and §4:

* A voicemail is an inbound ``audio`` message whose id is the call's wacid: it has a media id
  only; its file comes from the Media API.
* ``call_recording_available`` / ``call_transcription_available`` carry a media id and a URL
  that lives 5 minutes: the download starts as soon as the webhook is in (in a task, after the
  200), is retried within that life, and falls back to a fresh URL from the Media API.

With ``store.media_dir`` set, each file lands in ``<media_dir>/<YYYY-MM-DD>/<wacid>-<kind>.<ext>``
and its path is stored; without it only the media id is linked (Meta keeps files 7 days). Each
one is announced to the call observers (log, CRM) as a ``voicemail`` / ``recording_available``
/ ``transcription_available`` call event.
"""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
import hashlib
import logging
import re
from collections.abc import Callable
from pathlib import Path

from gateway.calls.observer import CallObserver
from gateway.calls.record import CallRecord, Direction
from gateway.metrics import GatewayMetrics
from gateway.store import CallMedia, CallStore
from gateway.whatsapp.events import CallMediaAvailable, Event, Voicemail
from gateway.whatsapp.graph import GraphClient, GraphError

log = logging.getLogger(__name__)

RETRY_DELAYS_S = (1.0, 5.0, 20.0)
"""Within the URL's 5 minutes; after these, one fresh URL from the Media API."""
EXTENSIONS = {"audio/ogg": "ogg", "application/json": "json", "audio/mpeg": "mp3",
              "audio/mp4": "m4a", "audio/aac": "aac", "audio/amr": "amr"}
EVENT_NAMES = {"voicemail": "voicemail", "recording": "recording_available",
               "transcription": "transcription_available"}


def _extension(mime_type: str) -> str:
    return EXTENSIONS.get(mime_type.split(";")[0].strip().lower(), "bin")


def _safe(name: str) -> str:
    """A wacid is base64 with '/', '+', '=': safe for any file system after this."""
    return re.sub(r"[^A-Za-z0-9._-]", "_", name)[:200]


def sha256_matches(content: bytes, expected: str) -> bool:
    """Meta writes sha256 base64-encoded (samples); accept hex too."""
    if not expected:
        return True
    digest = hashlib.sha256(content).digest()
    return expected in (base64.b64encode(digest).decode(), digest.hex())


class CallMediaLinker:
    """Event hook of the call manager for voicemails and recording/transcript notices."""

    def __init__(self, graph: GraphClient, store: Callable[[], CallStore | None],
                 observer: CallObserver, metrics: GatewayMetrics, media_dir: str | None,
                 retry_delays_s: tuple[float, ...] = RETRY_DELAYS_S):
        self.graph = graph
        self._store = store
        self.observer = observer
        self.metrics = metrics
        self.media_dir = Path(media_dir) if media_dir else None
        self.retry_delays_s = retry_delays_s
        self._tasks: set[asyncio.Task] = set()

    def handle(self, event: Event) -> bool:
        if not isinstance(event, (Voicemail, CallMediaAvailable)):
            return False
        task = asyncio.ensure_future(self._link(event))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return True

    async def wait_idle(self) -> None:
        """Until every download in progress is done (tests, shutdown)."""
        while self._tasks:
            await asyncio.wait(set(self._tasks))

    async def stop(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _link(self, ev: Voicemail | CallMediaAvailable) -> None:
        kind = "voicemail" if isinstance(ev, Voicemail) else ev.kind
        media = CallMedia(wacid=ev.call_id, kind=kind, media_id=ev.media_id,
                          mime_type=ev.mime_type, sha256=ev.sha256)
        if self.media_dir is not None:
            try:
                media.path = await self._fetch(ev, kind)
                self.metrics.call_media_result(kind, "fetched")
            except (GraphError, OSError, ValueError) as exc:
                media.error = str(exc)
                self.metrics.call_media_result(kind, "fetch_failed")
                log.warning("call %s: %s %s not downloaded: %s (the media id is kept; Meta "
                            "keeps the file 7 days)", ev.call_id, kind, ev.media_id, exc)
        else:
            self.metrics.call_media_result(kind, "id_only")
        store = self._store()
        record = None
        if store is not None:
            try:
                await store.save_media(media)
                record = await store.get(ev.call_id)
            except Exception as exc:  # the store's trouble must not lose the notice
                log.error("call %s: cannot link %s %s to the call record: %s", ev.call_id,
                          kind, ev.media_id, exc)
        if record is None:
            log.warning("call %s: %s %s for a call the gateway has no record of", ev.call_id,
                        kind, ev.media_id)
            record = CallRecord(wacid=ev.call_id, direction=Direction.INBOUND,
                                phone_number_id=ev.phone_number_id, from_number=ev.user,
                                to_number="")
        self.observer.call_event(record, EVENT_NAMES[kind], media_id=ev.media_id,
                                 mime_type=ev.mime_type, path=media.path,
                                 download_error=media.error or None)

    async def _fetch(self, ev: Voicemail | CallMediaAvailable, kind: str) -> str:
        """Download within the URL's life, verify the hash, write the file; returns its path."""
        url = getattr(ev, "url", "") or await self.graph.media_url(ev.media_id)
        content: bytes | None = None
        problem: Exception | None = None
        for delay in (*self.retry_delays_s, None):
            try:
                content = await self.graph.download(url)
                break
            except GraphError as exc:
                problem = exc
                if exc.http_status in (401, 403, 404, 410):
                    break  # expired or not ours: only a fresh URL can help
                if delay is not None:
                    await asyncio.sleep(delay)
        if content is None:
            url = await self.graph.media_url(ev.media_id)  # raises GraphError if gone
            try:
                content = await self.graph.download(url)
            except GraphError as exc:
                raise GraphError("media", f"{exc} (first URL: {problem})") from None
        if not sha256_matches(content, ev.sha256):
            raise ValueError(f"sha256 mismatch for media {ev.media_id}")
        assert self.media_dir is not None
        day = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d")
        path = self.media_dir / day / f"{_safe(ev.call_id)}-{kind}.{_extension(ev.mime_type)}"
        await asyncio.to_thread(_write, path, content)
        log.info("call %s: %s %s saved to %s (%d bytes)", ev.call_id, kind, ev.media_id, path,
                 len(content))
        return str(path)


def _write(path: Path, content: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".part")
    tmp.write_bytes(content)
    tmp.replace(path)
