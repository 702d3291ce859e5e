#!/usr/bin/env python3
"""Make the Grafana dashboard importable into any Grafana, idempotently.

Every panel, target and template variable takes its Prometheus from the ``datasource``
variable (``${datasource}``, no uid of ours baked in), an ``instance`` variable lists the
scraped gateways, and every metric selector in every query filters on ``instance=~"$instance"``.
Run it after adding panels (or after merging a branch that did):

    scripts/portable-dashboard.py [monitoring/grafana/dashboards/whatsapp-gateway.json]

tests/unit/test_dashboard.py checks the result.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

DASHBOARD = (Path(__file__).resolve().parents[1] / "monitoring" / "grafana" / "dashboards"
             / "whatsapp-gateway.json")
DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}
INSTANCE = 'instance=~"$instance"'
SELECTOR = re.compile(r"\b((?:whatsapp_gateway|process)_[a-z0-9_]+)(\{([^}]*)\})?")
VARIABLES = [
    {"name": "datasource", "label": "Prometheus", "type": "datasource", "query": "prometheus",
     "current": {}, "hide": 0, "includeAll": False, "multi": False, "refresh": 1, "regex": "",
     "options": []},
    {"name": "instance", "label": "Gateway", "type": "query", "datasource": DATASOURCE,
     "query": {"query": "label_values(whatsapp_gateway_build_info, instance)",
               "refId": "instance"},
     "definition": "label_values(whatsapp_gateway_build_info, instance)",
     "includeAll": True, "multi": True, "allValue": ".*", "refresh": 2, "sort": 1,
     "current": {"text": "All", "value": "$__all"}, "options": []},
]


def with_instance(expr: str) -> str:
    """Add the instance matcher to every metric selector that lacks it."""
    if "label_values(whatsapp_gateway_build_info, instance)" in expr:
        return expr

    def add(match: re.Match[str]) -> str:
        name, inner = match.group(1), (match.group(3) or "").strip()
        if INSTANCE in inner:
            return match.group(0)
        return f"{name}{{{INSTANCE}, {inner}}}" if inner else f"{name}{{{INSTANCE}}}"

    return SELECTOR.sub(add, expr)


def walk(node: object) -> None:
    if isinstance(node, dict):
        if node.get("type") == "prometheus" and set(node) <= {"type", "uid"}:
            node["uid"] = DATASOURCE["uid"]
        for key, value in list(node.items()):
            if key in ("expr", "definition") and isinstance(value, str):
                node[key] = with_instance(value)
            elif key == "query" and isinstance(value, str) and "label_values(" in value:
                node[key] = with_instance(value)
            else:
                walk(value)
    elif isinstance(node, list):
        for item in node:
            walk(item)


def portable(dashboard: dict) -> dict:
    walk(dashboard.get("panels", []))
    for panel in dashboard.get("panels", []):
        if panel.get("type") != "row":
            panel["datasource"] = dict(DATASOURCE)
    variables = dashboard.setdefault("templating", {}).setdefault("list", [])
    names = {v["name"] for v in VARIABLES}
    others = [v for v in variables if v.get("name") not in names]
    for v in others:
        if isinstance(v.get("datasource"), dict):
            v["datasource"] = dict(DATASOURCE)
    walk(others)
    kept = {v["name"]: v for v in variables if v.get("name") in names}
    dashboard["templating"]["list"] = [kept.get(v["name"], v) for v in VARIABLES] + others
    for annotation in dashboard.get("annotations", {}).get("list", []):
        if isinstance(annotation.get("datasource"), dict) and \
                annotation["datasource"].get("type") == "prometheus":
            annotation["datasource"] = dict(DATASOURCE)
    return dashboard


def main(argv: list[str]) -> int:
    path = Path(argv[1]) if len(argv) > 1 else DASHBOARD
    before = path.read_text()
    after = json.dumps(portable(json.loads(before)), indent=2) + "\n"
    if after != before:
        path.write_text(after)
        print(f"{path}: made portable")
    else:
        print(f"{path}: already portable")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
