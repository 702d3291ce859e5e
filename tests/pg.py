"""A real PostgreSQL for the tests: ``initdb`` + ``pg_ctl`` in a temporary folder, on a free
port of 127.0.0.1, stopped (and the folder removed) at the end of the session.

Debian's ``postgresql`` package (installed by ``scripts/setup.sh --test``) puts the server's
programs in ``/usr/lib/postgresql/<major>/bin``, not on PATH; the newest there is used. The
server refuses to run as root ("root execution of the PostgreSQL server is not permitted"), so
a root test run starts it as the ``postgres`` system user the package creates, through
``runuser``. TCP logins need a password (scram-sha-256), as a production server would: the
tests prove the store takes it from the URL or from libpq's ``PGPASSWORD``.

There is no skip: a suite that cannot start PostgreSQL fails, with the reason and the
server's log, because CI must never pass by testing SQLite alone.
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import shutil
import subprocess
import tempfile
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from tests.ports import free_tcp_port

USER = "postgres"
PASSWORD = "wa-test-secret"


class PostgresUnavailable(RuntimeError):
    """PostgreSQL could not be started for the tests; the message says why and what to do."""


def server_bin_dir() -> Path:
    """Where ``initdb``/``pg_ctl`` live: Debian's versioned folder, else PATH."""
    dirs = sorted(glob.glob("/usr/lib/postgresql/*/bin"),
                  key=lambda d: int(Path(d).parent.name) if Path(d).parent.name.isdigit() else 0)
    for d in reversed(dirs):
        if (Path(d) / "initdb").is_file():
            return Path(d)
    found = shutil.which("initdb")
    if found:
        return Path(found).resolve().parent
    raise PostgresUnavailable("PostgreSQL's initdb was not found: run scripts/setup.sh --test "
                              "(it installs Debian's postgresql package)")


@dataclass
class LocalPostgres:
    """One throwaway cluster; :meth:`url` names a database in it."""

    port: int
    root: Path

    def url(self, database: str = "postgres", *, password: bool = True) -> str:
        secret = f":{PASSWORD}" if password else ""
        return f"postgresql://{USER}{secret}@127.0.0.1:{self.port}/{database}"

    def create_database(self) -> str:
        """A fresh, empty database (one per test): its URL."""
        import psycopg

        name = "t_" + uuid.uuid4().hex[:16]
        with psycopg.connect(self.url(), autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)

    @contextlib.contextmanager
    def refusable_database(self) -> Iterator[tuple[str, Callable[[], None],
                                                   Callable[[], None]]]:
        """A fresh database owned by a role of its own: its URL, ``refuse()`` (the role's
        connections are dropped and its logins refused, as during a failover) and
        ``restore()``."""
        import psycopg

        db_url = self.create_database()
        name = db_url.rsplit("/", 1)[1]
        role = "gw_" + uuid.uuid4().hex[:10]
        admin = psycopg.connect(self.url(), autocommit=True)
        admin.execute(f"CREATE ROLE {role} LOGIN PASSWORD 'gw-pass'")
        with psycopg.connect(db_url, autocommit=True) as db:
            db.execute(f'ALTER DATABASE "{name}" OWNER TO {role}')

        def refuse() -> None:
            admin.execute(f"ALTER ROLE {role} NOLOGIN")
            admin.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                          "WHERE usename = %s", (role,))

        try:
            yield (f"postgresql://{role}:gw-pass@127.0.0.1:{self.port}/{name}", refuse,
                   lambda: admin.execute(f"ALTER ROLE {role} LOGIN"))
        finally:
            admin.close()


def _server_user() -> pwd.struct_passwd | None:
    """Who runs the server: None for the current user, the ``postgres`` user under root."""
    if os.geteuid() != 0:
        return None
    try:
        return pwd.getpwnam(USER)
    except KeyError:
        raise PostgresUnavailable(
            f"running as root, and there is no {USER!r} user to run PostgreSQL as (it refuses "
            f"root): run scripts/setup.sh --test (Debian's postgresql package creates it)"
        ) from None


def _as_server_user(cmd: list[str]) -> list[str]:
    return cmd if _server_user() is None else ["runuser", "-u", USER, "--", *cmd]


def _run(cmd: list[str], what: str, log: Path | None = None) -> None:
    try:
        done = subprocess.run(_as_server_user(cmd), capture_output=True, text=True,
                              timeout=120, check=False)
    except OSError as exc:
        raise PostgresUnavailable(f"{what}: cannot run {cmd[0]}: {exc}") from None
    if done.returncode != 0:
        tail = log.read_text(errors="replace")[-3000:] if log and log.exists() else ""
        raise PostgresUnavailable(f"{what} failed ({done.returncode}): "
                                  f"{done.stderr.strip() or done.stdout.strip()}\n{tail}")


@contextlib.contextmanager
def local_postgres() -> Iterator[LocalPostgres]:
    """Start a cluster; stop it and remove its folder when the block ends."""
    bindir = server_bin_dir()
    # Not under pytest's tmp dir: that is private to root (0700) and the server user must
    # reach its data and socket folders.
    root = Path(tempfile.mkdtemp(prefix="wa-test-pg-"))
    data, sockets, log = root / "data", root / "run", root / "server.log"
    sockets.mkdir()
    pwfile = root / "pw"
    pwfile.write_text(PASSWORD + "\n")
    server_user = _server_user()
    if server_user is not None:
        for path in (root, sockets, pwfile):
            os.chown(path, server_user.pw_uid, server_user.pw_gid)
    port = free_tcp_port()
    try:
        _run([str(bindir / "initdb"), "-D", str(data), "-U", USER, "-E", "UTF8",
              "--auth-local=trust", "--auth-host=scram-sha-256", f"--pwfile={pwfile}",
              "--no-sync", "--no-instructions"], "initdb")
        # fsync off: a test cluster never outlives a crash, and the 2-core machine is shared.
        options = (f"-p {port} -k {sockets} -c listen_addresses=127.0.0.1 -c fsync=off "
                   f"-c synchronous_commit=off -c full_page_writes=off")
        _run([str(bindir / "pg_ctl"), "-D", str(data), "-l", str(log), "-o", options,
              "-w", "-t", "60", "start"], f"pg_ctl start on port {port}", log)
    except BaseException:
        shutil.rmtree(root, ignore_errors=True)
        raise
    try:
        yield LocalPostgres(port=port, root=root)
    finally:
        with contextlib.suppress(PostgresUnavailable, subprocess.TimeoutExpired):
            _run([str(bindir / "pg_ctl"), "-D", str(data), "-m", "fast", "-w", "stop"],
                 "pg_ctl stop", log)
        shutil.rmtree(root, ignore_errors=True)

