"""The places the gateway reaches into panoramisk (pinned exactly in pyproject.toml).

gateway/asterisk/panoramisk_hooks.py overrides panoramisk internals that are not its public
API. An upgrade must fail here, loudly and naming what to re-read, rather than in production
as a connection that silently stops reconnecting or re-sends an Originate nobody waits for.
"""

from __future__ import annotations

import asyncio
import hashlib
import inspect
import re
from collections import deque
from importlib import metadata
from pathlib import Path

import pytest
from panoramisk import Manager, actions
from panoramisk.ami_protocol import AMIProtocol
from panoramisk.message import Message

from gateway.asterisk.panoramisk_hooks import (
    PANORAMISK_VERSION,
    GatewayAction,
    GatewayManager,
    GatewayProtocol,
)

ROOT = Path(__file__).resolve().parents[2]
HOOKS = "gateway/asterisk/panoramisk_hooks.py"

READ_AGAINST = {
    # internal: (sha256 of its source in panoramisk 1.4, first 16 hex digits; what to re-check)
    Manager.__init__: ("9e51d097eb759eda", "the config keys and attributes GatewayManager sets "
                                           "and reads (pinger, _connected, awaiting_actions)"),
    Manager.connection_made: ("5fc48474ec328eeb", "GatewayManager.connection_made"),
    Manager.connection_lost: ("d52c665685fbfba9", "GatewayManager.connection_lost (it must "
                                                  "not reconnect by itself)"),
    Manager.close: ("450aa2e85241f015", "AmiConnection.close / _drop_manager"),
    Manager.send_action: ("8f8e6da5dd3d43ba", "AmiConnection._send"),
    Manager.send_awaiting_actions: ("44c20151b3e2f1fb", "GatewayManager.forget_unanswered"),
    AMIProtocol.connection_lost: ("9911cb97ddef7596", "GatewayProtocol.connection_lost"),
    AMIProtocol.close: ("c897990721357179", "GatewayManager.forget_unanswered (where "
                                            "unanswered actions are queued)"),
    AMIProtocol.send: ("a11ad780a5833640", "AmiConnection._send: an action must be written "
                                           "exactly as safe_action left it"),
    actions.Action.__init__: ("020de017a4370f84", "GatewayAction (responses, as_list)"),
    actions.Action.multi.fget: ("a1b3f68b8097a89d", "GatewayAction.multi"),
    actions.Action.completed.fget: ("75ff623fc8005202", "GatewayAction.multi, which it calls"),
    actions.Action.add_message: ("b6874b83ac874d56", "GatewayAction.multi, which it calls"),
}


def fingerprint(function) -> str:
    return hashlib.sha256(inspect.getsource(function).encode()).hexdigest()[:16]


def test_installed_panoramisk_is_the_pinned_one():
    installed = metadata.version("panoramisk")
    assert installed == PANORAMISK_VERSION, (
        f"panoramisk {installed} is installed, {HOOKS} was read against {PANORAMISK_VERSION}: "
        "re-read every internal its docstring lists, then update PANORAMISK_VERSION, the pin "
        "in pyproject.toml and the fingerprints in this test")
    pins = re.findall(r'"panoramisk([^"]*)"', (ROOT / "pyproject.toml").read_text())
    assert pins == [f"=={PANORAMISK_VERSION}"], \
        f"pyproject.toml must pin panoramisk exactly, as {HOOKS} was read against: {pins}"


@pytest.mark.parametrize("internal", list(READ_AGAINST), ids=lambda f: f.__qualname__)
def test_overridden_internals_are_unchanged(internal):
    expected, recheck = READ_AGAINST[internal]
    assert fingerprint(internal) == expected, (
        f"panoramisk's {internal.__qualname__} changed: re-check {recheck} in {HOOKS}")


def reply(**headers: str) -> Message:
    return Message(headers)


async def test_playdtmf_reply_no_longer_kills_the_connection():
    """Upstream's ``multi`` reads ``self['async']`` on "successfully queued": a KeyError inside
    data_received for PlayDTMF, which has no Async header. If upstream stops raising, the
    override may go."""
    queued = reply(Response="Success", ActionID="a", Message="DTMF successfully queued")
    upstream = actions.Action({"Action": "PlayDTMF", "Channel": "wa-1", "Digit": "5"})
    upstream.responses.append(queued)
    with pytest.raises(KeyError):
        upstream.multi  # noqa: B018
    ours = GatewayAction({"Action": "PlayDTMF", "Channel": "wa-1", "Digit": "5"})
    assert ours.add_message(queued) is True
    assert ours.future.result() is queued


async def test_async_originate_waits_for_its_originate_response():
    ours = GatewayAction({"Action": "Originate", "Channel": "Local/1@x", "Async": "true"})
    assert not ours.add_message(reply(Response="Success", ActionID="a",
                                      Message="Originate successfully queued"))
    assert not ours.future.done()
    final = reply(Event="OriginateResponse", Response="Success", ActionID="a")
    assert ours.add_message(final) is True
    assert ours.future.result()[-1] is final


class Transport(asyncio.Transport):
    def __init__(self) -> None:
        super().__init__()
        self.written: list[bytes] = []
        self.closed = False

    def write(self, data: bytes) -> None:
        self.written.append(data)

    def close(self) -> None:
        self.closed = True


async def test_manager_never_reconnects_and_forgets_what_it_would_resend():
    lost: list[object] = []
    manager = GatewayManager(lost.append, loop=asyncio.get_running_loop())
    assert manager.config["protocol_factory"] is GatewayProtocol
    assert manager.pinger is None and manager._connected is False
    assert isinstance(manager.awaiting_actions, deque)

    transport = Transport()
    protocol = GatewayProtocol()
    protocol.connection_made(transport)
    made = asyncio.get_running_loop().create_future()
    made.set_result((transport, protocol))
    manager.connection_made(made)
    assert manager.protocol is protocol and protocol.factory is manager
    manager.pinger.cancel()

    unanswered = manager.send_action(GatewayAction({"Action": "Originate", "Async": "true"}))
    assert transport.written and not unanswered.done()
    protocol.connection_lost(None)
    assert lost == [None], "the loss must reach the client, not panoramisk's reconnect"
    assert manager._connected is False and manager.pinger is None
    assert len(manager.awaiting_actions) == 1, "panoramisk queued it to re-send"
    manager.forget_unanswered()
    assert not manager.awaiting_actions


def test_protocol_lost_before_a_manager_took_it():
    protocol = GatewayProtocol()
    protocol.connection_made(Transport())
    protocol.connection_lost(ConnectionResetError())
    assert protocol.closed
