"""The exception tree (gateway/errors.py): every exception the gateway defines is in it, in the
branch its docstring draws, and a caller catching a branch catches every leaf under it."""

from __future__ import annotations

import ast
import importlib
import re
from pathlib import Path

import pytest

from gateway import errors
from gateway.asterisk.ami import AmiAuthError, AmiError, AmiNotConnected, AmiUnsafeValue
from gateway.calls.base import CallEnded, OriginateFailed
from gateway.calls.ending import CallFailure, What, what_for
from gateway.calls.permissions import LedgerClosed
from gateway.config import ConfigError
from gateway.errors import (
    AsteriskRefused,
    BadInput,
    CapacityExhausted,
    GatewayError,
    MediaFailed,
    MetaRefused,
    SetupError,
    StorageError,
)
from gateway.media.ports import PortsExhausted
from gateway.media.webrtc import NoCandidates, SdpError
from gateway.resources import ResourceMissing
from gateway.sandbox.demo import DemoError
from gateway.sandbox.local_asterisk import LocalAsteriskError
from gateway.sqlite_thread import DatabaseClosed
from gateway.store import StoreClosed
from gateway.strict_json import StrictJsonError
from gateway.whatsapp.events import MalformedWebhook
from gateway.whatsapp.graph import GraphError
from gateway.whatsapp.webhook import BodyTooLarge

ROOT = Path(__file__).resolve().parents[2]

BRANCHES = {
    BadInput: [ConfigError, StrictJsonError, MalformedWebhook, BodyTooLarge, SdpError],
    CapacityExhausted: [PortsExhausted],
    MetaRefused: [GraphError],
    AsteriskRefused: [AmiError, AmiNotConnected, AmiAuthError, AmiUnsafeValue],
    MediaFailed: [NoCandidates],
    StorageError: [DatabaseClosed, StoreClosed, LedgerClosed],
    SetupError: [ResourceMissing, DemoError, LocalAsteriskError],
    GatewayError: [CallFailure, OriginateFailed, CallEnded],
}


@pytest.mark.parametrize("branch", list(BRANCHES), ids=lambda b: b.__name__)
def test_each_leaf_is_caught_by_its_branch(branch):
    for leaf in BRANCHES[branch]:
        assert issubclass(leaf, branch), f"{leaf.__name__} is not a {branch.__name__}"
        assert issubclass(leaf, GatewayError)
    others = [b for b in BRANCHES if b not in (branch, GatewayError)]
    for leaf in BRANCHES[branch]:
        assert not any(issubclass(leaf, b) for b in others), f"{leaf.__name__} in two branches"


def test_leaves_keep_their_builtin_bases():
    """Code written before the tree (``except ValueError``) still catches what it caught."""
    for leaf in (SdpError, StrictJsonError, MalformedWebhook):
        assert issubclass(leaf, ValueError)
    for leaf in (PortsExhausted, NoCandidates, DatabaseClosed, DemoError, LocalAsteriskError):
        assert issubclass(leaf, RuntimeError)
    assert issubclass(ResourceMissing, FileNotFoundError)
    missing = ResourceMissing("gateway/share/asterisk-conf")
    assert isinstance(missing, OSError) and str(missing) == "gateway/share/asterisk-conf"


def defined_exceptions() -> list[type]:
    """Every exception class defined under gateway/ (but the simulator, which plays Meta and
    a phone rather than being the gateway), found by reading the source."""
    found = []
    for path in sorted((ROOT / "gateway").rglob("*.py")):
        if "simulator" in path.parts:
            continue
        module = ".".join(path.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")
        for node in ast.parse(path.read_text(encoding="utf-8")).body:
            if isinstance(node, ast.ClassDef):
                cls = getattr(importlib.import_module(module), node.name)
                if isinstance(cls, type) and issubclass(cls, BaseException):
                    found.append(cls)
    return found


def test_every_exception_the_gateway_defines_is_in_the_tree():
    found = defined_exceptions()
    assert len(found) >= 25
    outside = [f"{c.__module__}.{c.__name__}" for c in found if not issubclass(c, GatewayError)]
    assert not outside, f"not under GatewayError (gateway/errors.py): {outside}"


def drawn_tree() -> dict[str, str]:
    """Child -> parent, as the docstring of gateway/errors.py draws them."""
    parents: dict[str, str] = {}
    stack: list[tuple[int, str]] = []
    for line in (errors.__doc__ or "").splitlines():
        match = re.match(r"^[│ ]*(?:[├└]── )?(GatewayError|[A-Z]\w+)\b", line)
        if not match or ("──" not in line and match.group(1) != "GatewayError"):
            continue
        depth = match.start(1)
        while stack and stack[-1][0] >= depth:
            stack.pop()
        if stack:
            parents[match.group(1)] = stack[-1][1]
        stack.append((depth, match.group(1)))
    return parents


def test_the_docstring_draws_the_real_tree():
    drawn = drawn_tree()
    real = {c.__name__: c for c in defined_exceptions()}
    assert set(drawn) == set(real) - {"GatewayError"}, "the drawing and the classes differ"
    for name, parent in drawn.items():
        bases = [b.__name__ for b in real[name].__bases__]
        assert parent in bases, f"{name}: drawn under {parent}, but its bases are {bases}"


@pytest.mark.parametrize(("exc", "what"), [
    (SdpError("no audio"), What.BAD_SDP),
    (PortsExhausted("40000-40099"), What.CAPACITY),
    (NoCandidates("no address"), What.CAPACITY),
    (GraphError("accept", "boom", code=131000), What.GRAPH_ERROR),
    (GraphError("accept", "no answer", timed_out=True), What.GRAPH_TIMEOUT),
    (AmiNotConnected("down"), What.NO_AMI),
    (AmiUnsafeValue("Channel", "x\ny"), What.ORIGINATE_FAILED),
    (AmiError("refused"), What.ORIGINATE_FAILED),
    (OriginateFailed("no port"), What.ORIGINATE_FAILED),
    (CallFailure(What.MEDIA_TIMEOUT, "no media"), What.MEDIA_TIMEOUT),
    (KeyError("bug"), What.GATEWAY_ERROR),
])
def test_what_a_call_does_next_is_read_from_the_tree(exc, what):
    assert what_for(exc).what == what
