"""In-memory stand-ins for the gateway's own interfaces (gateway/calls/deps.py), so a
:class:`~gateway.calls.manager.CallManager` and its calls run in a unit test in milliseconds.

They fake only what is ours to define: how the gateway talks to AMI, to Graph, to its ledger
and store, and the WebRTC leg a call drives. Nothing here pretends to be Asterisk or Meta in
detail; the e2e tests use the real Asterisk and the simulator for that. Each fake can hold an
action at a gate (``gates``) so a test can end a call at exactly that step, and records what it
was asked so the test can check what the call did.
"""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from gateway.asterisk.ami import AmiError, AmiNotConnected, OriginateResult
from gateway.calls.deps import CallDeps
from gateway.calls.manager import CallManager
from gateway.calls.observer import CallObserver
from gateway.calls.permissions import OK, Decision
from gateway.calls.record import CallRecord, Outcome
from gateway.config import Config, parse_config
from gateway.media.ports import PortPool
from gateway.whatsapp.events import CallEvent, StatusEvent, parse_webhook
from gateway.whatsapp.graph import GraphError
from tests.ports import udp_range

PAYLOADS = Path(__file__).parent / "fixtures" / "payloads"
PNID = "106540000000002"
"""The business number of the reference connect webhook."""
USER = "15550002222"


class Gates:
    """Named steps a fake can hold until the test releases them (``release(name)``), with an
    event per step that is set when a request reaches it (``reached(name)``)."""

    def __init__(self) -> None:
        self._held: dict[str, asyncio.Event] = {}
        self._reached: dict[str, asyncio.Event] = {}

    def hold(self, name: str) -> None:
        self._held[name] = asyncio.Event()

    def release(self, name: str) -> None:
        self._held.pop(name, asyncio.Event()).set()

    async def reached(self, name: str) -> None:
        await self._reached.setdefault(name, asyncio.Event()).wait()

    async def pass_(self, name: str) -> None:
        self._reached.setdefault(name, asyncio.Event()).set()
        gate = self._held.get(name)
        if gate is not None:
            await gate.wait()


class FakeAmi:
    """AMI as calls use it. Channels exist from the moment an Originate completes, whether
    or not the caller still awaits it — as in Asterisk."""

    def __init__(self) -> None:
        self.connected = True
        self.gates = Gates()
        self.channels: dict[str, dict[str, str]] = {}
        self.originates: list[dict[str, Any]] = []
        self.hangups: list[tuple[str, int]] = []
        self.setvars: list[tuple[str, str, str]] = []
        self.dtmf: list[tuple[str, str]] = []
        self.originate_success = True
        self.rtp_port: str | None = "40000"
        self._in_flight: set[asyncio.Task] = set()
        self._listeners: dict[str, Callable[[dict[str, str]], None]] = {}

    async def originate_unicast(self, *, channel_id: str, rtp_host: str, rtp_port: int,
                                codec: str, caller_id: str, variables: Any,
                                context: str | None = None, exten: str | None = None,
                                application: str | None = None,
                                data: str | None = None,
                                account: str | None = None) -> OriginateResult:
        if not self.connected:
            raise AmiNotConnected("not connected")
        self.originates.append({"channel_id": channel_id, "context": context, "exten": exten,
                                "application": application, "data": data,
                                "variables": dict(variables)})
        task = asyncio.current_task()
        assert task is not None
        self._in_flight.add(task)
        task.add_done_callback(self._in_flight.discard)
        await self.gates.pass_("originate")
        if not self.originate_success:
            return OriginateResult(success=False, channel="", reason=0)
        name = f"UnicastRTP/{rtp_host}:{rtp_port}-0x{len(self.originates):x}"
        self.channels[channel_id] = {"Uniqueid": channel_id, "Channel": name}
        return OriginateResult(success=True, channel=name, reason=4)

    async def settled(self) -> None:
        """Until every Originate sent has completed (whoever still awaits it): Asterisk has
        made every channel it is going to make."""
        while self._in_flight:
            await asyncio.wait(set(self._in_flight))

    async def getvar(self, channel_id: str, variable: str) -> str | None:
        await self.gates.pass_("getvar")
        if channel_id not in self.channels:
            raise AmiError(f"Getvar {variable} on {channel_id}: No such channel")
        return self.rtp_port if variable == "UNICASTRTP_LOCAL_PORT" else "127.0.0.1"

    async def setvar(self, channel: str, variable: str, value: str) -> None:
        await self.gates.pass_("setvar")
        self.setvars.append((channel, variable, value))

    async def play_dtmf(self, channel_id: str, digit: str, duration_ms: int = 120) -> None:
        self.dtmf.append((channel_id, digit))

    async def hangup(self, channel_id: str, cause: int = 16) -> bool:
        self.hangups.append((channel_id, cause))
        existed = self.channels.pop(channel_id, None) is not None
        if existed:
            asyncio.get_running_loop().call_soon(self._emit, channel_id, cause)
        return existed

    async def core_show_channels(self) -> list[dict[str, str]]:
        return list(self.channels.values())

    def add_channel_listener(self, uniqueid: str,
                             callback: Callable[[dict[str, str]], None]) -> None:
        self._listeners[uniqueid] = callback

    def remove_channel_listener(self, uniqueid: str) -> None:
        self._listeners.pop(uniqueid, None)

    def asterisk_hangs_up(self, channel_id: str, cause: int = 16) -> None:
        """The dialplan (or a phone) ends the channel: Asterisk's Hangup event."""
        self.channels.pop(channel_id, None)
        self._emit(channel_id, cause)

    def _emit(self, uniqueid: str, cause: int) -> None:
        callback = self._listeners.get(uniqueid)
        if callback is not None:
            callback({"Event": "Hangup", "Uniqueid": uniqueid, "Cause": str(cause),
                      "Cause-txt": ""})


class FakeGraph:
    """Meta's /calls actions: records each request; ``failures[action]`` is a list of
    GraphErrors raised by the next requests for that action, in order."""

    def __init__(self) -> None:
        self.gates = Gates()
        self.requests: list[tuple[str, str]] = []
        """(action, call id) in the order the gateway sent them (connect: the user)."""
        self.failures: dict[str, list[GraphError]] = {}
        self.permissions: dict[str, Any] = {"permission": {"status": "temporary"}}
        self._ids = itertools.count(1)

    def fail(self, action: str, *errors: GraphError) -> None:
        self.failures.setdefault(action, []).extend(errors)

    def actions(self, call_id: str | None = None) -> list[str]:
        return [a for a, c in self.requests if call_id is None or c == call_id]

    async def _do(self, action: str, call_id: str) -> None:
        self.requests.append((action, call_id))
        await self.gates.pass_(action)
        pending = self.failures.get(action)
        if pending:
            raise pending.pop(0)

    async def pre_accept(self, phone_number_id: str, call_id: str, sdp: str) -> None:
        await self._do("pre_accept", call_id)

    async def accept(self, phone_number_id: str, call_id: str, sdp: str,
                     callback_data: str | None = None,
                     opt_in: dict[str, dict[str, str]] | None = None) -> None:
        await self._do("accept", call_id)

    async def reject(self, phone_number_id: str, call_id: str) -> None:
        await self._do("reject", call_id)

    async def terminate(self, phone_number_id: str, call_id: str) -> None:
        await self._do("terminate", call_id)

    async def connect(self, phone_number_id: str, to: str, sdp: str,
                      callback_data: str | None = None,
                      opt_in: dict[str, dict[str, str]] | None = None) -> str:
        await self._do("connect", to)
        return f"wacid.out-{next(self._ids)}"

    async def get_call_permissions(self, phone_number_id: str, user_wa_id: str) -> dict:
        self.requests.append(("call_permissions", user_wa_id))
        return self.permissions


class FakeLedger:
    """The permission ledger: allows every call unless ``decision`` says otherwise; records
    what calls report."""

    def __init__(self) -> None:
        self.decision: Decision = OK
        self.results: list[tuple[str, bool]] = []
        """(user, answered) per record_call_result."""
        self.user_calls: list[str] = []
        self.meta_errors: list[int | None] = []
        self.asked: list[str] = []
        """The user of each ``can_call`` (how often a call was decided)."""

    async def can_call(self, phone_number_id: str, user: str, now: float | None = None):
        self.asked.append(_key(user))
        return self.decision

    async def get(self, phone_number_id: str, user: str, now: float | None = None) -> dict:
        return {"meta_checked_at": 1e12, "permission": {"updated_at": 1e12}}

    async def apply_meta_permissions(self, phone_number_id: str, user: str, answer: dict,
                                     now: float | None = None) -> None:
        return None

    def clock(self) -> float:
        return time.time()

    async def record_call_result(self, phone_number_id: str, user: Any, answered: bool,
                                 now: float | None = None, call_id: str | None = None) -> None:
        self.results.append((_key(user), answered))

    async def record_user_call(self, phone_number_id: str, user: Any,
                               now: float | None = None) -> None:
        self.user_calls.append(_key(user))

    async def apply_meta_error(self, phone_number_id: str, user: Any, code: int | None,
                               now: float | None = None, *,
                               retry_at: float | None = None) -> None:
        self.meta_errors.append(code)


def _key(user: Any) -> str:
    """A user as the ledger keys them: a number string, or a WhatsAppUser's key."""
    return user if isinstance(user, str) else user.key


class FakeStore:
    """Call records in a dict, by wacid."""

    def __init__(self, *records: CallRecord) -> None:
        self.records = {r.wacid: r for r in records}

    async def list(self, since: float | None = None, until: float | None = None,
                   direction: Any = None, outcome: Outcome | str | None = None,
                   phone_number_id: str | None = None,
                   limit: int | None = 100) -> list[CallRecord]:
        return [dataclasses.replace(r) for r in self.records.values()
                if outcome is None or r.outcome == outcome]

    async def save(self, record: CallRecord) -> None:
        self.records[record.wacid] = dataclasses.replace(record)


class RecordingObserver(CallObserver):
    """Every record a call reports, by kind."""

    def __init__(self) -> None:
        self.admitted: list[CallRecord] = []
        self.rejected: list[CallRecord] = []
        self.ended: list[CallRecord] = []
        self.events: list[tuple[str, str, dict]] = []
        self._seen: dict[tuple[str, str], asyncio.Event] = {}

    async def reached(self, event: str, wacid: str = "") -> None:
        """Until a call (any, or ``wacid``) reports ``event`` (a call_event name, or
        "rejected" for a call refused at admission)."""
        await self._flag(event, wacid).wait()

    def _flag(self, event: str, wacid: str) -> asyncio.Event:
        return self._seen.setdefault((event, wacid), asyncio.Event())

    def call_admitted(self, record: CallRecord) -> None:
        self.admitted.append(record)

    def call_rejected(self, record: CallRecord) -> None:
        self.rejected.append(record)
        self._flag("rejected", "").set()

    def call_event(self, record: CallRecord, event: str, **fields: object) -> None:
        self.events.append((record.wacid, event, fields))
        self._flag(event, "").set()
        self._flag(event, record.wacid).set()

    def call_ended(self, record: CallRecord) -> None:
        self.ended.append(record)


class _Outgoing:
    gate_open = True


class FakeLeg:
    """A WebRTC leg that is connected when the test says so (``connect()``)."""

    def __init__(self, name: str, *, connect_at_once: bool = True) -> None:
        self.name = name
        self.outgoing = _Outgoing()
        self.connected = asyncio.Event()
        self.first_audio = asyncio.Event()
        self.packets_received = 0
        self.closed = False
        self.on_audio: Callable[[bytes], None] = lambda pcm: None
        self.on_dtmf: Callable[[str, int], None] = lambda digit, ms: None
        self.on_state: Callable[[str], None] = lambda state: None
        self._connect_at_once = connect_at_once
        self.g711: tuple[str, ...] = ()
        self.passthrough = False
        self.audio_codec = "opus"

    async def answer(self, offer_sdp: str) -> str:
        if self._connect_at_once:
            self.connected.set()
        return "v=0\r\ns=fake answer\r\n"

    async def offer(self, **kwargs: Any) -> str:
        return "v=0\r\ns=fake offer\r\n"

    async def apply_answer(self, answer_sdp: str) -> None:
        if self._connect_at_once:
            self.connected.set()

    def play(self, pcm: bytes) -> None:
        self.packets_received += 1

    def send_dtmf(self, digits: str, duration_ms: int = 100) -> None:
        pass

    async def stats(self) -> dict[str, float]:
        return {}

    async def close(self) -> None:
        self.closed = True
        self.on_state("closed")


def config(rtp_ports: str | None = None, **overrides: Any) -> Config:
    """A valid config for unit tests: the reference number, a small RTP range of this suite."""
    data: dict[str, Any] = {
        "whatsapp": {"graph_url": "http://127.0.0.1:9/v23.0", "access_token": "t",
                     "app_secret": "s", "verify_token": "v"},
        "numbers": [{"phone_number_id": PNID, "display_number": "15550001111",
                     "context": "from-whatsapp"}],
        "asterisk": {"ami": {"username": "gateway", "secret": "x"}},
        "media": {"rtp_ports": rtp_ports or udp_range(2300, 20)},
    }
    for key, value in overrides.items():
        data[key] = {**data.get(key, {}), **value} if isinstance(value, dict) else value
    return parse_config(data, env={})


@dataclasses.dataclass
class Rig:
    """A CallManager on fakes, and the fakes, for one test."""

    manager: CallManager
    ami: FakeAmi
    graph: FakeGraph
    ledger: FakeLedger
    store: FakeStore
    observer: RecordingObserver
    legs: list[FakeLeg]


def rig(*, rtp_ports: str | None = None, connect_at_once: bool = True, **overrides: Any) -> Rig:
    cfg = config(rtp_ports, **overrides)
    ami, graph, ledger, store, observer = (FakeAmi(), FakeGraph(), FakeLedger(), FakeStore(),
                                           RecordingObserver())
    legs: list[FakeLeg] = []

    def new_leg(name: str) -> FakeLeg:
        leg = FakeLeg(name, connect_at_once=connect_at_once)
        legs.append(leg)
        return leg

    deps = CallDeps(config=cfg, graph=graph, ami=ami, ports=PortPool(cfg.media.rtp_ports),
                    observer=observer, ledger=ledger, store=store, new_webrtc_leg=new_leg)
    return Rig(CallManager(deps), ami, graph, ledger, store, observer, legs)


NOW = int(time.time())
"""The connect stamp of these fakes: fresh, since the gateway ignores connects older than
300 s (a replay guard)."""

_CONNECT = parse_webhook(json.loads((PAYLOADS / "webhook-connect-user-initiated.json")
                                    .read_text())).events[0]


def connect_event(call_id: str = "wacid.unit-1", timestamp: int | None = None,
                  **fields: Any) -> CallEvent:
    """The reference user-initiated connect webhook, as a parsed event, for ``call_id``."""
    assert isinstance(_CONNECT, CallEvent)
    return dataclasses.replace(_CONNECT, call_id=call_id,
                               timestamp=NOW if timestamp is None else timestamp, **fields)


def terminate_event(call_id: str = "wacid.unit-1", timestamp: int | None = None, *,
                    direction: str = "USER_INITIATED", errors: tuple = (),
                    status: str = "COMPLETED") -> CallEvent:
    return dataclasses.replace(connect_event(call_id), event="terminate",
                               timestamp=NOW + 60 if timestamp is None else timestamp,
                               direction=direction, sdp=None, sdp_type=None, status=status,
                               errors=errors)


def status_event(call_id: str, status: str, timestamp: int | None = None,
                 callback_data: str | None = None) -> StatusEvent:
    return StatusEvent(call_id=call_id, status=status, phone_number_id=PNID,
                       recipient_id=USER, timestamp=NOW + 10 if timestamp is None else timestamp,
                       biz_opaque_callback_data=callback_data)


class ManualClock:
    """The simulator's clock (gateway/simulator/runtime.py ``Clock``) that moves only when a
    test says so: Meta's time rules (rate per second, URL lifetimes, 7-day permissions) are
    tested without waiting on the real clock."""

    def __init__(self, start: float | None = None) -> None:
        self._now = time.time() if start is None else start
        self._monotonic = 1000.0

    def now(self) -> float:
        return self._now

    def monotonic(self) -> float:
        return self._monotonic

    def advance(self, seconds: float) -> None:
        self._now += seconds
        self._monotonic += seconds
