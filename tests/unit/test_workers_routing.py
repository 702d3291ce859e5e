"""serve --workers N: which worker owns a call, and which worker gets each event."""

from __future__ import annotations

from collections import Counter

import pytest

from gateway.config import PortRange
from gateway.instance import new_channel_id
from gateway.whatsapp.events import CallEvent, PermissionReply, StatusEvent
from gateway.workers import identity
from gateway.workers.identity import worker_instance
from gateway.workers.routing import Router, user_worker
from gateway.workers.worker import port_slice


def call_event(call_id: str, event: str = "connect", direction: str = "USER_INITIATED",
               callback: str | None = None) -> CallEvent:
    return CallEvent(call_id=call_id, event=event, direction=direction,
                     phone_number_id="1", display_phone_number="155", from_number="1555",
                     to_number="155", timestamp=1, biz_opaque_callback_data=callback)


HEX = "0123456789abcdef0123456789abcdef"
GW = "gw-a1b2c3"


def ch(instance: str) -> str:
    return f"wa-{instance}-{HEX}"


def test_channel_ids_name_their_worker_and_a_single_process_keeps_the_plain_form():
    worker_1 = worker_instance(GW, 1)
    assert identity.owner_of(new_channel_id(GW)) is None  # a single process
    channel = new_channel_id(worker_1)
    assert channel.startswith(f"wa-{GW}-w1-") and identity.owner_of(channel) == 1
    slot = identity.WorkerSlot(1, 2, GW)
    assert identity.is_mine(channel, slot)
    assert not identity.is_mine(ch(f"{GW}-w0"), slot)
    assert not identity.is_mine(ch(GW), slot)  # worker 0's to clean up, not worker 1's
    assert not identity.is_mine(ch("other-host-w1"), slot)  # another instance's worker 1
    assert not identity.is_mine(f"other-{GW}-w1-{HEX}", slot)


def test_worker_0_takes_what_no_running_worker_of_its_instance_owns():
    slot = identity.WorkerSlot(0, 2, GW)
    assert identity.is_mine(ch(GW), slot)  # a single-process run's channel
    assert identity.is_mine(ch(f"{GW}-w5"), slot)  # a run with more workers
    assert identity.is_mine("wa-" + HEX, slot)  # from before instance ids
    assert not identity.is_mine(ch(f"{GW}-w1"), slot)
    assert not identity.is_mine(ch("other-host"), slot)  # another instance: the store's
    assert identity.is_mine(ch(f"{GW}-w1"), None)  # no workers: every wa- id is ours


def test_new_calls_go_to_the_least_loaded_worker_and_stay_there():
    router = Router(2)
    router.worker_up(0)
    router.worker_up(1)
    assert router.targets(call_event("A")) == (0,)
    assert router.targets(call_event("B")) == (1,)  # A's connect counts before any report
    assert router.targets(call_event("A", "terminate")) == (0,)
    assert router.targets(call_event("B", "terminate")) == (1,)
    assert router.targets(call_event("A")) == (0,)  # a redelivered connect: the same owner
    router.report(0, 1, {"1": 1}, Counter({"1": 1}))
    router.report(1, 5, {"1": 5}, Counter({"1": 1}))
    assert router.targets(call_event("C")) == (0,)


def test_a_dead_worker_takes_no_new_call():
    router = Router(2)
    router.worker_up(0)
    router.worker_up(1)
    router.worker_down(0)
    assert router.targets(call_event("A")) == (1,)
    assert router.targets(call_event("B")) == (1,)


def test_the_gateway_id_meta_echoes_names_the_owner():
    router = Router(3)
    for i in range(3):
        router.worker_up(i)
    outbound = call_event("wacid-out", "connect", "BUSINESS_INITIATED", callback=ch(f"{GW}-w2"))
    assert router.targets(outbound) == (2,)
    status = StatusEvent(call_id="wacid-out", status="RINGING", phone_number_id="1",
                         recipient_id="1555", timestamp=1, biz_opaque_callback_data=ch(f"{GW}-w2"))
    assert router.targets(status) == (2,)
    assert router.owner_of_call(ch(f"{GW}-w2")) == 2
    assert router.owner_of_call("wacid-out") == 2  # remembered from its events


def test_a_terminate_of_an_unknown_call_goes_to_every_worker():
    """It may have overtaken its connect: every worker tombstones it, so that connect, wherever
    it lands, never starts a call."""
    router = Router(2)
    router.worker_up(0)
    router.worker_up(1)
    assert router.targets(call_event("X", "terminate")) == (0, 1)


def test_permission_replies_go_to_the_users_worker_as_the_api_does():
    router = Router(4)
    reply = PermissionReply(phone_number_id="1", user="5511987650000", message_id="m",
                            timestamp=1, response="accept", is_permanent=False,
                            expiration_timestamp=None, response_source="user_action")
    assert router.targets(reply) == (router.for_user("+5511987650000"),)
    # Brazil's ninth digit: both forms are one user, so one worker
    assert user_worker("+551187650000", 4) == user_worker("5511987650000", 4)


def test_split_keeps_each_workers_events_in_order():
    router = Router(2)
    router.worker_up(0)
    router.worker_up(1)
    events = [call_event("A"), call_event("B"), call_event("A", "terminate"),
              call_event("Z", "terminate")]
    batches = router.split(events)
    assert {i: b.events for i, b in batches.items()} == {0: [0, 2, 3], 1: [1, 3]}
    assert {i: b.new_calls for i, b in batches.items()} == {0: {"1": 1}, 1: {"1": 1}}
    router.report(1, 1, {"1": 1}, batches[1].new_calls)  # B is admitted in worker 1
    router.report(0, 0)  # worker 0 answers an earlier delivery: A is still on its way
    assert router.targets(call_event("D")) == (0,)  # 0+1 pending vs 1: the lower index
    assert router.targets(call_event("E")) == (1,)  # 0+2 pending vs 1


def test_each_worker_is_told_the_calls_of_each_number_the_others_carry():
    """max_calls is the number's cap: a worker adds the others' calls before comparing."""
    router = Router(2)
    router.worker_up(0)
    router.worker_up(1)
    router.report(1, 3, {"1": 2, "2": 1})
    batches = router.split([call_event("A")])  # to worker 0, the least loaded
    assert list(batches) == [0] and batches[0].elsewhere == {"1": 2, "2": 1}
    batches = router.split([call_event("B")])  # to worker 0 again (0+1 pending < 3)
    assert batches[0].elsewhere == {"1": 2, "2": 1}
    assert router.elsewhere(1) == {"1": 2}  # worker 1 is told of A and B on their way


def test_port_slices_are_disjoint_and_cover_the_range():
    ports = PortRange(40000, 40999)
    slices = [port_slice(ports, i, 3) for i in range(3)]
    assert slices[0].first == 40000 and slices[-1].last == 40999
    assert all(a.last + 1 == b.first for a, b in zip(slices, slices[1:], strict=False))
    with pytest.raises(ValueError):
        port_slice(PortRange(1, 2), 0, 3)
