"""Faults from issue 8, against the real Asterisk and the simulator: a killed gateway, Meta
failing terminate/reject, simultaneous calls racing for RTP ports, Meta's answer never coming,
and a hang-up while the Asterisk channel is being created."""

from __future__ import annotations

import asyncio
import logging
import signal

import pytest

from gateway.app import Gateway
from gateway.calls import outbound as outbound_module
from gateway.calls.outbound import DialRequest, DialStatus
from gateway.calls.record import Outcome
from gateway.config import parse_config
from gateway.sandbox.local_asterisk import LocalAsterisk
from gateway.store import CallStore
from tests.ports import free_tcp_port, udp_range

from .conftest import (
    Stack,
    make_config,
    number_for,
    start_simulator,
)
from .test_operations import process_config, rtp_channel_prefix, start_gateway_process

pytestmark = pytest.mark.asterisk

USER = "15550007777"


async def our_channels(gw: Gateway) -> list[dict]:
    return [c for c in await gw.ami.core_show_channels()
            if c.get("Uniqueid", "").startswith("wa-")]


# --- finding 1: SIGKILL mid-call ---------------------------------------------------------------

async def test_gateway_killed_mid_call_terminates_every_live_call_on_restart(
        asterisk: LocalAsterisk, tmp_path):
    sim = await start_simulator()
    http_port = free_tcp_port()
    config, path = process_config(sim, asterisk, tmp_path, http_port, udp_range(600, 100))
    proc = await start_gateway_process(path)
    calls = []
    gw = None
    try:
        sim.webhook_url = f"http://127.0.0.1:{http_port}/webhook"
        pnid, display = number_for("test-wait")
        for caller in ("15550004441", "15550004442"):
            call = await sim.place_call(from_wa_id=caller, phone_number_id=pnid,
                                        display_phone_number=display)
            calls.append(call)
        for call in calls:
            await asyncio.wait_for(call.accepted.wait(), 15)
        proc.send_signal(signal.SIGKILL)
        await proc.wait()
        assert not any(call.ended.is_set() for call in calls)  # Meta still has them up

        gw = Gateway(parse_config(config, env={}))
        await gw.start()
        for call in calls:
            await asyncio.wait_for(call.ended.wait(), 20)
            assert call.ended_by == "business"
            assert [r.status for r in sim.requests_for(call.call_id, "terminate")] == [200]
        await gw.calls.settle(20)
        for call in calls:
            record = await gw.store.get(call.call_id)
            assert record.outcome == Outcome.FAILED and record.end_reason == "shutdown"
            assert "ended with terminate on restart" in record.reason
        assert rtp_channel_prefix(config) not in await asterisk.cli("core show channels concise")
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        if gw is not None:
            await gw.stop()
        for call in calls:
            await call.phone.hangup()
        await sim.close()
    store = await CallStore.open(config["store"]["path"])
    try:
        assert await store.list(outcome=Outcome.ACTIVE) == []
    finally:
        await store.close()


# --- finding 2: Graph 500 / 429 on terminate and reject ------------------------------------------

async def test_terminate_is_retried_through_500_and_429(stack: Stack):
    stack.sim.fail_next("terminate", 500)
    stack.sim.fail_next("terminate", 429, retry_after=1)
    call = await stack.place_call("test-hangup")  # Asterisk answers, then hangs up (21)
    await asyncio.wait_for(call.ended.wait(), 30)
    assert call.ended_by == "business"
    assert [r.status for r in stack.sim.requests_for(call.call_id, "terminate")] == \
        [500, 429, 200]
    await stack.wait_idle()
    record = await stack.gateway.store.get(call.call_id)
    assert record.outcome == Outcome.ANSWERED and record.hangup_side == "asterisk"
    assert "failed" not in record.reason


async def test_reject_is_retried_and_a_final_failure_is_recorded(stack: Stack):
    stack.sim.fail_next("reject", 503, count=2)
    call = await stack.sim.place_call(from_wa_id="15550003333", phone_number_id="123456789",
                                      display_phone_number="15559990000")  # unknown number
    await asyncio.wait_for(call.ended.wait(), 30)
    assert [r.status for r in stack.sim.requests_for(call.call_id, "reject")] == [503, 503, 200]

    stack.sim.fail_next("reject", 500, count=10)  # Meta never recovers
    call = await stack.sim.place_call(from_wa_id="15550003334", phone_number_id="123456789",
                                      display_phone_number="15559990000")
    await stack.gateway.calls.settle(30)
    assert [r.status for r in stack.sim.requests_for(call.call_id, "reject")] == [500] * 5
    record = await stack.gateway.store.get(call.call_id)
    assert record.outcome == Outcome.REJECTED and "reject failed" in record.reason
    await call.phone.hangup()


# --- finding 5: RTP ports reserved at admission --------------------------------------------------

async def test_three_simultaneous_calls_with_two_ports_one_clean_capacity_reject(
        asterisk: LocalAsterisk, tmp_path, caplog):
    sim = await start_simulator()
    gw = Gateway(make_config(sim.url, asterisk.ami_port,
                             media={"rtp_ports": udp_range(700, 2)},
                             store={"path": str(tmp_path / "g.sqlite3")}))
    await gw.start()
    sim.webhook_url = f"{gw.url}/webhook"
    pnid, display = number_for("test-wait")
    calls = []
    try:
        with caplog.at_level(logging.ERROR):
            calls = await asyncio.gather(*(
                sim.place_call(from_wa_id=f"1555000555{n}", phone_number_id=pnid,
                               display_phone_number=display) for n in range(3)))
            # Admission is asynchronous (the store is asked first whether the call id is a
            # replay): wait until each call is pre-accepted or ended.
            for call in calls:
                waits = [asyncio.ensure_future(call.pre_accepted.wait()),
                         asyncio.ensure_future(call.ended.wait())]
                await asyncio.wait(waits, timeout=15, return_when=asyncio.FIRST_COMPLETED)
                for w in waits:
                    w.cancel()
            rejected = [c for c in calls if not c.pre_accepted.is_set()]
            assert len(rejected) == 1
            await asyncio.wait_for(rejected[0].ended.wait(), 15)
            for call in calls:
                if call is not rejected[0]:
                    await asyncio.wait_for(call.accepted.wait(), 15)
        assert not [r for r in caplog.records if "unexpected error" in r.getMessage()]
        assert [r.status for r in sim.requests_for(rejected[0].call_id, "reject")] == [200]
        await gw.calls.settle(5)
        record = await gw.store.get(rejected[0].call_id)
        assert (record.outcome, record.end_reason) == (Outcome.REJECTED, "capacity")
        assert len(await our_channels(gw)) == 2
    finally:
        for call in calls:
            await call.phone.hangup()
        await gw.stop()
        await sim.close()


# --- finding 4: Meta's answer never comes ---------------------------------------------------------

async def test_answer_timeout_is_failed_and_not_charged_to_the_user(stack: Stack, monkeypatch):
    monkeypatch.setattr(outbound_module, "ANSWER_SDP_TIMEOUT_S", 1.0)
    # Meta's connect webhook does not come in time.
    stack.sim.timings.connect_webhook_delay_s = 10.0
    stack.sim.add_user(USER, permission="temporary", on_call="answer")
    pnid, _ = number_for("test-echo")
    call = stack.gateway.calls.dial(DialRequest(to=USER, phone_number_id=pnid,
                                                context="test-echo"))
    await stack.gateway.calls.settle(15)
    assert call.status == DialStatus.FAILED
    record = await stack.gateway.store.get(call.record.wacid)
    assert (record.outcome, record.end_reason) == (Outcome.FAILED, "answer_timeout")
    assert len(stack.sim.requests_for(record.wacid, "terminate")) == 1
    state = await stack.gateway.ledger.get(pnid, USER)
    assert state["unanswered_streak"] == 0


# --- finding 6: a hang-up while the channel is being made -----------------------------------------

def hang_up_during(stack: Stack, step: str, hang_up) -> None:
    """When the gateway sends ``step`` (originate or the first getvar) to the real Asterisk,
    the WhatsApp user hangs up at once, while the AMI action is in flight."""
    ami = stack.gateway.ami
    name = "originate_unicast" if step == "originate" else "getvar"
    real = getattr(ami, name)
    fired = False

    async def then_hang_up(*args, **kwargs):
        nonlocal fired
        action = asyncio.ensure_future(real(*args, **kwargs))
        if not fired:
            fired = True
            # Meta's terminate reaches the gateway before Asterisk answers. Shielded: the
            # gateway abandons this await when the call ends, the user's hang-up goes on.
            await asyncio.shield(asyncio.ensure_future(hang_up()))
        return await action

    setattr(ami, name, then_hang_up)


@pytest.mark.parametrize("step", ["originate", "getvar"])
async def test_inbound_hang_up_while_the_channel_is_made_leaves_no_channel(stack: Stack, step):
    holder: dict = {}
    hang_up_during(stack, step, lambda: holder["call"].hangup())
    holder["call"] = call = await stack.place_call("test-echo")
    await asyncio.wait_for(call.ended.wait(), 15)
    await stack.wait_idle()  # no UnicastRTP channel left in test-echo
    assert stack.sim.requests_for(call.call_id, "terminate") == []  # Meta ended it itself
    record = await stack.gateway.store.get(call.call_id)
    assert record.hangup_side == "whatsapp" and record.outcome != Outcome.ACTIVE


@pytest.mark.parametrize("step", ["originate", "getvar"])
async def test_outbound_hang_up_while_the_channel_is_made_leaves_no_channel(stack: Stack, step):
    """The race behind the flaky test_permission_request_reply_then_call, made certain."""
    stack.sim.add_user(USER, permission="temporary", on_call="answer", answer_after_s=0.2)

    async def user_hangs_up():
        (sim_call,) = [c for c in stack.sim.outbound_calls if not c.ended.is_set()]
        await sim_call.hangup()

    hang_up_during(stack, step, user_hangs_up)
    pnid, _ = number_for("test-echo")
    call = stack.gateway.calls.dial(DialRequest(to=USER, phone_number_id=pnid,
                                                context="test-echo"))
    await stack.wait_idle()
    assert call.status == DialStatus.ANSWER
    assert stack.sim.requests_for(call.record.wacid, "terminate") == []
