"""``whatsapp-gateway demo`` as a new user runs it: ports taken by something else, --call."""

from __future__ import annotations

import asyncio
import os
import re
import socket
import sys

import pytest

from gateway.sandbox.demo import DemoError, choose_port, port_is_free

pytestmark = pytest.mark.asterisk


async def demo(*args: str, cwd) -> tuple[int, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "gateway", "demo", *args, cwd=cwd,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
        env={**os.environ, "PYTHONUNBUFFERED": "1"})
    out, _ = await asyncio.wait_for(proc.communicate(), 120)
    return proc.returncode or 0, out.decode()


def three_free_ports() -> list[str]:
    """Three different free ports (held together while the kernel picks, so none repeats)."""
    socks = [socket.socket() for _ in range(3)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [str(s.getsockname()[1]) for s in socks]
    finally:
        for s in socks:
            s.close()


async def test_a_taken_port_is_one_line_naming_the_option(tmp_path):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        code, out = await demo("--http-port", str(port), "--call", "hangup", cwd=tmp_path)
    assert code == 2
    assert out.strip() == (f"demo: port 127.0.0.1:{port} for the gateway is in use; choose "
                           "another with --http-port PORT")
    assert "Traceback" not in out


def test_a_taken_default_port_falls_back_to_a_free_one_and_says_so():
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        taken = busy.getsockname()[1]
        notes: list[str] = []
        port = choose_port("the WhatsApp simulator", "--sim-port", None, taken, notes)
        assert port != taken and port_is_free(port)
        assert notes == [f"port {taken} for the WhatsApp simulator is in use (another demo?), "
                         f"using {port} instead (--sim-port PORT to choose)"]
        with pytest.raises(DemoError, match=f"{taken}.*--sim-port PORT"):
            choose_port("the WhatsApp simulator", "--sim-port", taken, 8090, [])


async def test_call_mode_prints_the_call_in_order_and_exits_with_its_result(tmp_path):
    ports = three_free_ports()
    code, out = await demo("--ami-port", ports[0], "--http-port", ports[1], "--sim-port",
                           ports[2], "--log-level", "warning", "--call",
                           "wait-answer; wait-audio; wait 4; hangup", cwd=tmp_path)
    assert code == 0, out
    assert "another terminal" not in out
    assert "result: PASS" in out.splitlines()
    times = [float(m.group(1)) for m in re.finditer(r"^\[phone \+\d+\] \+(\d+\.\d+) ", out,
                                                     re.M)]
    assert len(times) > 5 and times == sorted(times), out
    assert 'heard prompt "vm-enter-num-to-call"' in out
    assert "prompts    hello, vm-enter-num-to-call" in out
    code, out = await demo("--ami-port", ports[0], "--http-port", ports[1], "--sim-port",
                           ports[2], "--log-level", "warning", "--call",
                           "wait-answer; expect-hangup 1", cwd=tmp_path)
    assert code == 1 and "result: FAIL" in out, out
