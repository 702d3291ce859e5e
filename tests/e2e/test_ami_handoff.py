"""The AMI + UnicastRTP handoff against a real Asterisk (docs/asterisk-handoff.md, step by step).

Each test is a scenario an admin would describe: "the gateway originates a WhatsApp call into
test-echo; the 700 Hz tone it sends comes back". The dialplans are in asterisk-overlay/ and
the sample asterisk-conf/; assertions are on events Asterisk itself emits.
"""

from __future__ import annotations

import asyncio
import struct
import uuid
from collections.abc import AsyncIterator

import av
import numpy as np
import pytest

from gateway.asterisk.ami import AmiClient, AmiError, Event, format_caller_id
from gateway.asterisk.causes import cause_name
from gateway.calls.orphans import OrphanSweep
from gateway.config import AmiSettings, Secret
from gateway.sandbox.local_asterisk import LocalAsterisk
from tests.ports import free_tcp_port, instance_name

pytestmark = pytest.mark.asterisk

WAIT_S = 10.0
CODEC_RATE = {"ulaw": 8000, "g722": 16000}
CODEC_PT = {"ulaw": 0, "g722": 9}
PYAV_NAME = {"ulaw": "pcm_mulaw", "g722": "g722"}


@pytest.fixture
async def ami(ami_settings: AmiSettings) -> AsyncIterator[AmiClient]:
    client = AmiClient(ami_settings)
    await client.connect()
    try:
        yield client
    finally:
        await client.close()


def new_channel_id() -> str:
    return f"wa-{uuid.uuid4()}"


class Events:
    """Events of one channel, in order, for tests to await."""

    def __init__(self) -> None:
        self.queue: asyncio.Queue[Event] = asyncio.Queue()
        self.seen: list[Event] = []

    def __call__(self, event: Event) -> None:
        self.seen.append(event)
        self.queue.put_nowait(event)

    async def wait_for(self, name: str, user_event: str | None = None,
                       timeout: float = WAIT_S) -> Event:
        async def next_match() -> Event:
            while True:
                event = await self.queue.get()
                if event.get("Event") != name:
                    continue
                if user_event is None or event.get("UserEvent") == user_event:
                    return event
        return await asyncio.wait_for(next_match(), timeout)


class RtpEndpoint(asyncio.DatagramProtocol):
    """The gateway's side of the Asterisk leg: one UDP socket on 127.0.0.1."""

    def __init__(self) -> None:
        self.packets: asyncio.Queue[bytes] = asyncio.Queue()
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: tuple) -> None:
        self.packets.put_nowait(data)

    @property
    def port(self) -> int:
        assert self.transport is not None
        return self.transport.get_extra_info("sockname")[1]


@pytest.fixture
async def rtp() -> AsyncIterator[RtpEndpoint]:
    loop = asyncio.get_running_loop()
    transport, endpoint = await loop.create_datagram_endpoint(
        RtpEndpoint, local_addr=("127.0.0.1", 0))
    try:
        yield endpoint
    finally:
        transport.close()


def tone_frames(codec: str, freq: float, frames: int) -> list[bytes]:
    """``frames`` 20 ms payloads of a sine tone, encoded with PyAV."""
    rate = CODEC_RATE[codec]
    encoder = av.CodecContext.create(PYAV_NAME[codec], "w")
    encoder.sample_rate, encoder.format, encoder.layout = rate, "s16", "mono"
    n = rate // 50
    payloads = []
    for i in range(frames):
        t = np.arange(i * n, (i + 1) * n)
        pcm = (8000 * np.sin(2 * np.pi * freq * t / rate)).astype(np.int16).reshape(1, -1)
        frame = av.AudioFrame.from_ndarray(pcm, format="s16", layout="mono")
        frame.sample_rate = rate
        payloads += [bytes(p) for p in encoder.encode(frame)]
    return payloads


def decode(codec: str, payloads: list[bytes]) -> np.ndarray:
    decoder = av.CodecContext.create(PYAV_NAME[codec], "r")
    decoder.sample_rate, decoder.layout = CODEC_RATE[codec], "mono"
    chunks = [f.to_ndarray().reshape(-1) for p in payloads for f in decoder.decode(av.Packet(p))]
    return np.concatenate(chunks).astype(np.float64)


def dominant_frequency(pcm: np.ndarray, rate: int) -> float:
    spectrum = np.abs(np.fft.rfft(pcm * np.hanning(len(pcm))))
    return float(np.fft.rfftfreq(len(pcm), 1 / rate)[int(np.argmax(spectrum))])


def rtp_packet(pt: int, seq: int, timestamp: int, ssrc: int, payload: bytes) -> bytes:
    return struct.pack("!BBHII", 0x80, pt, seq & 0xFFFF, timestamp & 0xFFFFFFFF, ssrc) + payload


async def send_media(rtp: RtpEndpoint, port: int, payloads: list[bytes], pt: int = 0) -> None:
    """Send 20 ms frames to Asterisk's port, looping over ``payloads``, until cancelled."""
    assert rtp.transport is not None
    i = 0
    while True:
        packet = rtp_packet(pt, i, i * 160, 0x1234ABCD, payloads[i % len(payloads)])
        rtp.transport.sendto(packet, ("127.0.0.1", port))
        i += 1
        await asyncio.sleep(0.02)  # media pacing, not synchronisation


async def originate(ami: AmiClient, rtp: RtpEndpoint, context: str, *, codec: str = "ulaw",
                    listener: Events | None = None, **kwargs) -> str:
    channel_id = new_channel_id()
    if listener is not None:
        ami.add_channel_listener(channel_id, listener)
    result = await ami.originate_unicast(
        channel_id=channel_id, rtp_host="127.0.0.1", rtp_port=rtp.port, codec=codec,
        context=context, exten="s",
        caller_id=kwargs.pop("caller_id", format_caller_id("Maria", "+5511999990000")),
        variables=kwargs.pop("variables", {"WA_CALL_ID": "wacid.TEST"}), **kwargs)
    assert result.success, result
    assert result.reason == 4  # answered: a UnicastRTP channel is up at once
    assert result.channel.startswith(f"UnicastRTP/127.0.0.1:{rtp.port}-")
    return channel_id


@pytest.mark.parametrize("codec", ["ulaw", "g722"])
async def test_tone_comes_back_from_echo(ami: AmiClient, rtp: RtpEndpoint, codec: str) -> None:
    """Gateway sends a 700 Hz tone from the dial-string socket; Echo() returns it."""
    channel_id = await originate(ami, rtp, "test-echo", codec=codec)
    try:
        port = await ami.getvar(channel_id, "UNICASTRTP_LOCAL_PORT")
        assert port is not None and 20000 <= int(port) <= 20999  # rtp.conf's range
        assert await ami.getvar(channel_id, "UNICASTRTP_LOCAL_ADDRESS")
        payloads = tone_frames(codec, 700.0, 100)
        ssrc = 0x1234ABCD

        async def send() -> None:
            assert rtp.transport is not None
            for i, payload in enumerate(payloads):
                rtp.transport.sendto(rtp_packet(CODEC_PT[codec], i, i * 160, ssrc, payload),
                                     ("127.0.0.1", int(port)))
                await asyncio.sleep(0.02)  # media pacing, not synchronisation

        async def receive(count: int) -> list[bytes]:
            got: list[bytes] = []
            while len(got) < count:
                packet = await rtp.packets.get()
                assert packet[1] & 0x7F == CODEC_PT[codec]
                got.append(packet[12:])
            return got

        sender = asyncio.create_task(send())
        try:
            echoed = await asyncio.wait_for(receive(60), WAIT_S)
        finally:
            sender.cancel()
        pcm = decode(codec, echoed[10:])  # skip the first frames: codec warm-up
        assert np.sqrt(np.mean(pcm**2)) > 1000, "echo is silent"
        assert abs(dominant_frequency(pcm, CODEC_RATE[codec]) - 700) < 15
    finally:
        await ami.hangup(channel_id)


async def test_playdtmf_digits_reach_read(ami: AmiClient, rtp: RtpEndpoint) -> None:
    """Caller presses 1, 2, 3, #; the dialplan's Read() returns 123."""
    events = Events()
    channel_id = await originate(ami, rtp, "test-read", listener=events)
    try:
        for digit in "123#":
            await ami.play_dtmf(channel_id, digit)
        marker = await events.wait_for("UserEvent", "TestRead")
        assert marker["Digits"] == "123"
        dtmf = [e for e in events.seen if e.get("Event") == "DTMFEnd"]
        assert [e["Digit"] for e in dtmf] == ["1", "2", "3", "#"]
        assert {e["Direction"] for e in dtmf} == {"Received"}
    finally:
        await ami.hangup(channel_id)
        ami.remove_channel_listener(channel_id)


async def test_caller_id_and_variables_reach_the_dialplan(ami: AmiClient,
                                                          rtp: RtpEndpoint) -> None:
    """CALLERID, WA_CALL_ID and a payload with commas and quotes arrive unchanged."""
    events = Events()
    payload = 'promo,42 "spring" a\\b'
    channel_id = await originate(
        ami, rtp, "test-marker", listener=events,
        caller_id=format_caller_id('Maria "Mia" Silva', "+5511999990000"),
        variables={"WA_CALL_ID": "wacid.HBgLMTIz", "WA_CTA_PAYLOAD": payload})
    try:
        marker = await events.wait_for("UserEvent", "TestMarker")
        assert marker["CallerNum"] == "+5511999990000"
        # The channel has the name as sent; UserEvent()'s argument parsing drops the quotes.
        assert await ami.getvar(channel_id, "CALLERID(name)") == 'Maria "Mia" Silva'
        assert marker["CallerName"] == "Maria Mia Silva"
        assert marker["WaCallId"] == "wacid.HBgLMTIz"
        assert marker["DialplanContext"] == "test-marker"
        assert marker["Uniqueid"] == channel_id
        assert await ami.getvar(channel_id, "WA_CTA_PAYLOAD") == payload
        assert await ami.getvar(channel_id, "NOT_SET_ANYWHERE") is None
        await ami.setvar(channel_id, "WA_TEST", "x")
        assert await ami.getvar(channel_id, "WA_TEST") == "x"
    finally:
        await ami.hangup(channel_id)


async def test_gateway_hangup_ends_the_channel(ami: AmiClient, rtp: RtpEndpoint) -> None:
    """WhatsApp user hangs up: AMI Hangup, then a Hangup event, and the channel is gone."""
    events = Events()
    channel_id = await originate(ami, rtp, "test-wait", listener=events)
    assert any(c["Uniqueid"] == channel_id for c in await ami.core_show_channels())
    assert await ami.hangup(channel_id, 16) is True
    hangup = await events.wait_for("Hangup")
    assert hangup["Cause"] == "16" and hangup["Cause-txt"] == "Normal Clearing"
    assert not [c for c in await ami.core_show_channels() if c["Uniqueid"] == channel_id]
    assert await ami.hangup(channel_id) is False  # already gone: not an error
    with pytest.raises(AmiError):
        await ami.getvar(channel_id, "UNICASTRTP_LOCAL_PORT")


async def test_dialplan_hangup_reports_its_cause(ami: AmiClient, rtp: RtpEndpoint) -> None:
    """The dialplan runs Hangup(21): the gateway gets the Hangup event with cause 21."""
    events = Events()
    channel_id = await originate(ami, rtp, "test-hangup", listener=events)
    hangup = await events.wait_for("Hangup")
    assert hangup["Cause"] == "21"
    assert cause_name(hangup["Cause"]) == "CALL_REJECTED"
    ami.remove_channel_listener(channel_id)


async def test_sample_ivr_option_3_reads_a_code(ami: AmiClient, rtp: RtpEndpoint) -> None:
    """The sample from-whatsapp IVR: marker on entry, caller presses 3 then 4 2 #."""
    events = Events()
    channel_id = await originate(ami, rtp, "from-whatsapp", listener=events)
    try:
        start = await events.wait_for("UserEvent", "WhatsAppCallStart")
        assert start["CallerNum"] == "+5511999990000" and start["WaCallId"] == "wacid.TEST"
        assert start["DialplanContext"] == "from-whatsapp"
        port = int(await ami.getvar(channel_id, "UNICASTRTP_LOCAL_PORT") or 0)
        media = asyncio.create_task(send_media(rtp, port, [b"\xff" * 160]))  # ulaw silence
        await ami.play_dtmf(channel_id, "3")
        await events.wait_for("DTMFEnd")  # Background() took the 3; the menu moves on
        for digit in "42#":
            await ami.play_dtmf(channel_id, digit)
        code = await events.wait_for("UserEvent", "WhatsAppCode")
        assert code["Code"] == "42"
        media.cancel()
    finally:
        await ami.hangup(channel_id)


async def test_sample_outbound_bridge(ami: AmiClient, asterisk: LocalAsterisk,
                                      rtp: RtpEndpoint) -> None:
    """An agent dials into to-whatsapp; the gateway sees WhatsAppDial and bridges a
    UnicastRTP channel to the agent's channel, whose far end runs Echo()."""
    dials: asyncio.Queue[Event] = asyncio.Queue()
    agent_hangups: asyncio.Queue[Event] = asyncio.Queue()
    agent = "Local/+5511987650000@to-whatsapp"

    def on_user_event(event: Event) -> None:
        if event.get("UserEvent") == "WhatsAppDial":
            dials.put_nowait(event)

    def on_hangup(event: Event) -> None:
        if event.get("Channel", "").startswith(agent):
            agent_hangups.put_nowait(event)

    ami.add_event_listener("UserEvent", on_user_event)
    ami.add_event_listener("Hangup", on_hangup)
    await asterisk.cli(f"channel originate {agent} application Echo")
    dial = await asyncio.wait_for(dials.get(), WAIT_S)
    assert dial["To"] == "+5511987650000" and dial["From"] == "15550001111"
    assert dial["Channel"].startswith(agent) and dial["Channel"].endswith(";2")
    events = Events()
    channel_id = new_channel_id()
    ami.add_channel_listener(channel_id, events)
    result = await ami.originate_unicast(
        channel_id=channel_id, rtp_host="127.0.0.1", rtp_port=rtp.port, codec="ulaw",
        application="Bridge", data=dial["Channel"], caller_id="<+5511987650000>",
        variables={"WA_DIRECTION": "outbound"})
    try:
        assert result.success, result
        await events.wait_for("BridgeEnter")
    finally:
        await ami.hangup(channel_id)
    await events.wait_for("Hangup")
    # Hanging up the WhatsApp side ends the agent's side too (both halves of the Local pair).
    ended = {(await asyncio.wait_for(agent_hangups.get(), WAIT_S))["Channel"] for _ in "12"}
    assert {name[-2:] for name in ended} == {";1", ";2"}
    ami.remove_event_listener("UserEvent", on_user_event)
    ami.remove_event_listener("Hangup", on_hangup)


async def test_orphan_sweep_on_connect(ami: AmiClient, ami_settings: AmiSettings,
                                       rtp: RtpEndpoint) -> None:
    """A gateway restarts: on connect it hangs up the wa- channels no call owns any more."""
    orphan_events, kept_events = Events(), Events()
    orphan = await originate(ami, rtp, "test-wait", listener=orphan_events)
    kept = await originate(ami, rtp, "test-wait", listener=kept_events)
    restarted = AmiClient(ami_settings)
    sweep = OrphanSweep(restarted, owned=lambda uniqueid: uniqueid == kept).install()
    try:
        await restarted.connect()  # the sweep runs before connect() returns
        hangup = await orphan_events.wait_for("Hangup")
        assert hangup["Cause"] == "41"
        channels = {c["Uniqueid"] for c in await ami.core_show_channels()}
        assert kept in channels and orphan not in channels
        assert await sweep.sweep() == []
    finally:
        await restarted.close()
        await ami.hangup(kept)


async def test_reconnects_after_asterisk_restart() -> None:
    """Asterisk restarts under the gateway: connected goes False, then True again."""
    port = free_tcp_port()
    instance = LocalAsterisk(instance_name("restart"), ami_port=port)
    await instance.start()
    client = AmiClient(AmiSettings(host="127.0.0.1", port=port, username="gateway",
                                   secret=Secret("gateway-secret")))
    changes: asyncio.Queue[bool] = asyncio.Queue()
    client.on_connection_change.append(changes.put_nowait)
    try:
        await client.connect()
        assert await asyncio.wait_for(changes.get(), WAIT_S) is True
        await instance.stop()
        assert await asyncio.wait_for(changes.get(), WAIT_S) is False
        assert not client.connected
        await instance.start()
        assert await asyncio.wait_for(changes.get(), 20) is True
        assert client.connected
        assert isinstance(await client.core_show_channels(), list)
    finally:
        await client.close()
        await instance.stop()


async def test_wrong_secret_is_reported(ami_settings: AmiSettings) -> None:
    bad = AmiSettings(host=ami_settings.host, port=ami_settings.port,
                      username=ami_settings.username, secret=Secret("wrong"),
                      connect_timeout_s=3.0)
    client = AmiClient(bad)
    try:
        with pytest.raises(AmiError, match="refused login"):
            await client.connect()
    finally:
        await client.close()
