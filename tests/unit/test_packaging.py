"""The systemd unit and the TLS-front examples that packaging/ ships.

The unit is checked by ``systemd-analyze verify`` where systemd is installed (with the venv's
path pointed at a stand-in executable, since verify insists the binary exists), and always
structurally: what an admin relies on when they ``systemctl stop`` or ``reload``.
"""

from __future__ import annotations

import configparser
import re
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
UNIT = ROOT / "packaging" / "whatsapp-gateway.service"
VENV_BIN = "/opt/whatsapp-gateway/venv/bin/whatsapp-gateway"


def drain_grace_s() -> float:
    """The default SIGTERM drain grace (``service.shutdown_grace``)."""
    try:
        from gateway.config import ServiceSettings  # the drain's config, where it exists
    except ImportError:
        return 30.0
    return ServiceSettings().shutdown_grace_s


def unit() -> configparser.ConfigParser:
    parser = configparser.ConfigParser(strict=False, interpolation=None,
                                       comment_prefixes=("#", ";"))
    parser.optionxform = str  # systemd keys are case-sensitive
    parser.read_string(UNIT.read_text())
    return parser


def test_unit_structure() -> None:
    u = unit()
    assert set(u.sections()) == {"Unit", "Service", "Install"}
    service = u["Service"]
    assert service["User"] == "whatsapp-gateway" and service["User"] != "root"
    assert service["Restart"] == "on-failure"
    assert service["ExecReload"] == "/bin/kill -HUP $MAINPID"
    assert service["KillSignal"] == "SIGTERM"
    assert service["ExecStart"].split()[:2] == [VENV_BIN, "serve"]
    assert "--config /etc/whatsapp-gateway/gateway.yaml" in service["ExecStart"]
    assert service["EnvironmentFile"].startswith("/etc/whatsapp-gateway/")
    assert service["WorkingDirectory"] == "/var/lib/whatsapp-gateway"
    assert service["StateDirectory"] == "whatsapp-gateway"
    assert u["Install"]["WantedBy"] == "multi-user.target"


def test_stop_timeout_outlasts_the_drain() -> None:
    """systemd must not SIGKILL calls the gateway is still allowed to finish."""
    timeout = unit()["Service"]["TimeoutStopSec"]
    assert re.fullmatch(r"\d+", timeout), "TimeoutStopSec in plain seconds"
    assert int(timeout) >= drain_grace_s() + 30


def test_readme_installs_the_unit() -> None:
    readme = (ROOT / "README.md").read_text()
    assert "packaging/whatsapp-gateway.service" in readme
    assert "systemctl reload whatsapp-gateway" in readme
    assert "useradd" in readme


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd not installed")
def test_systemd_analyze_verify(tmp_path: Path) -> None:
    stand_in = tmp_path / "whatsapp-gateway"
    stand_in.write_text("#!/bin/sh\nexit 0\n")
    stand_in.chmod(0o755)
    unit_file = tmp_path / UNIT.name
    unit_file.write_text(UNIT.read_text().replace(VENV_BIN, str(stand_in)))
    proc = subprocess.run(["systemd-analyze", "verify", str(unit_file)], capture_output=True,
                          text=True, timeout=60)
    ours = [line for line in (proc.stdout + proc.stderr).splitlines() if UNIT.name in line]
    assert proc.returncode == 0 and ours == [], proc.stdout + proc.stderr


def test_tls_fronts_expose_only_the_webhook() -> None:
    caddy = (ROOT / "packaging" / "Caddyfile").read_text()
    assert "handle /webhook" in caddy and "reverse_proxy 127.0.0.1:8080" in caddy
    assert "respond 404" in caddy
    nginx = (ROOT / "packaging" / "nginx.conf").read_text()
    assert "location = /webhook" in nginx and "proxy_pass http://127.0.0.1:8080;" in nginx
    assert re.search(r"location / \{\s*return 404;", nginx)
    assert nginx.count("{") == nginx.count("}") and caddy.count("{") == caddy.count("}")


@pytest.mark.skipif(shutil.which("nginx") is None, reason="nginx not on PATH (scripts/test "
                    "unpacks its binary; the package would start a server on :80)")
def test_nginx_accepts_the_example(tmp_path: Path) -> None:
    """``nginx -t`` on the example, with a throwaway certificate in place of certbot's."""
    key, cert = tmp_path / "key.pem", tmp_path / "cert.pem"
    made = subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt",
                           "ec_paramgen_curve:prime256v1", "-nodes", "-keyout", str(key),
                           "-out", str(cert), "-days", "1", "-subj", "/CN=gateway.example.com"],
                          capture_output=True, timeout=60)
    assert made.returncode == 0, made.stderr
    site = (ROOT / "packaging" / "nginx.conf").read_text()
    live = "/etc/letsencrypt/live/gateway.example.com/"
    assert live + "fullchain.pem" in site and live + "privkey.pem" in site
    site = site.replace(live + "fullchain.pem", str(cert)).replace(live + "privkey.pem", str(key))
    (tmp_path / "site.conf").write_text(site)
    (tmp_path / "nginx.conf").write_text(
        f"pid {tmp_path}/nginx.pid;\nerror_log stderr;\nevents {{}}\n"
        f"http {{\n  access_log off;\n"
        # An unpacked (not installed) nginx has no /var/lib/nginx: temp paths of the test's own.
        + "".join(f"  {kind}_temp_path {tmp_path}/{kind};\n"
                  for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"))
        + f"  include {tmp_path}/site.conf;\n}}\n")
    proc = subprocess.run(["nginx", "-t", "-q", "-c", str(tmp_path / "nginx.conf"),
                           "-p", str(tmp_path)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr


@pytest.mark.skipif(shutil.which("caddy") is None, reason="caddy not on PATH (scripts/test "
                    "unpacks its binary; the package would start a server on :80)")
def test_caddy_accepts_the_example(tmp_path: Path) -> None:
    proc = subprocess.run([shutil.which("caddy") or "caddy", "validate", "--adapter",
                           "caddyfile", "--config", str(ROOT / "packaging" / "Caddyfile")],
                          capture_output=True, text=True, timeout=60, cwd=tmp_path,
                          env={"HOME": str(tmp_path), "XDG_DATA_HOME": str(tmp_path),
                               "XDG_CONFIG_HOME": str(tmp_path), "PATH": "/usr/bin:/bin"})
    assert proc.returncode == 0 and "Valid configuration" in proc.stdout + proc.stderr, \
        proc.stdout + proc.stderr
