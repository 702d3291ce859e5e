"""Simulated WhatsApp callers for benchmarks/concurrent_calls.py, in a process of their own.

One process runs one simulated Cloud API (its own business number) and its phones. A phone here
is the simulator's real WebRTC phone (ICE, DTLS-SRTP, RFC 4733) made cheap enough to put 100+
calls beside the gateway on two cores:

- it sends pre-encoded packets (a quiet background tone, Opus or G.711, encoded once per
  process), so no phone runs an encoder;
- it decodes what it hears only on the *sampled* calls, which carry the full checks: a marked
  tone whose echo is timed (latency) and whose pitch is checked (echo correctness), and a key
  press that must come back (Echo() returns DTMF as RFC 4733);
- every phone counts packets, sequence gaps (lost) and arrival gaps (audio gaps).

Driven by the parent over stdin/stdout, one JSON object a line: ``{"cmd": "place", ...}``,
``{"cmd": "check"}``, ``{"cmd": "hangup"}``; each is answered with one JSON line.
Offers with an answer URL (``--answer-url``) go to a plain aiortc peer instead (the anchor).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from gateway.media import aiortc_hooks  # noqa: E402
from gateway.media.codecs import (  # noqa: E402
    ASTERISK_CODECS,
    FRAME_BYTES,
    G711_CODECS,
    PCM16,
    RATE,
    AsteriskTranscoder,
    OpusEncoder,
)
from gateway.simulator import cloud_api  # noqa: E402
from gateway.simulator.phone import SimulatedPhone  # noqa: E402

BACKGROUND_HZ, BACKGROUND_DBFS = 440.0, -30.0
"""What every phone says all the time (so the gateway encodes sound, not silence)."""
MARK_S, MARK_DBFS, HEARD_DBFS = 0.3, -10.0, -22.0
"""The marked tone: louder than the background by 20 dB, heard once above HEARD_DBFS."""
GAP_S = 0.1
"""Audio gap: no packet for this long (5 frames) once media flows."""


def tone_frames(hz: float, seconds: float, dbfs: float) -> list[bytes]:
    n = int(seconds * RATE)
    t = np.arange(n) / RATE
    pcm = (np.sin(2 * np.pi * hz * t) * 32767 * 10 ** (dbfs / 20)).astype(np.int16).tobytes()
    return [pcm[i:i + FRAME_BYTES] for i in range(0, len(pcm) - FRAME_BYTES + 1, FRAME_BYTES)]


_encoded: dict[tuple[str, float, float, float], list[bytes]] = {}


def encoded(codec: str, hz: float, seconds: float, dbfs: float) -> list[bytes]:
    """Packets of a tone in ``codec`` (``opus``, ``PCMU``, ``PCMA``), encoded once."""
    key = (codec, hz, seconds, dbfs)
    if key not in _encoded:
        enc = OpusEncoder(20000, 5) if codec == "opus" \
            else AsteriskTranscoder(ASTERISK_CODECS[G711_CODECS[codec]])
        _encoded[key] = [enc.encode(f) for f in tone_frames(hz, seconds, dbfs)]
    return _encoded[key]


class PreEncoded:
    """Stands in for the phone's encoder: the next packet of the background loop, or of the
    marked tone while one is being sent (the moment its first packet leaves is kept)."""

    format = PCM16

    def __init__(self, codec: str):
        self.codec = codec
        self.loop = encoded(codec, BACKGROUND_HZ, 1.0, BACKGROUND_DBFS)
        self.i = 0
        self.mark: list[bytes] = []
        self.marked_at: float | None = None

    def encode(self, frame: bytes) -> bytes:
        if self.mark:
            if self.marked_at is None:
                self.marked_at = time.monotonic()
            return self.mark.pop(0)
        self.i += 1
        return self.loop[self.i % len(self.loop)]


class LoadPhone(SimulatedPhone):
    """The simulator's phone without its listening machinery (see the module docstring)."""

    sample_next = 0
    """How many of the next phones made carry the full checks."""

    def __init__(self, **kwargs: Any):
        super().__init__(**kwargs)
        self.sampled = LoadPhone.sample_next > 0
        LoadPhone.sample_next -= 1
        self.encoder: PreEncoded | None = None
        self.arrivals = 0
        self.last_arrival: float | None = None
        self.gaps = 0
        self.heard_at: float | None = None
        self.echo_frames: list[bytes] = []
        self.echo_heard = asyncio.Event()
        self.dtmf_back = asyncio.Event()

    async def apply_answer(self, sdp: str) -> None:
        await super().apply_answer(sdp)
        self._prepare()

    def _prepare(self) -> None:
        leg = self.leg
        self.encoder = PreEncoded(leg.audio_codec)
        leg.outgoing.use_encoder(self.encoder, 48000 if leg.audio_codec == "opus" else 8000)
        if not self.sampled:
            leg._decoder = _Deaf()
        counted = leg.on_media

        def on_media() -> None:
            counted()
            now = time.monotonic()
            if self.last_arrival is not None and now - self.last_arrival > GAP_S:
                self.gaps += 1
            self.last_arrival = now
            self.arrivals += 1

        leg.on_media = on_media

    def _on_state(self, state: str) -> None:
        if state == "connected" and self.state == "connecting":
            self.state = "connected"  # no feeding, no listening windows

    def _on_audio(self, pcm: bytes) -> None:
        if self.encoder is None or self.encoder.marked_at is None:
            return
        if self.heard_at is None:
            rms = float(np.sqrt(np.mean(np.frombuffer(pcm, np.int16).astype(float) ** 2)))
            if 20 * np.log10(max(rms, 1.0) / 32767) >= HEARD_DBFS:
                self.heard_at = time.monotonic()
        if self.heard_at is not None and len(self.echo_frames) < 10:
            self.echo_frames.append(pcm)
            if len(self.echo_frames) == 10:
                self.echo_heard.set()

    def _on_dtmf(self, digit: str, duration_ms: int) -> None:
        self.dtmf_received.append(digit)
        self.dtmf_back.set()

    async def check(self, hz: float) -> dict[str, Any]:
        """Send the marked tone and time its echo; press 5 and wait for it to come back."""
        assert self.encoder is not None
        self.encoder.mark = list(encoded(self.encoder.codec, hz, MARK_S, MARK_DBFS))
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.echo_heard.wait(), 3.0)
        out: dict[str, Any] = {"rtt_s": None, "echo_ok": False, "dtmf_sent": 1,
                               "dtmf_back": 0}
        if self.heard_at is not None and self.encoder.marked_at is not None:
            out["rtt_s"] = self.heard_at - self.encoder.marked_at
            pcm = np.frombuffer(b"".join(self.echo_frames[2:]), np.int16).astype(float)
            if len(pcm):
                peak = np.argmax(np.abs(np.fft.rfft(pcm))) * RATE / len(pcm)
                out["echo_ok"] = bool(abs(peak - hz) < 30)
        self.leg.send_dtmf("5", 100)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.dtmf_back.wait(), 3.0)
        out["dtmf_back"] = len(self.dtmf_received)
        return out

    async def stats(self) -> dict[str, Any]:
        s = await self.leg.stats()
        return {"packets": self.arrivals, "lost": int(s.get("packets_lost", 0)),
                "gaps": self.gaps}


class _Deaf:
    """The decoder of an unsampled phone: packets are counted, never decoded."""

    format = PCM16

    def decode(self, payload: bytes) -> bytes:
        return b""


class Worker:
    def __init__(self, args: argparse.Namespace):
        self.args = args
        self.sim: cloud_api.CloudApiSimulator | None = None
        self.calls: list[Any] = []
        self.phones: list[LoadPhone] = []

    async def start(self) -> dict[str, Any]:
        a = self.args
        aiortc_hooks.install()
        aiortc_hooks.set_host_addresses(["127.0.0.1"])
        if a.answer_url:
            return {"ready": True}
        self.sim = cloud_api.CloudApiSimulator(
            app_secret=a.secret, access_token=a.token, webhook_url=a.webhook_url,
            phone_number_id=a.pnid, display_phone_number=a.display,
            connect_webhook_delay_s=0.0, ringing_delay_s=0.0, ring_timeout_s=120.0)
        self.sim.phones.phone_class = LoadPhone
        await self.sim.start()
        calling = self.sim.number_settings(a.pnid)["calling"]
        if a.g711:
            calling["audio"] = {"additional_codecs": a.g711.split(",")}
        calling["callback_permission_status"] = "DISABLED"
        return {"ready": True, "graph_url": self.sim.url}

    async def place(self, n: int, interval: float, sample: int, first: int) -> dict[str, Any]:
        LoadPhone.sample_next = sample
        t0 = time.monotonic()
        placing = []
        for i in range(n):
            await asyncio.sleep(max(0.0, t0 + i * interval - time.monotonic()))
            placing.append(asyncio.ensure_future(self._place_one(first + i)))
        await asyncio.gather(*placing)
        connected = await asyncio.gather(*[self._connected(c) for c in self.calls],
                                         return_exceptions=True)
        return {"placed": n, "connected": sum(1 for ok in connected if ok is True)}

    async def _place_one(self, i: int) -> None:
        if self.args.answer_url:
            phone = LoadPhone(name=f"anchor phone {i}")
            self.phones.append(phone)
            offer = await phone.make_offer()
            async with aiohttp.ClientSession() as s, \
                    s.post(self.args.answer_url, data=offer) as resp:
                answer = await resp.text()
            await phone.apply_answer(answer)
            phone.answered = True
            self.calls.append(phone)
            return
        assert self.sim is not None
        call = await self.sim.place_call(from_wa_id=f"1555{self.args.index:02d}{i:05d}",
                                         phone_number_id=self.args.pnid,
                                         display_phone_number=self.args.display)
        self.calls.append(call)

    async def _connected(self, call: Any) -> bool:
        phone = call if isinstance(call, LoadPhone) else call.phone
        if not isinstance(call, LoadPhone):
            self.phones.append(phone)
            await asyncio.wait_for(call.accepted.wait(), 60)
        await asyncio.wait_for(phone.connected.wait(), 60)
        return True

    async def check(self) -> dict[str, Any]:
        sampled = [p for p in self.phones if p.sampled and p.encoder is not None]
        results = await asyncio.gather(*[p.check(600 + 40 * i) for i, p in enumerate(sampled)])
        return {"checks": results}

    async def hangup(self) -> dict[str, Any]:
        stats = await asyncio.gather(*[p.stats() for p in self.phones])
        pre = []
        if self.sim is not None:
            for c in self.calls:
                pre += [r.time - c.started_at for r in self.sim.requests_for(c.call_id,
                                                                             "pre_accept")]
            await asyncio.gather(*[c.hangup() for c in self.calls])
        else:
            await asyncio.gather(*[p.hangup() for p in self.phones])
        self.calls, self.phones = [], []
        return {"phones": stats, "pre_accept_s": pre}


async def main(args: argparse.Namespace) -> None:
    worker = Worker(args)
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)

    def reply(obj: dict[str, Any]) -> None:
        sys.stdout.write(json.dumps(obj) + "\n")
        sys.stdout.flush()

    reply(await worker.start())
    while line := await reader.readline():
        cmd = json.loads(line)
        if cmd["cmd"] == "place":
            reply(await worker.place(cmd["n"], cmd["interval"], cmd["sample"], cmd["first"]))
        elif cmd["cmd"] == "check":
            reply(await worker.check())
        elif cmd["cmd"] == "hangup":
            reply(await worker.hangup())
        elif cmd["cmd"] == "exit":
            break
    if worker.sim is not None:
        await worker.sim.close()


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--index", type=int, default=0)
    p.add_argument("--pnid", default="100000000000002")
    p.add_argument("--display", default="15550000002")
    p.add_argument("--secret", default="bench-secret")
    p.add_argument("--token", default="bench-token")
    p.add_argument("--webhook-url")
    p.add_argument("--g711", default="", help="additional_codecs at Meta, e.g. PCMU,PCMA")
    p.add_argument("--answer-url", help="anchor: POST offers here instead of the simulator")
    asyncio.run(main(p.parse_args()))
