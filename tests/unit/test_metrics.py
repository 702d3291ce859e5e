"""GatewayMetrics: what a call's life does to the numbers an operator watches."""

from __future__ import annotations

import re

from prometheus_client.parser import text_string_to_metric_families

from gateway.calls.record import CallRecord, Direction, HangupSide, Outcome
from gateway.metrics import GatewayMetrics, MetricsObserver, graph_result_label, meta_code_label

PNID = "106540352242922"


def value(m: GatewayMetrics, name: str, **labels: str) -> float:
    result = m.registry.get_sample_value(name, labels)
    return 0.0 if result is None else result


def answered_record(wacid: str = "wacid.A") -> CallRecord:
    return CallRecord(
        wacid=wacid, direction=Direction.INBOUND, phone_number_id=PNID,
        from_number="15550002222", to_number="15550001111", webhook_at=1000.0,
        answered_at=1002.0, ended_at=1062.0, outcome=Outcome.ANSWERED,
        hangup_side=HangupSide.WHATSAPP, q850_cause=16, packets_in=2990, packets_out=3000,
        packets_lost=10, jitter_seconds=0.004, rtt_seconds=0.12, dtmf_in=3, dtmf_out=1)


def test_a_call_from_admission_to_end() -> None:
    m = GatewayMetrics([PNID], process=False)
    call = {"phone_number_id": PNID, "direction": "inbound"}
    m.call_admitted(PNID, Direction.INBOUND, "wacid.A")
    assert value(m, "whatsapp_gateway_active_calls", **call) == 1
    m.call_setup("pre_accept", PNID, 0.2)
    m.call_setup("media", PNID, 1.1)
    assert value(m, "whatsapp_gateway_call_setup_seconds_count", stage="media", **call) == 1

    m.call_ended(answered_record())
    m.call_ended(answered_record())  # notified twice: counted once
    assert value(m, "whatsapp_gateway_active_calls", **call) == 0
    assert value(m, "whatsapp_gateway_calls_total", outcome="answered",
                 hangup_side="whatsapp", **call) == 1
    assert value(m, "whatsapp_gateway_call_hangup_causes_total", cause="16", **call) == 1
    assert value(m, "whatsapp_gateway_call_duration_seconds_sum", **call) == 60
    assert value(m, "whatsapp_gateway_rtp_packets_received_total", **call) == 2990
    assert value(m, "whatsapp_gateway_rtp_packets_lost_total", **call) == 10
    assert value(m, "whatsapp_gateway_call_packet_loss_ratio_sum", **call) == 10 / 3000
    assert value(m, "whatsapp_gateway_call_rtt_seconds_count", **call) == 1
    assert value(m, "whatsapp_gateway_dtmf_digits_total", sender="whatsapp", **call) == 3
    assert value(m, "whatsapp_gateway_dtmf_digits_total", sender="asterisk", **call) == 1


def test_rejected_call_never_admitted_leaves_active_gauge_alone() -> None:
    m = GatewayMetrics([PNID], process=False)
    record = CallRecord(wacid="wacid.R", direction=Direction.INBOUND, phone_number_id="999",
                        from_number="1", to_number="2", outcome=Outcome.REJECTED,
                        hangup_side=HangupSide.GATEWAY, meta_error_code=138099)
    MetricsObserver(m).call_rejected(record)
    MetricsObserver(m).call_ended(record)
    labels = {"phone_number_id": "unknown", "direction": "inbound"}
    assert value(m, "whatsapp_gateway_calls_total", outcome="rejected", hangup_side="gateway",
                 **labels) == 1
    assert value(m, "whatsapp_gateway_active_calls", **labels) == 0
    assert value(m, "whatsapp_gateway_call_meta_errors_total", code="other", **labels) == 1


def test_label_values_stay_bounded() -> None:
    assert meta_code_label(138020) == "138020"
    assert meta_code_label("138020") == "138020"
    assert meta_code_label(138008) == "other"  # not documented in §11
    assert meta_code_label(None) == "none"
    assert graph_result_label("http_503") == "http_5xx"
    assert graph_result_label("138006") == "138006"
    assert graph_result_label("timeout") == "timeout"
    assert graph_result_label("ClientConnectorError: boom") == "other"

    m = GatewayMetrics([PNID], process=False)
    for i in range(50):
        m.webhook(f"weird-{i}")
        m.graph_request(f"action-{i}", f"http_{400 + i}", 0.1)
        m.permission_refused(f"reason {i}", f"{i}", what=f"w{i}")
    results = {s.labels["result"] for f in m.registry.collect() for s in f.samples
               if f.name == "whatsapp_gateway_webhook_requests"}
    assert results == {"other"}
    actions = {s.labels["action"] for f in m.registry.collect() for s in f.samples
               if f.name == "whatsapp_gateway_graph_requests"}
    assert actions == {"other"}


def test_graph_request_fits_graph_client_observer() -> None:
    m = GatewayMetrics([PNID], process=False)
    m.graph_request("pre_accept", "ok", 0.08)
    m.graph_request("accept", "138007", 1.5)
    assert value(m, "whatsapp_gateway_graph_requests_total", action="pre_accept",
                 result="ok") == 1
    assert value(m, "whatsapp_gateway_graph_requests_total", action="accept",
                 result="138007") == 1
    assert value(m, "whatsapp_gateway_graph_request_duration_seconds_count",
                 action="accept") == 1


def test_permission_requests_and_refusals() -> None:
    m = GatewayMetrics([PNID], process=False)
    m.permission_request("sent", PNID)
    m.permission_refused("limit_requests_24h", PNID, what="request")
    m.permission_refused("no_permission", PNID)
    assert value(m, "whatsapp_gateway_permission_requests_total", phone_number_id=PNID,
                 result="sent") == 1
    assert value(m, "whatsapp_gateway_permission_refusals_total", phone_number_id=PNID,
                 what="request", reason="limit_requests_24h") == 1
    assert value(m, "whatsapp_gateway_permission_refusals_total", phone_number_id=PNID,
                 what="call", reason="no_permission") == 1


def test_ami_reconnects_count_only_after_the_first_connect() -> None:
    m = GatewayMetrics(process=False)
    m.ami_connection(True, server="pbx1")
    m.ami_connection(True, server="pbx1")
    assert value(m, "whatsapp_gateway_ami_reconnects_total") == 0
    m.ami_connection(False, server="pbx1")
    assert value(m, "whatsapp_gateway_ami_connected", server="pbx1") == 0
    m.ami_connection(True, server="pbx1")
    assert value(m, "whatsapp_gateway_ami_connected", server="pbx1") == 1
    assert value(m, "whatsapp_gateway_ami_reconnects_total") == 1


def test_ami_connected_is_per_server() -> None:
    """asterisk.servers: one series per server; a second server's first connect is no
    reconnect, and one server going down leaves the other's series at 1."""
    m = GatewayMetrics(process=False)
    m.ami_connection(True, server="pbx1")
    m.ami_connection(True, server="pbx2")
    m.ami_connection(False, server="pbx1")
    assert value(m, "whatsapp_gateway_ami_connected", server="pbx1") == 0
    assert value(m, "whatsapp_gateway_ami_connected", server="pbx2") == 1
    assert value(m, "whatsapp_gateway_ami_reconnects_total") == 0
    m.ami_connection(True, server="pbx1")
    assert value(m, "whatsapp_gateway_ami_reconnects_total") == 1


def test_exposition_has_help_for_every_metric_and_follows_conventions() -> None:
    m = GatewayMetrics([PNID], process=False)
    text = m.exposition().decode()
    families = list(text_string_to_metric_families(text))
    assert families
    for family in families:
        assert family.name.startswith("whatsapp_gateway_"), family.name
        assert len(family.documentation) > 20, family.name
        assert re.fullmatch(r"[a-z_]+", family.name)
        if family.type == "histogram":
            assert family.name.endswith(("_seconds", "_ratio")), family.name
    # Two gateways in one process do not collide.
    GatewayMetrics([PNID])
    GatewayMetrics([PNID])


async def test_metrics_route_serves_exposition() -> None:
    from aiohttp import web
    from aiohttp.test_utils import TestClient, TestServer

    m = GatewayMetrics([PNID], process=False)
    m.webhook("ok")
    app = web.Application()
    m.add_route(app)
    async with TestClient(TestServer(app)) as client:
        response = await client.get("/metrics")
        assert response.status == 200
        assert response.headers["Content-Type"].startswith("text/plain")
        assert 'whatsapp_gateway_webhook_requests_total{result="ok"} 1.0' in await response.text()


def test_build_info_and_no_created_series() -> None:
    import platform

    from gateway.version import version

    m = GatewayMetrics([PNID], process=False)
    m.call_ended(answered_record())
    text = m.exposition().decode()
    assert "_created" not in text  # no second series per counter/histogram child
    (info,) = [f for f in text_string_to_metric_families(text)
               if f.name == "whatsapp_gateway_build_info"]
    (sample,) = info.samples
    assert sample.value == 1
    assert sample.labels["version"] == version()
    assert sample.labels["python"] == platform.python_version()
    assert re.fullmatch(r"\d+\.\d+\.\d+", sample.labels["aiortc"])


def test_no_gauge_is_named_like_a_counter() -> None:
    """``promtool check metrics``: a ``_total`` suffix is for counters only."""
    for family in text_string_to_metric_families(GatewayMetrics([PNID]).exposition().decode()):
        if family.type != "counter":
            assert not family.name.endswith("_total"), family.name
