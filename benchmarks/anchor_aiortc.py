"""The anchor of benchmarks/concurrent_calls.py: aiortc's stock pipeline, one process.

Each POSTed offer gets a plain ``RTCPeerConnection`` whose received track is relayed back
(``MediaRelay``): aiortc's jitter buffer, its Opus decoder and its own 96 kb/s stereo encoder
for every call, as an aiortc application does out of the box. Only the host addresses are set
(loopback, where aioice would skip it); nothing of the gateway's media path is used. Its CPU per
call, beside the gateway's at the same N, is the ratio the benchmark prints.

    .venv/bin/python benchmarks/anchor_aiortc.py --port 18779
"""

from __future__ import annotations

import argparse
import asyncio

import aioice.ice
from aiohttp import web
from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription
from aiortc.contrib.media import MediaRelay

peers: set[RTCPeerConnection] = set()
relay = MediaRelay()


async def offer(request: web.Request) -> web.Response:
    pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    peers.add(pc)

    @pc.on("track")
    def on_track(track) -> None:  # type: ignore[no-untyped-def]
        pc.addTrack(relay.subscribe(track))

    @pc.on("connectionstatechange")
    async def on_state() -> None:
        if pc.connectionState in ("failed", "closed"):
            peers.discard(pc)
            await pc.close()

    await pc.setRemoteDescription(RTCSessionDescription(await request.text(), "offer"))
    await pc.setLocalDescription(await pc.createAnswer())
    return web.Response(text=pc.localDescription.sdp)


async def main(port: int) -> None:
    aioice.ice.get_host_addresses = lambda use_ipv4, use_ipv6: ["127.0.0.1"]
    app = web.Application()
    app.router.add_post("/offer", offer)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    print("ready", flush=True)
    try:
        await asyncio.Event().wait()
    finally:
        await asyncio.gather(*[pc.close() for pc in peers])


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--port", type=int, default=18779)
    asyncio.run(main(parser.parse_args().port))
