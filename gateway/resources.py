"""Files the gateway ships besides its code: the sample Asterisk config, the example gateway
config, the monitoring set (Prometheus, Grafana, alert rules), the systemd unit and TLS-proxy
examples, and the Asterisk chroot script.

In a checkout they are the repository's own ``asterisk-conf/``, ``gateway.example.yaml``,
``monitoring/``, ``packaging/`` and ``scripts/asterisk-chroot.sh``; ``gateway/share/`` holds
symlinks to them, and the wheel build copies what the links point at into the package
(pyproject's package-data). So one lookup, relative to this package, finds them both in a
checkout and in an installed wheel, and ``whatsapp-gateway init`` / ``demo`` work from either.
"""

from __future__ import annotations

import shutil
from importlib import resources
from pathlib import Path

from gateway.errors import SetupError

SAMPLE_ASTERISK_CONF = "asterisk-conf"
EXAMPLE_CONFIG = "gateway.example.yaml"
MONITORING = "monitoring"
PACKAGING = "packaging"
ASTERISK_CHROOT_SCRIPT = "asterisk-chroot.sh"

INIT_ITEMS = (SAMPLE_ASTERISK_CONF, EXAMPLE_CONFIG, MONITORING, PACKAGING)
"""What ``init`` writes into a directory, under these same names."""


class ResourceMissing(SetupError, FileNotFoundError):
    """A shipped file is not there: a broken install or a checkout without its symlinks."""


def share_dir() -> Path:
    """The directory holding the shipped files (``gateway/share``)."""
    return Path(str(resources.files("gateway").joinpath("share")))


def resource(name: str) -> Path:
    """The path of one shipped file or directory, by its name in :data:`INIT_ITEMS` or
    :data:`ASTERISK_CHROOT_SCRIPT`."""
    path = share_dir() / name
    if not path.exists():
        raise ResourceMissing(f"{name} is not shipped with this install (looked in {path})")
    return path.resolve()


def write_init(target: Path, *, force: bool = False) -> list[Path]:
    """Copy the sample Asterisk config, the example config, the monitoring set and the
    packaging examples into ``target`` (created if needed). Existing files are kept unless
    ``force``: an admin's edited copy must never be overwritten by accident. Returns the
    files written."""
    target.mkdir(parents=True, exist_ok=True)
    existing = [name for name in INIT_ITEMS if (target / name).exists()]
    if existing and not force:
        raise FileExistsError(f"{', '.join(existing)} already in {target}; "
                              "use --force to overwrite")
    written: list[Path] = []
    for name in INIT_ITEMS:
        source, dest = resource(name), target / name
        if source.is_dir():
            shutil.copytree(source, dest, dirs_exist_ok=True)
            written += sorted(p for p in dest.rglob("*") if p.is_file())
        else:
            shutil.copyfile(source, dest)
            written.append(dest)
    return written
