"""The wheel is a product on its own: built from the checkout, installed into a fresh venv,
it knows its version and writes the sample configs with ``init`` from files it carries.

The venv gets the wheel alone (``--no-deps``); the dependencies come from the test venv's
site-packages through a ``.pth`` line, which Python appends after the venv's own
site-packages, so ``gateway`` itself is imported from the wheel (asserted below). Deselect
with ``-m "not wheel"`` (it builds with pip, about 10 s).
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import sys
import sysconfig
import venv
from pathlib import Path

import pytest

from gateway.version import version

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.wheel


def run(*cmd: str | Path, cwd: Path | None = None) -> str:
    proc = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, timeout=120,
                          cwd=cwd)
    assert proc.returncode == 0, f"{cmd}: {proc.stdout}\n{proc.stderr}"
    return proc.stdout


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    """The venv's directory, with only the wheel installed into it."""
    tmp = tmp_path_factory.mktemp("wheel")
    # Build from a copy of what the wheel is made of: an in-tree build would leave build/ in
    # the checkout, whose stale files a later build would ship.
    source = tmp / "source"
    for name in ("pyproject.toml", "README.md", "LICENSE", "gateway.example.yaml"):
        (source / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(ROOT / name, source / name)
    for name in ("gateway", "asterisk-conf", "monitoring", "packaging"):
        shutil.copytree(ROOT / name, source / name, symlinks=True,
                        ignore=shutil.ignore_patterns("__pycache__"))
    (source / "scripts").mkdir()
    shutil.copy2(ROOT / "scripts" / "asterisk-chroot.sh", source / "scripts")
    run(sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", tmp / "dist", source)
    (wheel,) = (tmp / "dist").glob("whatsapp_asterisk_gateway-*.whl")
    env = tmp / "venv"
    venv.EnvBuilder(with_pip=False).create(env)
    py = env / "bin" / "python"
    purelib = run(py, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])").strip()
    (Path(purelib) / "test-deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    run(sys.executable, "-m", "pip", "--python", py, "install", "-q", "--no-deps", wheel)
    return env


def test_wheel_carries_the_shipped_files(installed: Path) -> None:
    py = installed / "bin" / "python"
    out = run(py, "-c", "import gateway, gateway.resources as r; print(gateway.__file__); "
              "print(r.resource('asterisk-conf')); print(r.resource('asterisk-chroot.sh'));"
              "from gateway.sandbox import local_asterisk as la; print(la.SAMPLE_CONF);"
              "print(la.CHROOT_SCRIPT)", cwd=installed)
    module, conf, script, demo_conf, demo_script = out.split()
    assert module.startswith(str(installed)), "gateway was not imported from the wheel"
    for path in (conf, script, demo_conf, demo_script):  # the demo finds them in the wheel
        assert path.startswith(str(installed)) and Path(path).exists()
    assert (Path(conf) / "extensions.conf").is_file() and not Path(conf).is_symlink()


def test_version_from_the_installed_wheel(installed: Path) -> None:
    out = run(installed / "bin" / "whatsapp-gateway", "--version", cwd=installed)
    assert out.strip() == f"whatsapp-gateway {version()}"


def test_init_writes_the_sample_configs(installed: Path, tmp_path: Path) -> None:
    target = tmp_path / "etc-gateway"
    out = run(installed / "bin" / "whatsapp-gateway", "init", target, cwd=tmp_path)
    assert str(target) in out
    for name in ("gateway.example.yaml", "asterisk-conf/extensions.conf",
                 "asterisk-conf/manager.conf", "monitoring/prometheus.yml",
                 "monitoring/alerts.yml",
                 "monitoring/grafana/dashboards/whatsapp-gateway.json",
                 "packaging/whatsapp-gateway.service", "packaging/Caddyfile"):
        written = target / name
        assert written.is_file() and not written.is_symlink(), name
        assert written.read_bytes() == (ROOT / name).read_bytes(), name
    # A second init keeps the admin's edited files...
    (target / "gateway.example.yaml").write_text("edited")
    proc = subprocess.run([installed / "bin" / "whatsapp-gateway", "init", target],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1 and "--force" in proc.stderr
    assert (target / "gateway.example.yaml").read_text() == "edited"
    # ...unless told otherwise.
    run(installed / "bin" / "whatsapp-gateway", "init", "--force", target)
    assert (target / "gateway.example.yaml").read_bytes() == \
        (ROOT / "gateway.example.yaml").read_bytes()


def test_the_units_commands_run_a_gateway_from_the_wheel(installed: Path, tmp_path: Path) -> None:
    """What systemd does with packaging/whatsapp-gateway.service, without systemd: the
    ExecStartPre and ExecStart lines (venv and /etc paths pointed at the test's), in the
    WorkingDirectory, with the EnvironmentFile's secrets; then the KillSignal stops it."""
    import configparser
    import json
    import os
    import signal
    import time
    import urllib.request

    from tests.ports import free_tcp_port, udp_range

    unit = configparser.ConfigParser(strict=False, interpolation=None)
    unit.optionxform = str
    unit.read_string((ROOT / "packaging" / "whatsapp-gateway.service").read_text())
    service = unit["Service"]
    etc, workdir = tmp_path / "etc", tmp_path / "var-lib"
    workdir.mkdir()

    def local(command: str) -> list[str]:
        command = command.replace("/opt/whatsapp-gateway/venv", str(installed))
        return command.replace("/etc/whatsapp-gateway", str(etc)).split()

    run(installed / "bin" / "whatsapp-gateway", "init", etc)
    http_port, ami_port = free_tcp_port(), free_tcp_port()  # no Asterisk: it keeps retrying
    config = (etc / "gateway.example.yaml").read_text()
    for old, new in (("0.0.0.0:8080", f"127.0.0.1:{http_port}"),
                     ("port: 5038", f"port: {ami_port}"),
                     ("40000-40999", udp_range(2400, 10)), ("50000-50999", udp_range(2410, 10))):
        assert old in config
        config = config.replace(old, new)
    (etc / "gateway.yaml").write_text(config)
    env_file = Path(local(service["EnvironmentFile"])[0])
    env_file.write_text("".join(f"{line}secret-{n}\n" for n, line in enumerate(
        (ROOT / ".env.example").read_text().splitlines()) if line.endswith("=")))
    env = {**os.environ, **dict(line.split("=", 1) for line in env_file.read_text().split())}

    check = subprocess.run(local(service["ExecStartPre"]), cwd=workdir, env=env,
                           capture_output=True, text=True, timeout=60)
    assert check.returncode == 0, check.stderr
    proc = subprocess.Popen(local(service["ExecStart"]), cwd=workdir, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 30
        while True:  # polling another process's HTTP port: no event to wait on
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{http_port}/healthz",
                                            timeout=2) as resp:
                    assert resp.status == 200 and json.load(resp)
                    break
            except OSError:
                assert proc.poll() is None, proc.stderr.read()
                assert time.monotonic() < deadline, "the gateway never answered /healthz"
                time.sleep(0.2)
        assert (workdir / "var" / "gateway.sqlite3").is_file()  # store.path, relative
        proc.send_signal(getattr(signal, service["KillSignal"]))
        assert proc.wait(timeout=int(service["TimeoutStopSec"])) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    log = proc.stderr.read()
    assert "secret-" not in log, "a secret reached the log"


def test_the_demo_places_a_call_from_the_installed_wheel(installed: Path,
                                                         tmp_path: Path) -> None:
    """``whatsapp-gateway demo --call`` from the wheel alone, run where no checkout is: its
    Asterisk configuration, chroot script and simulator all come from the package, and the
    scripted call goes through a real Asterisk."""
    socks = [socket.socket() for _ in range(3)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        ami, http, sim = (str(s.getsockname()[1]) for s in socks)
    finally:
        for s in socks:
            s.close()
    proc = subprocess.run(
        [installed / "bin" / "whatsapp-gateway", "demo", "--ami-port", ami, "--http-port", http,
         "--sim-port", sim, "--log-level", "warning", "--call", "wait-answer; hangup"],
        cwd=tmp_path, capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "result: PASS" in proc.stdout.splitlines(), proc.stdout
