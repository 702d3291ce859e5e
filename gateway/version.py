"""The installed version, read from the package metadata (pyproject's ``version``), so
``--version``, the ``build_info`` metric and the logs all say the same thing."""

from __future__ import annotations

from importlib import metadata

DISTRIBUTION = "whatsapp-asterisk-gateway"


def version() -> str:
    """``0.1.0``, or ``0+unknown`` when running from a tree that was never installed."""
    try:
        return metadata.version(DISTRIBUTION)
    except metadata.PackageNotFoundError:
        return "0+unknown"
