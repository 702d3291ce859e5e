"""monitoring/alerts.yml: valid rules, each one tested by ``promtool test rules`` against
plausible series (monitoring/alerts_test.yml), and querying only metrics the gateway exports.

promtool comes with Debian's prometheus package, which ``scripts/setup.sh --test`` installs.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from tests.unit.test_dashboard import exported

ROOT = Path(__file__).resolve().parents[2]
ALERTS = ROOT / "monitoring" / "alerts.yml"
PROMTOOL = shutil.which("promtool")
needs_promtool = pytest.mark.skipif(PROMTOOL is None, reason="promtool is not installed "
                                    "(scripts/setup.sh --test installs Debian's prometheus)")

REQUIRED = {"WhatsAppGatewayDown", "WhatsAppGatewayAsteriskDown", "WhatsAppCallFailureRatioHigh",
            "WhatsAppCallSetupSlow", "WhatsAppMediaLossHigh", "WhatsAppPermissionRefusals",
            "WhatsAppLowAnswerRatio"}


def rules() -> list[dict]:
    return [rule for group in yaml.safe_load(ALERTS.read_text())["groups"]
            for rule in group["rules"]]


def promtool(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([PROMTOOL, *args], capture_output=True, text=True, timeout=60,
                          cwd=ROOT / "monitoring")


def test_the_alerts_an_operator_needs() -> None:
    names = {rule["alert"] for rule in rules()}
    assert REQUIRED <= names
    for rule in rules():
        assert rule["labels"]["severity"] in ("critical", "warning"), rule["alert"]
        assert rule["annotations"]["summary"] and rule["annotations"]["description"]


def test_alerts_query_only_exported_metrics() -> None:
    names = set(exported())
    for rule in rules():
        used = set(re.findall(r"\bwhatsapp_gateway_[a-z0-9_]+", rule["expr"]))
        assert used and used <= names or rule["alert"] == "WhatsAppGatewayDown", \
            (rule["alert"], used - names)


def test_every_alert_is_unit_tested() -> None:
    tests = yaml.safe_load((ROOT / "monitoring" / "alerts_test.yml").read_text())["tests"]
    firing = {case["alertname"] for test in tests for case in test["alert_rule_test"]
              if case.get("exp_alerts")}
    assert firing == {rule["alert"] for rule in rules()}


def test_prometheus_config_loads_the_alerts() -> None:
    config = yaml.safe_load((ROOT / "monitoring" / "prometheus.yml").read_text())
    assert "alerts.yml" in config["rule_files"]


@needs_promtool
def test_promtool_check_rules() -> None:
    proc = promtool("check", "rules", "alerts.yml")
    assert proc.returncode == 0, proc.stdout + proc.stderr


@needs_promtool
def test_promtool_test_rules() -> None:
    proc = promtool("test", "rules", "alerts_test.yml")
    assert proc.returncode == 0 and "SUCCESS" in proc.stdout, proc.stdout + proc.stderr


@needs_promtool
def test_promtool_check_config() -> None:
    proc = promtool("check", "config", "prometheus.yml")
    assert proc.returncode == 0, proc.stdout + proc.stderr
