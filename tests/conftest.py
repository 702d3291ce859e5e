"""Shared fixtures: one real Asterisk (from the sandbox chroot) for the whole test session.

Tests marked ``asterisk`` use it through ``asterisk`` (the running
:class:`~gateway.sandbox.local_asterisk.LocalAsterisk`) and ``ami_settings``. AMI listens on
127.0.0.1:5038, or on ``$WA_TEST_AMI_PORT``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest

from gateway.config import AmiSettings, Secret
from gateway.sandbox.local_asterisk import LocalAsterisk
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
