"""Asterisk's own CDR (cdr_csv, asterisk-conf/cdr.conf) for WhatsApp calls, read from the test
Asterisk's log directory and joined to the gateway's call record by Meta's call id."""

from __future__ import annotations

import asyncio
import csv
import re
from pathlib import Path

import aiohttp
import pytest

from gateway.sandbox.local_asterisk import LocalAsterisk
from tests.waits import transcript_says

from .conftest import API_TOKEN, MakeStack, Stack, numbers_config

pytestmark = pytest.mark.asterisk

COLUMNS = ("accountcode", "src", "dst", "dcontext", "clid", "channel", "dstchannel", "lastapp",
           "lastdata", "start", "answer", "end", "duration", "billsec", "disposition",
           "amaflags", "uniqueid", "userfield", "peeraccount", "linkedid", "sequence")
"""Master.csv's columns with loguniqueid, loguserfield and newcdrcolumns (cdr.conf)."""

USER = "15550008888"
AGENT = f"Local/+{USER}@to-whatsapp"


def master_csv(asterisk: LocalAsterisk) -> Path:
    return asterisk.instance_dir / "log" / "cdr-csv" / "Master.csv"


def cdr_rows(asterisk: LocalAsterisk) -> list[dict[str, str]]:
    try:
        text = master_csv(asterisk).read_text()
    except FileNotFoundError:
        return []
    rows = []
    for values in csv.reader(text.splitlines()):
        assert len(values) == len(COLUMNS), values
        rows.append(dict(zip(COLUMNS, values, strict=True)))
    return rows


async def rows_of_call(asterisk: LocalAsterisk, linkedid_of: str, timeout: float = 10.0,
                       ) -> list[dict[str, str]]:
    """Every CDR row of the call whose WhatsApp call id is ``linkedid_of``'s userfield, once
    Asterisk has written them: cdr_csv appends when the last channel of the call is gone."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        rows = cdr_rows(asterisk)
        tagged = [r for r in rows if r["userfield"] == linkedid_of]
        if tagged:
            linked = {r["linkedid"] for r in tagged}
            return [r for r in rows if r["linkedid"] in linked]
        if loop.time() > deadline:
            raise AssertionError(f"no CDR row with userfield {linkedid_of} in "
                                 f"{master_csv(asterisk)}: {rows[-5:]}")
        await asyncio.sleep(0.1)  # polling a file Asterisk appends to: there is no event


async def phone_got_dtmf(call, digit: str, timeout: float = 15.0) -> None:
    await transcript_says(call.transcript, f"phone got DTMF {re.escape(digit)}", timeout=timeout)


async def stack_with_accountcode(make_stack: MakeStack, number: str, code: str) -> Stack:
    """A stack whose number (by context or phone_number_id) has this accountcode."""
    return await make_stack(numbers=numbers_config({number: {"accountcode": code}}))


async def gateway_record(stack: Stack, wacid: str):
    assert stack.gateway.store is not None
    record = await stack.gateway.store.get(wacid)
    assert record is not None, f"no gateway record for {wacid}"
    return record


async def test_inbound_cdr_row_carries_the_call_id_caller_route_and_accountcode(
        make_stack: MakeStack):
    stack = await stack_with_accountcode(make_stack, "test-marker", "wa-sales")
    call = await stack.place_call("test-marker", from_wa_id="5511999990001",
                                  profile_name="Ana")
    await stack.wait_event(lambda ev: ev.get("UserEvent") == "TestMarker")
    await asyncio.wait_for(call.accepted.wait(), 10)
    await call.hangup()
    await stack.wait_idle()

    (row,) = await rows_of_call(stack.asterisk, call.call_id)
    record = await gateway_record(stack, row["userfield"])  # the join
    assert record.channel_id == row["uniqueid"] == row["linkedid"]
    assert row["src"] == f"+{record.from_number.lstrip('+')}" == "+5511999990001"
    assert row["clid"] == '"Ana" <+5511999990001>'
    assert (row["dcontext"], row["dst"]) == ("test-marker", "s")  # the number's route
    assert row["accountcode"] == "wa-sales"
    assert row["channel"] == record.channel and row["channel"].startswith("UnicastRTP/")
    assert row["disposition"] == "ANSWERED"


async def test_outbound_agent_call_writes_the_agent_row_tagged_and_no_default_rows(
        make_stack: MakeStack):
    # the number the sample [to-whatsapp] calls from
    stack = await stack_with_accountcode(make_stack, "106540000000002", "wa-support")
    stack.sim.add_user(USER, permission="temporary", on_call="answer", answer_after_s=0.5)
    agent = asyncio.ensure_future(stack.gateway.ami.originate(
        AGENT, context="test-agent", exten="s", timeout_s=30, caller_id='"Agent" <200>'))
    call = await stack.sim.wait_outbound_call(to=USER, timeout=15)
    await asyncio.wait_for(call.accepted.wait(), 15)
    await stack.wait_event(lambda ev: ev.get("UserEvent") == "TestAgentUp")
    await phone_got_dtmf(call, "#")  # the agent's 5, 9, # came through the bridge (~1.5 s)
    await call.hangup()
    assert (await agent).success
    await stack.wait_idle()

    rows = await rows_of_call(stack.asterisk, call.call_id)
    assert all(r["dcontext"] != "default" for r in rows), rows
    (row,) = [r for r in rows if r["userfield"] == call.call_id]
    record = await gateway_record(stack, row["userfield"])
    assert record.direction.value == "outbound"
    assert (row["dcontext"], row["dst"]) == ("to-whatsapp", f"+{USER}")
    assert row["src"] == "200" and row["channel"].startswith("Local/+15550008888@to-whatsapp")
    assert row["accountcode"] == "wa-support" and row["disposition"] == "ANSWERED"
    assert record.answered_at is not None and record.ended_at is not None
    assert abs(int(row["billsec"]) - (record.ended_at - record.answered_at)) <= 1.5, row
    # Besides it only the agent's own leg (here the ;1 half of the Local channel it dialed).
    others = [r for r in rows if r is not row]
    assert [r["channel"].rsplit(";", 1)[-1] for r in others] == ["1"], others


async def test_crm_call_writes_one_row_in_the_requested_context(make_stack: MakeStack):
    pnid = "100000000000002"
    stack = await stack_with_accountcode(make_stack, pnid, "wa-crm")
    stack.sim.add_user(USER, permission="temporary", on_call="answer", answer_after_s=0.3)
    body = {"to": f"+{USER}", "phone_number_id": pnid, "context": "test-echo"}
    async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {API_TOKEN}"}) as http:
        async with http.post(f"{stack.gateway.url}/v1/calls", json=body) as resp:
            assert resp.status == 201, await resp.text()
    call = await stack.sim.wait_outbound_call(to=USER, timeout=15)
    await asyncio.wait_for(call.accepted.wait(), 15)
    await asyncio.wait_for(call.phone.connected.wait(), 15)
    # Hang up once the call is through to Asterisk (its Echo() sends the tone back); a hang-up
    # racing the Originate is another test's business.
    heard = asyncio.ensure_future(call.phone.wait_audio(timeout=10))
    await call.phone.say_tone(600, 1.0)
    await heard
    await call.hangup()
    await stack.wait_idle()

    (row,) = await rows_of_call(stack.asterisk, call.call_id)
    record = await gateway_record(stack, row["userfield"])
    assert record.channel_id == row["uniqueid"]
    assert (row["dcontext"], row["dst"]) == ("test-echo", "s")
    assert row["src"] == f"+{USER}" and row["accountcode"] == "wa-crm"
