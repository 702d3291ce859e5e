"""``serve --workers 2`` against the real Asterisk and the simulator: calls spread over the
workers, every event of a call reaches the worker that owns it, a killed worker is started
again and only its own call is ended, and /metrics counts both workers' calls."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import pytest
import yaml

from gateway.asterisk.ami import AmiClient
from gateway.config import parse_config
from gateway.sandbox.local_asterisk import LocalAsterisk
from gateway.simulator.cloud_api import CloudApiSimulator
from gateway.workers.identity import owner_of
from gateway.workers.routing import user_worker
from tests.ports import free_tcp_port, udp_range

from .conftest import API_TOKEN, NUMBERS, number_for, start_simulator
from .test_operations import process_config, value

pytestmark = pytest.mark.asterisk


@dataclass
class Workers:
    """A ``serve --workers 2`` process, the simulator it talks to, and an AMI client of the
    test's own (it sweeps nothing)."""

    proc: asyncio.subprocess.Process
    sim: CloudApiSimulator
    ami: AmiClient
    url: str
    output: list[str] = field(default_factory=list)
    config: dict = field(default_factory=dict)
    config_path: str = ""

    async def channels(self) -> dict[str, dict]:
        """Our UnicastRTP channels in Asterisk, by Uniqueid."""
        return {c["Uniqueid"]: c for c in await self.ami.core_show_channels()
                if c.get("Uniqueid", "").startswith("wa-")}

    async def until_channels(self, predicate, timeout: float = 15.0) -> dict[str, dict]:
        """Asterisk adds and removes channels asynchronously: poll its own listing."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            channels = await self.channels()
            if predicate(channels):
                return channels
            if loop.time() > deadline:
                raise AssertionError(f"channels never matched: {list(channels)}")
            await asyncio.sleep(0.05)

    async def until_output(self, text: str, count: int = 1, timeout: float = 15.0) -> None:
        """Until ``count`` lines of the processes' log hold ``text``."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while sum(text in line for line in self.output) < count:
            if loop.time() > deadline or self.proc.returncode is not None:
                raise AssertionError(f"never logged {text!r}:\n" + "\n".join(self.output))
            await asyncio.sleep(0.05)

    async def get(self, path: str, token: str = API_TOKEN) -> tuple[int, dict | str]:
        headers = {"Authorization": f"Bearer {token}"}
        async with aiohttp.ClientSession(headers=headers) as http:
            async with http.get(f"{self.url}{path}") as resp:
                if resp.content_type == "application/json":
                    return resp.status, await resp.json()
                return resp.status, await resp.text()

    async def final_record(self, call_id: str, timeout: float = 10.0) -> dict:
        """The call's record once it is closed: a worker saves it a moment after the call
        ends (write-behind), and only the store can say when, so it is asked again."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            status, record = await self.get(f"/v1/calls/{call_id}")
            if status == 200 and record.get("outcome") not in (None, "active"):
                return record
            if loop.time() > deadline:
                raise AssertionError(f"record of {call_id} never closed: {status} {record}")
            await asyncio.sleep(0.05)

    async def workers(self) -> list[dict]:
        _status, body = await self.get("/readyz")
        return body["info"]["workers"]


@pytest.fixture
async def workers(asterisk: LocalAsterisk, tmp_path) -> AsyncIterator[Workers]:
    sim = await start_simulator()
    http_port = free_tcp_port()
    config, path = process_config(sim, asterisk, tmp_path, http_port, udp_range(800, 100),
                                  api={"tokens": [API_TOKEN]},
                                  numbers=[{"phone_number_id": pnid, "display_number": display,
                                            "context": ctx,
                                            "max_calls": 1 if ctx == "test-marker" else 10}
                                           for pnid, (display, ctx) in NUMBERS.items()])
    # Everything that can fail is made before the process, which the finally below must stop.
    ami = AmiClient(parse_config(config, env={}).asterisk.ami)  # no sweep: it owns no call
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "gateway", "serve", "--config", path, "--workers", "2",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
        env={**os.environ, "PYTHONUNBUFFERED": "1"})
    output: list[str] = []
    listening = asyncio.get_running_loop().create_future()

    async def read_output() -> None:  # all of it, so the pipe never fills
        while line := await proc.stdout.readline():
            output.append(line.decode(errors="replace").rstrip())
            if b"gateway listening" in line and not listening.done():
                listening.set_result(None)
        if not listening.done():
            listening.set_exception(AssertionError("gateway exited:\n" + "\n".join(output)))

    reader = asyncio.ensure_future(read_output())
    try:
        await asyncio.wait_for(listening, 60)
        await ami.connect()
        sim.webhook_url = f"http://127.0.0.1:{http_port}/webhook"
        yield Workers(proc, sim, ami, f"http://127.0.0.1:{http_port}", output, config, path)
    finally:
        if proc.returncode is None:
            proc.send_signal(signal.SIGTERM)
            proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(proc.wait(), 30)
            except TimeoutError:
                proc.kill()
                await proc.wait()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(reader, 5)
        print("the gateway processes logged:\n" + "\n".join(output))  # shown on failure
        await ami.close()
        await sim.close()


async def echoes(call) -> bool:
    start = call.transcript.now()
    await call.phone.say_tone(700, 1.5)
    heard = call.phone.heard(since=start + 0.5, until=call.transcript.now())
    return heard.kind == "tone" and abs(heard.frequency - 700) < 25


async def two_calls(w: Workers, context: str) -> list:
    pnid, display = number_for(context)
    calls = [await w.sim.place_call(from_wa_id=caller, phone_number_id=pnid,
                                    display_phone_number=display)
             for caller in ("15550004441", "15550004442")]
    for call in calls:
        await asyncio.wait_for(call.accepted.wait(), 20)
        await asyncio.wait_for(call.media_connected.wait(), 20)
    return calls


async def test_two_calls_land_on_two_workers_echo_and_end_by_their_own_terminate(
        workers: Workers):
    w = workers
    calls = await two_calls(w, "test-echo")
    channels = await w.until_channels(lambda cs: len(cs) == 2)
    assert sorted(owner_of(uid) for uid in channels) == [0, 1]  # one call per worker
    for call in calls:
        assert await echoes(call)
    _status, text = await w.get("/metrics")
    assert value(text, "whatsapp_gateway_active_calls") == 2  # both workers' gauges summed

    for call in calls:  # the user hangs up: Meta's terminate must reach the owner
        await call.hangup()
    await w.until_channels(lambda cs: not cs)
    pnid, _ = number_for("test-echo")
    for call in calls:
        record = await w.final_record(call.call_id)
        assert record["outcome"] == "answered" and record["hangup_side"] == "whatsapp", record
    status, listed = await w.get("/v1/calls?since=1h")  # one store, both workers' records
    assert status == 200 and {r["wacid"] for r in listed["calls"]} == {c.call_id for c in calls}
    _status, text = await w.get("/metrics")
    assert value(text, "whatsapp_gateway_calls_total", phone_number_id=pnid,
                 outcome="answered", hangup_side="whatsapp") == 2
    assert value(text, "whatsapp_gateway_active_calls") == 0
    assert value(text, "whatsapp_gateway_webhook_requests_total", result="ok") >= 4
    assert value(text, "whatsapp_gateway_ami_connected") == 1
    for family in ("calls_total", "webhook_requests_total"):  # one family, not one a process
        assert text.count(f"# TYPE whatsapp_gateway_{family} counter") == 1, family
    assert value(text, "whatsapp_gateway_build_info") == 1 and "_created" not in text
    assert value(text, "whatsapp_gateway_rtp_ports_capacity") == 100  # two slices of 50
    if shutil.which("promtool"):  # the combined exposition is as clean as one process's
        proc = await asyncio.create_subprocess_exec(
            "promtool", "check", "metrics", stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
        out, _ = await asyncio.wait_for(proc.communicate(text.encode()), 30)
        assert proc.returncode == 0 and out.decode().strip() == "", out.decode()


async def test_killed_worker_is_restarted_and_only_its_call_is_ended(workers: Workers):
    w = workers
    calls = await two_calls(w, "test-wait")
    channels = await w.until_channels(lambda cs: len(cs) == 2)
    by_worker = {owner_of(uid): uid for uid in channels}
    before = {info["index"]: info for info in await w.workers()}
    os.kill(before[0]["pid"], signal.SIGKILL)

    # Worker 0's call is ended at Meta (terminate) and in Asterisk; worker 1's goes on.
    done, _ = await asyncio.wait(
        [asyncio.ensure_future(c.ended.wait()) for c in calls], timeout=30,
        return_when=asyncio.FIRST_COMPLETED)
    assert len(done) == 1
    victim = next(c for c in calls if c.ended.is_set())
    survivor = next(c for c in calls if c is not victim)
    assert victim.ended_by == "business"
    assert [r.status for r in w.sim.requests_for(victim.call_id, "terminate")] == [200]
    left = await w.until_channels(lambda cs: by_worker[0] not in cs)
    assert by_worker[1] in left and not survivor.ended.is_set()
    after = {info["index"]: info for info in await w.workers()}
    assert after[0]["restarts"] == 1 and after[0]["pid"] != before[0]["pid"]
    assert after[1]["pid"] == before[1]["pid"] and after[1]["restarts"] == 0
    record = await w.final_record(victim.call_id)
    assert record["outcome"] == "failed" and "on restart" in record["reason"], record

    await survivor.hangup()  # the untouched call still ends normally, through worker 1
    await w.until_channels(lambda cs: not cs)
    record = await w.final_record(survivor.call_id)
    assert record["hangup_side"] == "whatsapp" and record["outcome"] == "answered", record


async def test_api_calls_go_to_the_users_worker_and_delete_ends_the_right_one(
        workers: Workers):
    w = workers
    users = {}
    for n in range(100):  # one user each worker decides for
        user = f"1555000{n:04d}"
        users.setdefault(user_worker(user, 2), user)
        if len(users) == 2:
            break
    pnid, _ = number_for("test-echo")
    ids = {}
    headers = {"Authorization": f"Bearer {API_TOKEN}"}
    async with aiohttp.ClientSession(headers=headers) as http:
        for index, user in users.items():
            w.sim.add_user(user, permission="temporary", on_call="answer", answer_after_s=0.3)
            body = {"to": f"+{user}", "phone_number_id": pnid, "context": "test-echo"}
            async with http.post(f"{w.url}/v1/calls", json=body) as resp:
                assert resp.status == 201, await resp.text()
                ids[index] = (await resp.json())["id"]
            assert owner_of(ids[index]) == index
        calls = {i: await w.sim.wait_outbound_call(to=users[i], timeout=15) for i in users}
        for call in calls.values():
            await asyncio.wait_for(call.accepted.wait(), 15)
        await w.until_channels(lambda cs: set(ids.values()) <= set(cs))
        async with http.delete(f"{w.url}/v1/calls/{ids[1]}") as resp:
            assert resp.status == 200, await resp.text()
            assert (await resp.json())["state"] == "ended"
        await asyncio.wait_for(calls[1].ended.wait(), 15)
        left = await w.until_channels(lambda cs: ids[1] not in cs)
        assert ids[0] in left and not calls[0].ended.is_set()
        async with http.get(f"{w.url}/v1/calls/{ids[0]}") as resp:
            assert (await resp.json())["state"] == "answered"
        async with http.delete(f"{w.url}/v1/calls/{ids[0]}") as resp:
            assert resp.status == 200
    await w.until_channels(lambda cs: not cs)


async def test_an_agents_dial_makes_exactly_one_call(workers: Workers):
    """Both workers see the dialplan's UserEvent(WhatsAppDial); only the user's worker dials."""
    w = workers
    user = "15550007777"
    w.sim.add_user(user, permission="temporary", on_call="answer", answer_after_s=0.3)
    agent = asyncio.ensure_future(w.ami.originate(f"Local/+{user}@to-whatsapp",
                                                  context="test-agent", exten="s",
                                                  timeout_s=30))
    call = await w.sim.wait_outbound_call(to=user, timeout=15)
    await asyncio.wait_for(call.accepted.wait(), 15)
    channels = await w.until_channels(lambda cs: len(cs) == 1)
    assert [owner_of(uid) for uid in channels] == [user_worker(user, 2)]
    await call.hangup()
    await asyncio.wait_for(agent, 15)
    await w.until_channels(lambda cs: not cs)
    connects = w.sim.requests_for(action="connect")
    assert len(connects) == 1, connects


async def test_max_calls_is_the_numbers_cap_not_each_workers(workers: Workers):
    """test-marker's number allows 1 call: the second goes to the other (idle) worker, which
    refuses it, counting the first worker's call."""
    w = workers
    pnid, display = number_for("test-marker")
    first = await w.sim.place_call(from_wa_id="15550004441", phone_number_id=pnid,
                                   display_phone_number=display)
    await asyncio.wait_for(first.accepted.wait(), 20)
    second = await w.sim.place_call(from_wa_id="15550004442", phone_number_id=pnid,
                                    display_phone_number=display)
    await asyncio.wait_for(second.ended.wait(), 20)
    assert [r.status for r in w.sim.requests_for(second.call_id, "reject")] == [200]
    record = await w.final_record(second.call_id)
    assert record["end_reason"] == "capacity", record
    assert any(line.split()[2].startswith("w1/") and "reject" in line
               and second.call_id in line for line in w.output), w.output  # by worker 1
    (channel,) = await w.until_channels(lambda cs: len(cs) == 1)
    assert owner_of(channel) == 0 and not first.ended.is_set()
    await first.hangup()
    await w.until_channels(lambda cs: not cs)


async def test_sigterm_drains_every_worker_and_sighup_reloads_them(workers: Workers):
    w = workers
    w.config["api"] = {"tokens": ["rotated-token"]}
    await asyncio.to_thread(Path(w.config_path).write_text, yaml.safe_dump(w.config))
    w.proc.send_signal(signal.SIGHUP)
    await w.until_output("config reloaded from", count=2)  # each worker
    status, _body = await w.get("/v1/calls", token="rotated-token")
    assert status == 200  # the supervisor's check and the worker's both took the new token
    status, _body = await w.get("/v1/calls")
    assert status == 401

    pnid, display = number_for("test-wait")
    live = await w.sim.place_call(from_wa_id="15550004441", phone_number_id=pnid,
                                  display_phone_number=display)
    await asyncio.wait_for(live.accepted.wait(), 20)
    w.proc.send_signal(signal.SIGTERM)
    await w.until_output("draining: no new calls", count=2)
    status, body = await w.get("/readyz")
    assert status == 503 and any("draining" in r for r in body["reasons"]), body
    late = await w.sim.place_call(from_wa_id="15550004442", phone_number_id=pnid,
                                  display_phone_number=display)
    await asyncio.wait_for(late.ended.wait(), 20)  # refused while draining, by either worker
    assert [r.status for r in w.sim.requests_for(late.call_id, "reject")] == [200]
    assert not live.ended.is_set() and w.proc.returncode is None
    await live.hangup()  # the last call ends: every worker, then the supervisor, exits
    assert await asyncio.wait_for(w.proc.wait(), 30) == 0
    assert not await w.channels()


def alive(pid: int) -> bool:
    """Running (a zombie waiting for its new parent to reap it counts as gone)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


async def test_workers_end_their_calls_when_the_supervisor_is_killed(workers: Workers):
    """No worker outlives its supervisor: nothing could reach its calls any more."""
    w = workers
    pnid, display = number_for("test-wait")
    call = await w.sim.place_call(from_wa_id="15550004441", phone_number_id=pnid,
                                  display_phone_number=display)
    await asyncio.wait_for(call.accepted.wait(), 20)
    pids = [info["pid"] for info in await w.workers()]
    w.proc.send_signal(signal.SIGKILL)
    await w.proc.wait()
    await asyncio.wait_for(call.ended.wait(), 20)
    assert call.ended_by == "business"
    await w.until_channels(lambda cs: not cs)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 20
    while any(alive(pid) for pid in pids):  # not our children: nothing to wait on but /proc
        assert loop.time() < deadline, [pid for pid in pids if alive(pid)]
        await asyncio.sleep(0.05)
