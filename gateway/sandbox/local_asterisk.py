"""A real Asterisk 22, run from the Debian sid chroot, for the demo command and the tests.

Debian 12 has no asterisk package and these machines have no Docker engine, so
``scripts/asterisk-chroot.sh`` builds (once) a sid chroot holding the Debian package; see
``docs/asterisk-handoff.md``. Each :class:`LocalAsterisk` gets its own directory inside that chroot,
``/run-gateway/<name>/{etc,run,log,spool,lib,cache}``, holding a copy of ``asterisk-conf/``
plus an optional overlay (the tests add ``extensions_local.conf``), and an ``asterisk.conf``
pointing at those directories. Modules and sounds stay the package's own.

A chroot shares the host's network, so AMI and RTP on 127.0.0.1 just work.
"""

from __future__ import annotations

import array
import asyncio
import contextlib
import logging
import math
import os
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

from gateway.errors import SetupError
from gateway.resources import ASTERISK_CHROOT_SCRIPT, SAMPLE_ASTERISK_CONF, resource
from gateway.sandbox.host import is_mount, pid_alive, port_is_free

log = logging.getLogger(__name__)

# Shipped in the wheel too (gateway/resources.py), so the demo runs from an installed package.
CHROOT_SCRIPT = resource(ASTERISK_CHROOT_SCRIPT)
SAMPLE_CONF = resource(SAMPLE_ASTERISK_CONF)
ASTERISK = "/usr/sbin/asterisk"


class LocalAsteriskError(SetupError, RuntimeError):
    """Asterisk could not be started (or stopped); the message says why, with its log tail."""


class LocalAsterisk:
    """One Asterisk process in the sandbox chroot, with its own config and AMI port."""

    def __init__(
        self,
        name: str = "default",
        *,
        conf_dir: str | Path = SAMPLE_CONF,
        overlay_dir: str | Path | None = None,
        ami_port: int | None = None,
        rtp_ports: tuple[int, int] | None = None,
        ami_username: str = "gateway",
        ami_secret: str = "gateway-secret",
        boot_timeout_s: float = 60.0,
        chroot_script: str | Path = CHROOT_SCRIPT,
    ):
        if not re.fullmatch(r"[A-Za-z0-9_.-]+", name):
            raise ValueError(f"instance name must be a plain file name, got {name!r}")
        self.name = name
        self.conf_dir = Path(conf_dir)
        self.overlay_dir = Path(overlay_dir) if overlay_dir else None
        self._ami_port = ami_port
        self.rtp_ports = rtp_ports
        self.ami_username = ami_username
        self._ami_secret = ami_secret
        self.boot_timeout_s = boot_timeout_s
        self.chroot_script = Path(chroot_script)
        self.root: Path | None = None
        """The chroot on the host, known after :meth:`start`."""
        self._proc: subprocess.Popen | None = None
        self._output = None

    # -- paths -----------------------------------------------------------------------------

    @property
    def inner_dir(self) -> str:
        """The instance directory as Asterisk (inside the chroot) sees it."""
        return f"/run-gateway/{self.name}"

    @property
    def instance_dir(self) -> Path:
        """The instance directory on the host."""
        if self.root is None:
            raise LocalAsteriskError("start() first: the chroot path is not known yet")
        return self.root / self.inner_dir.lstrip("/")

    @property
    def conf_path(self) -> str:
        """asterisk.conf, inside the chroot (what -C takes)."""
        return f"{self.inner_dir}/etc/asterisk.conf"

    @property
    def log_path(self) -> Path:
        """Asterisk's messages log on the host."""
        return self.instance_dir / "log" / "messages.log"

    async def find_chroot(self) -> Path:
        """The chroot on the host (built on first use), without starting Asterisk: enough
        for :meth:`sounds_dir`."""
        if self.root is None:
            self.root = await self._chroot()
        return self.root

    def sounds_dir(self, language: str = "en") -> Path:
        """Asterisk's sound files for ``language`` on the host (what the simulator's prompt
        recognition matches against). Debian links ``sounds/en`` through /etc/alternatives
        with absolute paths, which are resolved inside the chroot here."""
        if self.root is None:
            raise LocalAsteriskError("start() first: the chroot path is not known yet")
        inner = Path(self._packaged_dirs()["astdatadir"]) / "sounds" / language
        for _ in range(10):  # a few levels of links, never a loop
            host = self.root / str(inner).lstrip("/")
            if not host.is_symlink():
                return host
            target = Path(os.readlink(host))
            inner = target if target.is_absolute() else inner.parent / target
        raise LocalAsteriskError(f"{inner}: too many levels of symbolic links")

    @property
    def ami_port(self) -> int:
        if self._ami_port is not None:
            return self._ami_port
        match = re.search(r"^\s*port\s*=\s*(\d+)", (self.conf_dir / "manager.conf").read_text(),
                          re.M)
        return int(match.group(1)) if match else 5038

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    # -- lifecycle -------------------------------------------------------------------------

    async def start(self) -> None:
        """Build the chroot if needed, lay out the instance, start Asterisk, wait for AMI."""
        if self.running:
            return
        if os.geteuid() != 0:
            raise LocalAsteriskError("running Asterisk in its chroot needs root (chroot, mount)")
        self.root = await self._chroot()
        await self._kill_stale()
        self._check_port_free(self.ami_port)
        await asyncio.to_thread(self._prepare)
        await self._mount_proc()
        log.info("starting Asterisk %r (AMI 127.0.0.1:%d)", self.name, self.ami_port)
        self._proc = await asyncio.to_thread(self._spawn)
        try:
            await self._wait_booted()
        except BaseException:
            await self.stop()
            raise
        log.info("Asterisk %r fully booted (pid %d)", self.name, self._proc.pid)

    async def stop(self) -> None:
        """Stop Asterisk: ``core stop now``, then SIGTERM, then SIGKILL. Idempotent."""
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._run_cli("core stop now"), 5)
            for sig in (None, signal.SIGTERM, signal.SIGKILL):
                if sig is not None and proc.poll() is None:
                    with contextlib.suppress(ProcessLookupError):
                        proc.send_signal(sig)
                if await self._exited(proc, 5.0):
                    break
            log.info("Asterisk %r stopped (exit %s)", self.name, proc.returncode)
        if self._output is not None:
            self._output.close()
            self._output = None

    def _prepare(self) -> None:
        self._lay_out()
        self._ensure_moh()
        # Fresh logs (and CDRs) per start, so an error's log tail shows this run only and
        # Master.csv holds this run's calls in this run's cdr.conf format.
        for path in (self.log_path, self.instance_dir / "log" / "cdr-csv" / "Master.csv"):
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
        self._output = open(self.instance_dir / "log" / "asterisk.out", "wb")  # noqa: SIM115

    def _spawn(self) -> subprocess.Popen:
        # subprocess.Popen, not asyncio's: the process outlives any one event loop (pytest
        # starts it in a session fixture and tests run in their own loops), and Popen ties
        # nothing to a loop. stop() polls it asynchronously.
        return subprocess.Popen(
            ["chroot", str(self.root), ASTERISK, "-C", self.conf_path, "-f", "-n", "-U", "root"],
            stdin=subprocess.DEVNULL, stdout=self._output, stderr=subprocess.STDOUT,
            # Its own session: a Ctrl-C meant for the test run must not kill it mid-test;
            # stop() (or the next start's stale-process check) ends it.
            start_new_session=True,
        )

    @staticmethod
    async def _exited(proc: subprocess.Popen, timeout_s: float) -> bool:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while proc.poll() is None:
            if loop.time() > deadline:
                return False
            await asyncio.sleep(0.05)
        return True

    async def restart(self) -> None:
        await self.stop()
        await self.start()

    async def crash(self) -> None:
        """Kill Asterisk with no goodbye (SIGKILL): no Hangup events, no AMI logoff, as when
        the process or its machine dies. :meth:`start` brings it back."""
        proc = self._proc
        if proc is not None and proc.poll() is None:
            proc.kill()
            await asyncio.to_thread(proc.wait)

    async def cli(self, command: str) -> str:
        """Run one CLI command (``asterisk -rx``) against this instance; return its output."""
        if not self.running:
            raise LocalAsteriskError(f"Asterisk {self.name!r} is not running")
        return await self._run_cli(command)

    async def __aenter__(self) -> LocalAsterisk:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    def log_tail(self, lines: int = 40) -> str:
        """The last lines of Asterisk's log and console output, for error messages."""
        parts = []
        for path in (self.log_path, self.instance_dir / "log" / "asterisk.out"):
            with contextlib.suppress(OSError):
                text = path.read_text(errors="replace").splitlines()[-lines:]
                parts.append(f"--- {path} ---\n" + "\n".join(text))
        return "\n".join(parts) or "(no Asterisk log yet)"

    # -- steps -----------------------------------------------------------------------------

    async def _chroot(self) -> Path:
        proc = await asyncio.create_subprocess_exec(
            "bash", str(self.chroot_script),
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )
        out, err = await proc.communicate()
        if proc.returncode != 0:
            raise LocalAsteriskError(
                f"{self.chroot_script} failed (exit {proc.returncode}):\n"
                + err.decode(errors="replace")[-4000:])
        root = Path(out.decode().strip().splitlines()[-1])
        if not (root / ASTERISK.lstrip("/")).exists():
            raise LocalAsteriskError(f"no {ASTERISK} in the chroot {root}")
        return root

    async def _kill_stale(self) -> None:
        """A previous run that crashed may have left its Asterisk running: end it by its pid."""
        pid = self._stale_pid()
        if pid is None:
            return
        log.warning("ending Asterisk %r left running by an earlier run (pid %d)", self.name, pid)
        for sig in (signal.SIGTERM, signal.SIGKILL):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
            for _ in range(50):
                if not pid_alive(pid):
                    return
                await asyncio.sleep(0.1)

    def _stale_pid(self) -> int | None:
        """The pid in this instance's pid file, if that process is our Asterisk."""
        try:
            pid = int((self.instance_dir / "run" / "asterisk.pid").read_text().strip())
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except (OSError, ValueError):
            return None
        if cmdline and cmdline[0].endswith(b"asterisk") and self.conf_path.encode() in cmdline:
            return pid
        return None

    @staticmethod
    def _check_port_free(port: int) -> None:
        if not port_is_free(port):
            raise LocalAsteriskError(
                f"AMI port 127.0.0.1:{port} is already in use (another Asterisk? "
                f"see `ss -ltnp 'sport = :{port}'`); stop it or choose another port")

    def _lay_out(self) -> None:
        inst = self.instance_dir
        etc = inst / "etc"
        if etc.exists():
            shutil.rmtree(etc)
        for sub in ("etc", "run", "log", "log/cdr-csv", "spool", "lib", "lib/keys", "cache"):
            (inst / sub).mkdir(parents=True, exist_ok=True)
        # Stale control socket and pid file from a crashed run would confuse -r and -x.
        for stale in ("asterisk.ctl", "asterisk.pid"):
            with contextlib.suppress(FileNotFoundError):
                (inst / "run" / stale).unlink()
        for source in (self.conf_dir, self.overlay_dir):
            if source is None:
                continue
            for path in sorted(source.iterdir()):
                if path.is_file():
                    shutil.copy2(path, etc / path.name)
        if self._ami_port is not None:
            self._rewrite(etc / "manager.conf", r"^(\s*port\s*=\s*)\d+", rf"\g<1>{self._ami_port}")
        if self.rtp_ports is not None:
            first, last = self.rtp_ports
            self._rewrite(etc / "rtp.conf", r"^(\s*rtpstart\s*=\s*)\d+", rf"\g<1>{first}")
            self._rewrite(etc / "rtp.conf", r"^(\s*rtpend\s*=\s*)\d+", rf"\g<1>{last}")
        packaged = self._packaged_dirs()
        d = self.inner_dir
        (etc / "asterisk.conf").write_text(
            "; Written by gateway/sandbox/local_asterisk.py for this instance only.\n"
            "[directories]\n"
            f"astetcdir => {d}/etc\n"
            f"astmoddir => {packaged['astmoddir']}\n"
            f"astdatadir => {packaged['astdatadir']}\n"
            f"astagidir => {packaged['astdatadir']}/agi-bin\n"
            f"astsbindir => /usr/sbin\n"
            f"astvarlibdir => {d}/lib\n"
            f"astdbdir => {d}/lib\n"
            f"astkeydir => {d}/lib\n"
            f"astspooldir => {d}/spool\n"
            f"astrundir => {d}/run\n"
            f"astlogdir => {d}/log\n"
            f"astcachedir => {d}/cache\n"
            "\n[options]\n"
            "verbose = 3\n"
            "documentation_language = en_US\n"
            "defaultlanguage = en\n"
        )

    def _packaged_dirs(self) -> dict[str, str]:
        """astmoddir and astdatadir as the Debian package's own asterisk.conf has them."""
        assert self.root is not None
        found = {"astmoddir": "/usr/lib/x86_64-linux-gnu/asterisk/modules",
                 "astdatadir": "/usr/share/asterisk"}
        with contextlib.suppress(OSError):
            text = (self.root / "etc/asterisk/asterisk.conf").read_text()
            for key in found:
                match = re.search(rf"^\s*{key}\s*=>\s*(\S+)", text, re.M)
                if match:
                    found[key] = match.group(1)
        return found

    def _ensure_moh(self) -> None:
        """musiconhold.conf plays <astdatadir>/moh; the chroot has no music package, so
        write a soft two-note chime there if it is empty (8 kHz signed linear, .sln)."""
        assert self.root is not None
        moh = self.root / self._packaged_dirs()["astdatadir"].lstrip("/") / "moh"
        moh.mkdir(parents=True, exist_ok=True)
        if any(moh.iterdir()):
            return
        rate, samples = 8000, array.array("h")
        for freq in (523.25, 659.25):  # C5, E5 at about -20 dBFS, with a fade-out
            n = int(0.4 * rate)
            samples.extend(int(3000 * (1 - i / n) * math.sin(2 * math.pi * freq * i / rate))
                           for i in range(n))
        samples.extend([0] * int(1.2 * rate))
        if sys.byteorder != "little":
            samples.byteswap()
        (moh / "gateway-chime.sln").write_bytes(samples.tobytes())

    async def _mount_proc(self) -> None:
        assert self.root is not None
        proc_dir = self.root / "proc"
        if is_mount(proc_dir):
            return
        proc = await asyncio.create_subprocess_exec(
            "mount", "-t", "proc", "proc", str(proc_dir),
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
        out, _ = await proc.communicate()
        if proc.returncode != 0 and not is_mount(proc_dir):
            raise LocalAsteriskError(f"cannot mount proc in {proc_dir}: {out.decode().strip()}")

    async def _wait_booted(self) -> None:
        """Poll until AMI accepts our login and reports FullyBooted."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.boot_timeout_s
        last_error = "AMI not answering yet"
        while loop.time() < deadline:
            if self._proc is None or self._proc.poll() is not None:
                code = self._proc.returncode if self._proc else None
                raise LocalAsteriskError(
                    f"Asterisk {self.name!r} exited during start (code {code}):\n"
                    + self.log_tail())
            try:
                await asyncio.wait_for(self._ami_fully_booted(), 5)
                return
            except (OSError, TimeoutError, asyncio.IncompleteReadError) as exc:
                last_error = f"{type(exc).__name__}: {exc}"
            await asyncio.sleep(0.2)
        raise LocalAsteriskError(
            f"Asterisk {self.name!r} not fully booted on AMI 127.0.0.1:{self.ami_port} after "
            f"{self.boot_timeout_s:.0f} s ({last_error}):\n" + self.log_tail())

    async def _ami_fully_booted(self) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", self.ami_port)
        try:
            banner = await reader.readline()
            if not banner.startswith(b"Asterisk Call Manager"):
                raise OSError(f"not an AMI banner: {banner[:60]!r}")
            writer.write(
                f"Action: Login\r\nUsername: {self.ami_username}\r\n"
                f"Secret: {self._ami_secret}\r\nEvents: system\r\n\r\n".encode())
            await writer.drain()
            while True:
                block = (await reader.readuntil(b"\r\n\r\n")).decode(errors="replace")
                if "Response: Error" in block:
                    raise LocalAsteriskError(
                        f"AMI refused the login of {self.ami_username!r} on port "
                        f"{self.ami_port}: check manager.conf in {self.conf_dir}")
                if "Event: FullyBooted" in block:
                    return
        finally:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()

    async def _run_cli(self, command: str) -> str:
        assert self.root is not None
        proc = await asyncio.create_subprocess_exec(
            "chroot", str(self.root), ASTERISK, "-C", self.conf_path, "-rx", command,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
        out, _ = await proc.communicate()
        return out.decode(errors="replace")

    @staticmethod
    def _rewrite(path: Path, pattern: str, replacement: str) -> None:
        text, count = re.subn(pattern, replacement, path.read_text(), count=1, flags=re.M)
        if not count:
            raise LocalAsteriskError(f"{path.name}: no line matching {pattern!r} to rewrite")
        path.write_text(text)
