"""``check-config --asterisk`` and the dialplan checks, against the real Asterisk: missing
routes, the PSTN guard (asterisk-overlay [test-guard-*]), /readyz "degraded" with its metric,
and that the check hangs up none of a running gateway's calls."""

from __future__ import annotations

import asyncio
import os
import sys

import aiohttp
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from gateway.app import Gateway
from gateway.sandbox.local_asterisk import LocalAsterisk
from gateway.simulator.cloud_api import CloudApiSimulator

from .conftest import ACCESS_TOKEN, APP_SECRET, Stack, make_config

pytestmark = pytest.mark.asterisk


def write_config(tmp_path, ami_port: int, contexts: list[str],
                 secret: str = "gateway-secret") -> str:
    config = {
        "whatsapp": {"graph_url": "http://127.0.0.1:9/v23.0", "access_token": "${WA_TOKEN}",
                     "app_secret": "${WA_SECRET}", "verify_token": "v"},
        "numbers": [{"phone_number_id": f"10000000000009{i}", "context": ctx}
                    for i, ctx in enumerate(contexts)],
        "asterisk": {"ami": {"port": ami_port, "username": "gateway", "secret": secret}},
        "store": {"path": str(tmp_path / "gateway.sqlite3")},
    }
    path = tmp_path / "gateway.yaml"
    path.write_text(yaml.safe_dump(config))
    return str(path)


async def whatsapp_gateway(*args: str, env: dict[str, str] | None = None) -> tuple[int, str]:
    """The real command line, as its own process: (exit code, stdout + stderr)."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "gateway", *args, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        env={**os.environ, "WA_TOKEN": "t", "WA_SECRET": "s", **(env or {})})
    out, _ = await asyncio.wait_for(proc.communicate(), 60)
    return proc.returncode or 0, out.decode()


async def test_missing_route_fails_and_the_pstn_guard_follows_goto_gosub_and_include(
        asterisk: LocalAsterisk, tmp_path):
    path = write_config(tmp_path, asterisk.ami_port,
                        ["test-guard-entry", "test-guard-safe", "from-whatsap"])
    code, out = await whatsapp_gateway("check-config", "-c", path, "--asterisk")
    assert code == 1, out
    assert ("error: numbers[2].context: extension 's' in context 'from-whatsap' does not "
            "exist in Asterisk's dialplan") in out
    warnings = [line for line in out.splitlines() if "warning: PSTN" in line]
    assert len(warnings) == 2, out
    gosub, = [w for w in warnings if "pstn-trunk" in w]
    assert ("test-guard-entry -> (gotoif) test-guard-menu -> (gosub) test-guard-sub: "
            "Dial(PJSIP/${EXTEN}@pstn-trunk) at test-guard-sub,s,1") in gosub
    dahdi, = [w for w in warnings if "DAHDI" in w]
    assert "test-guard-entry -> (include) test-guard-included: Dial(DAHDI/g1/" in dahdi
    assert "Meta forbids" in dahdi
    assert "test-guard-safe" not in out.split("warning", 1)[1]  # only phones and Local there


async def test_a_clean_dialplan_passes(asterisk: LocalAsterisk, tmp_path):
    path = write_config(tmp_path, asterisk.ami_port, ["from-whatsapp", "test-guard-safe"])
    code, out = await whatsapp_gateway("check-config", "-c", path, "--asterisk")
    assert code == 0, out
    assert "every configured context/extension exists; no WhatsApp context reaches a trunk" \
        in out


async def test_check_config_hangs_up_no_live_call_of_a_running_gateway(stack: Stack,
                                                                        tmp_path):
    call = await stack.place_call("test-wait")
    await asyncio.wait_for(call.accepted.wait(), 10)
    (channel,) = await stack.channels()
    path = write_config(tmp_path, stack.asterisk.ami_port, ["test-wait"])
    code, out = await whatsapp_gateway("check-config", "-c", path, "--asterisk")
    assert code == 0, out
    # The sweep runs before connect() returns, so had it run the channel would be gone now.
    assert [c["Uniqueid"] for c in await stack.channels()] == [channel["Uniqueid"]]
    assert not call.ended.is_set() and call.call_id in stack.gateway.calls.calls
    await call.hangup()
    await stack.wait_idle()


async def test_calls_list_needs_no_secrets(asterisk: LocalAsterisk, tmp_path):
    path = write_config(tmp_path, asterisk.ami_port, ["test-wait"])
    env = {k: v for k, v in os.environ.items() if k not in ("WA_TOKEN", "WA_SECRET")}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "gateway", "calls", "list", "-c", path,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT, env=env)
    out, _ = await proc.communicate()
    assert proc.returncode == 0, out.decode()
    assert "wacid / channel" in out.decode()
    code, out_serve = await whatsapp_gateway("check-config", "-c", path, env={"WA_TOKEN": ""})
    assert code == 2 and "whatsapp.access_token" in out_serve  # the others still check them


async def test_readyz_is_degraded_with_a_metric_while_a_context_is_missing(
        asterisk: LocalAsterisk, tmp_path):
    sim = CloudApiSimulator(app_secret=APP_SECRET, access_token=ACCESS_TOKEN)
    await sim.start()
    cfg = make_config(sim.url, asterisk.ami_port, store={"path": str(tmp_path / "g.sqlite3")},
                      numbers=[{"phone_number_id": "100000000000011", "context": "nowhere"},
                               {"phone_number_id": "100000000000002", "context": "test-echo"}])
    gw = Gateway(cfg)
    await gw.start()
    try:
        assert await gw.calls.settle(10)  # the dialplan check runs on connect
        async with aiohttp.ClientSession() as session:
            async with session.get(f"{gw.url}/readyz") as resp:
                status, body = resp.status, await resp.json()
            async with session.get(f"{gw.url}/metrics") as resp:
                metrics = await resp.text()
        assert status == 200 and body["status"] == "degraded", body
        assert body["warnings"] == ["numbers[0].context: extension 's' in context 'nowhere' "
                                    "does not exist in Asterisk's dialplan"]
        (value,) = [s.value for fam in text_string_to_metric_families(metrics)
                    for s in fam.samples if s.name == "whatsapp_gateway_dialplan_problems"]
        assert value == 1

        # The admin adds the context and reloads: the gateway notices (AMI Reload event).
        local = asterisk.instance_dir / "etc" / "extensions_local.conf"
        original = local.read_text()
        local.write_text(original + "\n[nowhere]\nexten => s,1,Answer()\n")
        reloaded = asyncio.Event()
        gw.ami.add_event_listener("Reload", lambda ev: reloaded.set())
        try:
            await asterisk.cli("module reload pbx_config")
            await asyncio.wait_for(reloaded.wait(), 10)
            assert await gw.calls.settle(10)  # the check the Reload event started
            assert gw.dialplan_problems == []
            async with aiohttp.ClientSession() as session:
                async with session.get(f"{gw.url}/readyz") as resp:
                    assert (await resp.json())["status"] == "ready"
                async with session.get(f"{gw.url}/metrics") as resp:
                    metrics = await resp.text()
            (value,) = [s.value for fam in text_string_to_metric_families(metrics)
                        for s in fam.samples if s.name == "whatsapp_gateway_dialplan_problems"]
            assert value == 0
        finally:
            local.write_text(original)
            await asterisk.cli("module reload pbx_config")
    finally:
        await gw.stop()
        await sim.close()


async def test_a_refused_login_or_no_asterisk_is_one_clear_line(asterisk: LocalAsterisk,
                                                                tmp_path):
    path = write_config(tmp_path, asterisk.ami_port, ["test-wait"], secret="wrong-secret")
    code, out = await whatsapp_gateway("check-config", "-c", path, "--asterisk")
    assert code == 1 and "cannot check the dialplan: AMI" in out and "refused login" in out, out
    assert "Traceback" not in out
