"""The AMI sanitiser on the exact bytes panoramisk writes to Asterisk.

``AMIProtocol.send`` writes ``str(action).encode("utf8")``; the gateway's ``_send`` builds that
action from :func:`safe_action`, so these bytes are what reaches the socket.
"""

from __future__ import annotations

import logging

import pytest

from gateway.asterisk.ami import AmiUnsafeValue, safe_action
from gateway.asterisk.ami_values import variable_header
from gateway.asterisk.panoramisk_hooks import GatewayAction


def wire(action: dict) -> bytes:
    sent = GatewayAction(safe_action(action))
    sent["ActionID"] = "t-1"
    return str(sent).encode("utf8")


def headers(raw: bytes) -> list[str]:
    """The header lines Asterisk reads: it splits on LF (CR LF or bare) and stops at the
    first empty line, which ends the action."""
    lines = []
    for line in raw.decode("utf8").replace("\r\n", "\n").split("\n"):
        if not line:
            break
        lines.append(line)
    return lines


def originate(**extra) -> dict:
    return {"Action": "Originate", "Channel": "UnicastRTP/127.0.0.1:40000/c(g722)",
            "ChannelId": "wa-1", "Context": "from-whatsapp", "Exten": "s", "Priority": "1",
            "Async": "true", **extra}


@pytest.mark.parametrize("hostile", [
    "x\r\n\r\nAction: Hangup\r\nChannel: /^UnicastRTP/",
    "Eve\r\nApplication: UserEvent\r\nData: X",
    "cut\nshort",
    "bare\rCR",
    "nul\x00byte",
    "esc\x1b[2J",
    "del\x7f",
    "lone \ud800 surrogate",
])
async def test_unsafe_variable_is_sent_empty_and_the_action_still_goes(hostile, caplog):
    action = originate(Variable=[variable_header("WA_CTA_PAYLOAD", hostile),
                                 variable_header("WA_CALL_ID", "wacid.1")])
    with caplog.at_level(logging.WARNING, "gateway.asterisk.ami"):
        raw = wire(action)
    lines = headers(raw)
    assert lines == [
        "Action: Originate", "ActionID: t-1", "Async: true",
        "Channel: UnicastRTP/127.0.0.1:40000/c(g722)", "ChannelId: wa-1",
        "Context: from-whatsapp", "Exten: s", "Priority: 1",
        "Variable: WA_CTA_PAYLOAD=", "Variable: WA_CALL_ID=wacid.1"]
    assert raw.endswith(b"Variable: WA_CALL_ID=wacid.1\r\n\r\n")
    assert raw.count(b"\r\n\r\n") == 1 and raw.count(b"\n") == len(lines) + 1
    assert "WA_CTA_PAYLOAD" in caplog.text and "sent empty" in caplog.text


@pytest.mark.parametrize("text", [
    "Zoë 🎧 «quoted» \"double\" 'single'", "a,b,c", "x;y", "p|q", "f(x)", "tab\tinside",
])
async def test_text_asterisk_can_carry_arrives_intact(text):
    entry = variable_header("WA_PROFILE_NAME", text)
    raw = wire(originate(Variable=[entry], CallerID=f'"{text}" <+5511999990000>'))
    assert f"Variable: {entry}".encode() in raw
    assert f'CallerID: "{text}" <+5511999990000>'.encode() in raw


async def test_caller_id_control_characters_become_spaces():
    raw = wire(originate(CallerID='"Eve\r\nApplication: UserEvent" <+5511999990000>'))
    assert 'CallerID: "Eve  Application: UserEvent" <+5511999990000>' in headers(raw)
    assert not any(line.startswith("Application") for line in headers(raw))


@pytest.mark.parametrize("header", ["Channel", "Context", "Exten", "Application", "Data",
                                    "Variable"])
async def test_other_headers_with_control_characters_refuse_the_action(header):
    if header == "Variable":  # the variable's name is ours; a broken one is refused
        action = originate(Variable=["BAD\nNAME=x"])
    else:
        action = originate(**{header: "agents\r\nAction: Hangup"})
    with pytest.raises(AmiUnsafeValue) as err:
        safe_action(action)
    assert err.value.header == header


async def test_a_clean_action_is_unchanged():
    action = {"Action": "Getvar", "Channel": "wa-1", "Variable": "UNICASTRTP_LOCAL_PORT"}
    assert safe_action(action) == {**action, "Variable": ["UNICASTRTP_LOCAL_PORT"]}
    assert headers(wire(action))[-1] == "Variable: UNICASTRTP_LOCAL_PORT"


def test_every_action_is_written_through_one_sanitised_path():
    """The header check holds only if nothing writes around it: in all of gateway/ the one
    call of panoramisk's ``send_action`` (or its command helpers) is in
    ``AmiConnection._send``, and its argument is built by ``safe_action``."""
    import ast
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    writers = []
    for path in sorted((root / "gateway").rglob("*.py")):
        if "simulator" in path.parts:
            continue
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for func in ast.walk(tree):
            if not isinstance(func, ast.FunctionDef | ast.AsyncFunctionDef):
                continue
            for node in ast.walk(func):
                if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and \
                        node.func.attr in ("send_action", "send_command", "send_agi_command"):
                    wrapped = any(isinstance(a, ast.Call) and any(
                        isinstance(n, ast.Name) and n.id == "safe_action"
                        for n in ast.walk(a)) for a in node.args)
                    writers.append((path.relative_to(root).as_posix(), func.name, wrapped))
    assert writers == [("gateway/asterisk/ami_connection.py", "_send", True)]
