"""Shared fixtures: one real Asterisk (from the sandbox chroot) for the whole test session.

Tests marked ``asterisk`` use it through ``asterisk`` (the running
:class:`~gateway.sandbox.local_asterisk.LocalAsterisk`) and ``ami_settings``. AMI listens on
127.0.0.1:5038, or on ``$WA_TEST_AMI_PORT``. Tests marked ``postgres`` use a real PostgreSQL
(``pg_url``: a fresh database each) started once per session by tests/pg.py.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest

from gateway.config import AmiSettings, Secret
from gateway.sandbox.local_asterisk import LocalAsterisk
from tests.pg import LocalPostgres, local_postgres
from tests.ports import ami_port, suite_name

OVERLAY = Path(__file__).parent / "e2e" / "asterisk-overlay"

@pytest.fixture(scope="session")
def asterisk() -> Iterator[LocalAsterisk]:
    """A real Asterisk running the sample config plus tests/e2e/asterisk-overlay/.

    Synchronous on purpose: it is just a process, and each asyncio.run() here leaves nothing
    bound to an event loop, so tests in their own loops can use it.
    """
    instance = LocalAsterisk(suite_name(), overlay_dir=OVERLAY, ami_port=ami_port())
    asyncio.run(instance.start())
    try:
        yield instance
    finally:
        asyncio.run(instance.stop())


@pytest.fixture
def ami_settings(asterisk: LocalAsterisk) -> AmiSettings:
    return AmiSettings(host="127.0.0.1", port=asterisk.ami_port, username="gateway",
                       secret=Secret("gateway-secret"), connect_timeout_s=10.0,
                       action_timeout_s=5.0)


@pytest.fixture(scope="session")
def postgres() -> Iterator[LocalPostgres]:
    """A real PostgreSQL server (tests/pg.py) for the whole session, started on first use.

    No skip: if it cannot start, every test that needs it fails with the reason."""
    with local_postgres() as server:
        yield server


@pytest.fixture
def pg_url(postgres: LocalPostgres) -> str:
    """A fresh database of its own for one test: its ``postgresql://`` URL (password in it)."""
    return postgres.create_database()


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def ledger_at(request: pytest.FixtureRequest, tmp_path: Path) -> str | Path:
    """Where a permission ledger lives: an SQLite file (in a folder it must create), or
    (marked ``postgres``) a PostgreSQL database of its own. Two ledgers opened on it stand
    for two gateways sharing one store."""
    if request.param == "postgres":
        return request.getfixturevalue("pg_url")
    return tmp_path / "var" / "gateway.sqlite3"
