"""The Grafana dashboard only queries metrics the gateway exports, and shows all of them."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path

import yaml

from gateway.metrics import GatewayMetrics

ROOT = Path(__file__).resolve().parents[2]
TARGET_LABELS = {"instance", "job"}  # added by Prometheus to every scraped series
DASHBOARD = ROOT / "monitoring/grafana/dashboards/whatsapp-gateway.json"
METRIC = re.compile(r"\b((?:whatsapp_gateway|process)_[a-z0-9_]+)")
SUFFIXES = {"counter": ("_total", "_created"), "gauge": ("",),
            "histogram": ("_bucket", "_sum", "_count", "_created"), "info": ("_info",),
            "summary": ("_sum", "_count", "_created")}


def exported() -> dict[str, tuple[str, set[str]]]:
    """Every series name the registry can expose -> (family name, label names)."""
    metrics = GatewayMetrics(["1"], process=True)
    names: dict[str, tuple[str, set[str]]] = {}
    for family in metrics.registry.collect():
        labels = {"le"} if family.type == "histogram" else set()
        for collector_labels in _label_names(metrics, family.name):
            labels |= collector_labels
        for suffix in SUFFIXES[family.type]:
            names[family.name + suffix] = (family.name, labels)
    return names


def _label_names(metrics: GatewayMetrics, family: str) -> Iterator[set[str]]:
    for value in vars(metrics).values():
        if getattr(value, "_name", None) == family:
            yield set(value._labelnames)


def expressions(node: object) -> Iterator[str]:
    if isinstance(node, dict):
        for key, value in node.items():
            if key in ("expr", "definition") and isinstance(value, str):
                yield value
            elif key == "query" and isinstance(value, str) and "(" in value:
                yield value
            else:
                yield from expressions(value)
    elif isinstance(node, list):
        for item in node:
            yield from expressions(item)


def test_every_queried_metric_exists() -> None:
    names = exported()
    dashboard = json.loads(DASHBOARD.read_text())
    exprs = list(expressions(dashboard))
    assert len(exprs) > 20
    for expr in exprs:  # no PromQL parser in the venv: at least catch unbalanced brackets
        for opening, closing in ("()", "{}", "[]"):
            assert expr.count(opening) == expr.count(closing), expr
    missing = sorted({m for e in exprs for m in METRIC.findall(e)} - set(names))
    assert missing == [], f"the dashboard queries metrics the gateway does not export: {missing}"


def test_grouping_and_matcher_labels_exist_on_the_metric() -> None:
    names = exported()
    for expr in expressions(json.loads(DASHBOARD.read_text())):
        for metric, matchers in re.findall(r"\b(whatsapp_gateway_[a-z0-9_]+)\{([^}]*)\}", expr):
            used = set(re.findall(r"([a-z_]+)\s*(?:=~|!~|!=|=)", matchers)) - TARGET_LABELS
            assert used <= names[metric][1], f"{metric} has no label {used - names[metric][1]}"
        grouped = {label.strip() for group in re.findall(r"by \(([^)]*)\)", expr)
                   for label in group.split(",")}
        available = set().union(*(names[m][1] for m in METRIC.findall(expr) if m in names))
        assert grouped <= available, f"{expr}: cannot group by {grouped - available}"


def test_every_gateway_metric_is_on_the_dashboard() -> None:
    queried = set()
    for expr in expressions(json.loads(DASHBOARD.read_text())):
        queried |= {exported()[m][0] for m in METRIC.findall(expr)}
    families = {family for family, _ in exported().values()
                if family.startswith("whatsapp_gateway_")}
    assert sorted(families - queried) == []


def test_panels_explain_themselves() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    for panel in dashboard["panels"]:
        if panel["type"] != "row":
            assert panel.get("description"), panel["title"]
            assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}


def test_provisioning_points_at_the_dashboard_and_prometheus_scrapes_the_gateway() -> None:
    datasource = yaml.safe_load(
        (ROOT / "monitoring/grafana/provisioning/datasources/prometheus.yml").read_text())
    assert datasource["datasources"][0]["uid"] == "prometheus"
    provider = yaml.safe_load(
        (ROOT / "monitoring/grafana/provisioning/dashboards/whatsapp-gateway.yml").read_text())
    assert provider["providers"][0]["options"]["path"] == "/var/lib/grafana/dashboards"
    scrape = yaml.safe_load((ROOT / "monitoring/prometheus.yml").read_text())
    job = scrape["scrape_configs"][0]
    assert job["metrics_path"] == "/metrics"
    assert job["static_configs"][0]["targets"] == ["127.0.0.1:8080"]  # host network
    cpu = [e for e in expressions(json.loads(DASHBOARD.read_text())) if "process_cpu" in e]
    assert cpu and all(f'job="{job["job_name"]}"' in e for e in cpu)


def test_importable_into_an_existing_grafana() -> None:
    """No datasource uid of ours is baked in: a ``datasource`` variable picks the admin's
    Prometheus, and nothing else names a datasource."""
    dashboard = json.loads(DASHBOARD.read_text())
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    uids = set(re.findall(r'"uid":\s*"([^"]*)"', json.dumps(
        {k: v for k, v in dashboard.items() if k != "uid"})))
    assert uids == {"${datasource}"}


def test_every_query_filters_on_the_instance_variable() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["instance"]["includeAll"] and variables["instance"]["allValue"] == ".*"
    assert "instance" in variables["instance"]["definition"]
    selectors = 0
    for expr in expressions(dashboard):
        for metric, rest in re.findall(r"\b((?:whatsapp_gateway|process)_[a-z0-9_]+)(\{[^}]*\})?",
                                       expr):
            selectors += 1
            if "label_values(whatsapp_gateway_build_info" in expr:
                continue  # the instance variable itself
            assert 'instance=~"$instance"' in rest, f"{metric} in {expr}"
    assert selectors > 30


def test_dashboard_is_what_the_portability_script_makes() -> None:
    """scripts/portable-dashboard.py (run after adding panels) has nothing left to change."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("portable_dashboard",
                                                  ROOT / "scripts" / "portable-dashboard.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    text = DASHBOARD.read_text()
    assert json.dumps(module.portable(json.loads(text)), indent=2) + "\n" == text
