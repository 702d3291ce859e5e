"""Meta's media linked to call records: an expired URL falls back to the Media API, a bad hash
is refused, no media_dir keeps the id only (the real simulator serves the files)."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from gateway.call_media import CallMediaLinker, sha256_matches
from gateway.calls.observer import CallObserver
from gateway.calls.record import CallRecord, Direction
from gateway.config import Secret, WhatsAppSettings
from gateway.metrics import GatewayMetrics
from gateway.simulator.cloud_api import CloudApiSimulator
from gateway.simulator.media import JSON_MIME, MediaFile
from gateway.store import CallStore
from gateway.whatsapp.events import CallMediaAvailable, Voicemail
from gateway.whatsapp.graph import GraphClient
from tests.fakes import ManualClock

WACID = "wacid.TESTHBgLMTU1NTAwMDIyMjIVAgASGBRVSUMwMDAwMDAwMDAwMDAwMDAxAA=="
PNID = "106540000000002"


class Events(CallObserver):
    def __init__(self) -> None:
        self.seen: list[tuple[str, dict]] = []

    def call_event(self, record: CallRecord, event: str, **fields: object) -> None:
        self.seen.append((event, fields))


@pytest.fixture
async def parts(tmp_path):
    sim = CloudApiSimulator(app_secret="s", access_token="tok", clock=ManualClock())
    await sim.start()
    graph = GraphClient(WhatsAppSettings(graph_url=sim.url, access_token=Secret("tok"),
                                         app_secret=Secret("s"), verify_token=Secret("v")))
    store = await CallStore.open(tmp_path / "gw.sqlite3")
    await store.save(CallRecord(wacid=WACID, direction=Direction.INBOUND, phone_number_id=PNID,
                                from_number="15550002222", to_number="15550001111"))
    try:
        yield sim, graph, store, tmp_path
    finally:
        await store.close()
        await graph.close()
        await sim.close()


def linker(graph, store, media_dir, events, metrics=None) -> CallMediaLinker:
    return CallMediaLinker(graph, lambda: store, events,
                           metrics or GatewayMetrics([PNID], process=False),
                           str(media_dir) if media_dir else None, retry_delays_s=(0.01,))


def file_at_meta(sim: CloudApiSimulator, content: bytes = b'{"transcript": {}}') -> MediaFile:
    file = MediaFile(media_id="1002764438271669", content=content, mime_type=JSON_MIME,
                     call_id=WACID, use="transcription", created_at=time.time())
    sim.media[file.media_id] = file
    return file


async def test_an_expired_url_is_replaced_through_the_media_api(parts):
    sim, graph, store, tmp = parts
    file = file_at_meta(sim)
    url = sim.media_url(file.media_id)
    sim.clock.advance(sim.media_store.media_url_ttl_s + 1)  # its 5 minutes are over
    events = Events()
    link = linker(graph, store, tmp / "media", events)
    assert link.handle(CallMediaAvailable(
        call_id=WACID, kind="transcription", phone_number_id=PNID, media_id=file.media_id,
        mime_type=JSON_MIME, sha256=file.sha256, url=url, timestamp=0))
    await link.wait_idle()
    (media,) = await store.media_for(WACID)
    assert media.error == "" and Path(media.path).suffix == ".json"
    assert await asyncio.to_thread(Path(media.path).read_bytes) == file.content
    assert [status for _, status in sim.media_downloads] == [404, 200]
    assert events.seen == [("transcription_available",
                            {"media_id": file.media_id, "mime_type": JSON_MIME,
                             "path": media.path, "download_error": None})]


async def test_a_wrong_hash_is_not_saved_and_the_id_is_kept(parts):
    sim, graph, store, tmp = parts
    file = file_at_meta(sim)
    assert not sha256_matches(file.content, "AAAA")
    metrics = GatewayMetrics([PNID], process=False)
    link = linker(graph, store, tmp / "media", Events(), metrics)
    link.handle(Voicemail(call_id=WACID, phone_number_id=PNID, user="15550002222",
                          media_id=file.media_id, mime_type="audio/ogg; codecs=opus",
                          sha256="AAAA", timestamp=0))
    await link.wait_idle()
    (media,) = await store.media_for(WACID)
    assert media.path is None and "sha256 mismatch" in media.error
    assert not (tmp / "media").exists()
    assert 'whatsapp_gateway_call_media_total{kind="voicemail",result="fetch_failed"} 1.0' in \
        metrics.exposition().decode()


async def test_without_media_dir_only_the_id_is_linked(parts):
    sim, graph, store, _ = parts
    file = file_at_meta(sim)
    link = linker(graph, store, None, Events())
    link.handle(Voicemail(call_id=WACID, phone_number_id=PNID, user="15550002222",
                          media_id=file.media_id, mime_type="audio/ogg; codecs=opus",
                          sha256=file.sha256, timestamp=0))
    await link.wait_idle()
    (media,) = await store.media_for(WACID)
    assert media.media_id == file.media_id and media.path is None and media.error == ""
    assert sim.media_downloads == []


async def test_a_store_from_before_the_media_table_is_migrated(tmp_path):
    """A database written by a gateway without call_media (schema 2) opens and links media."""
    import sqlite3

    from gateway.store import MIGRATIONS, CallMedia

    path = tmp_path / "old.sqlite3"
    db = sqlite3.connect(path)
    for number, script in enumerate(MIGRATIONS[:2], start=1):
        db.executescript(f"BEGIN; {script}; PRAGMA user_version = {number}; COMMIT;")
    db.close()
    store = await CallStore.open(path)
    try:
        await store.save_media(CallMedia(wacid=WACID, kind="voicemail", media_id="1"))
        await store.save_media(CallMedia(wacid=WACID, kind="voicemail", media_id="1",
                                         path="/x.ogg"))  # a re-delivery fills the path in
        (media,) = await store.media_for(WACID)
        assert media.path == "/x.ogg"
    finally:
        await store.close()
