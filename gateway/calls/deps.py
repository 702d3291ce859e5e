"""What a call needs from the running gateway, as small interfaces.

A call and the :class:`~gateway.calls.manager.CallManager` only use these methods of the AMI
client, the Graph client, the permission ledger and the call store; the real ones live in
gateway/asterisk/ami.py, gateway/whatsapp/graph.py, gateway/calls/permissions/ and
gateway/store.py, and tests/fakes.py has in-memory ones so a manager and its calls run in a
unit test in milliseconds (the way aiortc's own tests use dummy transports).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from gateway.calls.observer import CallObserver
from gateway.config import Config
from gateway.media.ports import PortPool

if TYPE_CHECKING:
    from gateway.asterisk.ami import OriginateResult
    from gateway.calls.record import CallRecord, Outcome
    from gateway.media.webrtc import WebRtcLeg

Event = dict[str, str]


class Ami(Protocol):
    """The Asterisk Manager Interface, as calls use it."""

    @property
    def connected(self) -> bool: ...

    async def originate_unicast(self, *, channel_id: str, rtp_host: str, rtp_port: int,
                                codec: str, caller_id: str, variables: Mapping[str, str],
                                context: str | None = None, exten: str | None = None,
                                application: str | None = None,
                                data: str | None = None,
                                account: str | None = None) -> OriginateResult: ...

    async def getvar(self, channel_id: str, variable: str) -> str | None: ...

    async def setvar(self, channel: str, variable: str, value: str) -> None: ...

    async def play_dtmf(self, channel_id: str, digit: str, duration_ms: int = 120) -> None: ...

    async def hangup(self, channel_id: str, cause: int = 16) -> bool: ...

    async def core_show_channels(self) -> list[Event]: ...

    def add_channel_listener(self, uniqueid: str, callback: Callable[[Event], None]) -> None: ...

    def remove_channel_listener(self, uniqueid: str) -> None: ...


class AsteriskServers(Protocol):
    """Several Asterisk servers (gateway/asterisk/pool.py): which one takes a new call."""

    @property
    def connected(self) -> bool: ...

    def pick(self) -> Ami | None: ...


class Graph(Protocol):
    """Meta's ``/calls`` actions (and call_permissions, for the outbound permission check)."""

    async def pre_accept(self, phone_number_id: str, call_id: str, sdp: str) -> None: ...

    async def accept(self, phone_number_id: str, call_id: str, sdp: str,
                     callback_data: str | None = None,
                     opt_in: dict[str, dict[str, str]] | None = None) -> None: ...

    async def reject(self, phone_number_id: str, call_id: str) -> None: ...

    async def terminate(self, phone_number_id: str, call_id: str) -> None: ...

    async def connect(self, phone_number_id: str, to: str, sdp: str,
                      callback_data: str | None = None,
                      opt_in: dict[str, dict[str, str]] | None = None) -> str: ...

    async def get_call_permissions(self, phone_number_id: str,
                                   user_wa_id: str) -> dict[str, Any]: ...


class Ledger(Protocol):
    """The outbound permission ledger (gateway/calls/permissions/ledger.py), as calls use it."""

    async def can_call(self, phone_number_id: str, user: str, now: float | None = None): ...

    async def get(self, phone_number_id: str, user: str, now: float | None = None) -> dict: ...

    async def apply_meta_permissions(self, phone_number_id: str, user: str,
                                     answer: dict[str, Any], now: float | None = None): ...

    async def record_call_result(self, phone_number_id: str, user: str, answered: bool,
                                 now: float | None = None,
                                 call_id: str | None = None) -> None: ...

    async def record_user_call(self, phone_number_id: str, user: str,
                               now: float | None = None) -> None: ...

    async def apply_meta_error(self, phone_number_id: str, user: Any, code: int | None,
                               now: float | None = None, *,
                               retry_at: float | None = None): ...

    def clock(self) -> float: ...


class Store(Protocol):
    """Call records (gateway/store.py): what the manager reads and writes itself."""

    async def list(self, since: float | None = None, until: float | None = None,
                   direction: Any = None, outcome: Outcome | str | None = None,
                   phone_number_id: str | None = None,
                   limit: int | None = 100) -> list[CallRecord]: ...

    async def save(self, record: CallRecord) -> None: ...


WebRtcLegFactory = Callable[[str], "WebRtcLeg"]
"""Makes a call's WhatsApp leg, named after the call (tests give a fake one)."""


@dataclass
class CallDeps:
    """What a call needs from the running gateway."""

    config: Config
    graph: Graph
    ami: Ami
    ports: PortPool
    observer: CallObserver
    ledger: Ledger | None = None
    """The outbound permission ledger (None: no outbound permission bookkeeping)."""
    store: Store | None = None
    """The call records (None: nothing read back, e.g. unit tests without a store)."""
    new_webrtc_leg: WebRtcLegFactory | None = field(default=None)
    """None: a real :class:`~gateway.media.webrtc.WebRtcLeg` from ``config.media``."""
