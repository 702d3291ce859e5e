"""compose.yml cannot run here (no Docker engine): check at least that everything it builds
from and mounts exists in the repo, so a user with Docker does not meet a missing file."""

from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]


def test_compose_file_builds_and_mounts_what_the_repo_has():
    compose = yaml.safe_load((ROOT / "compose.yml").read_text())
    services = compose["services"]
    assert {"asterisk", "gateway", "prometheus", "grafana"} <= set(services)
    for name, service in services.items():
        build = service.get("build")
        if build:
            context = ROOT / (build if isinstance(build, str) else build.get("context", "."))
            dockerfile = "Dockerfile" if isinstance(build, str) else \
                build.get("dockerfile", "Dockerfile")
            assert (context / dockerfile).is_file(), f"{name}: {dockerfile} missing"
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("./") and source != "./gateway.yaml":  # the user's own config
                assert (ROOT / source).exists(), f"{name}: {source} missing"
    gateway_mounts = [v.split(":")[0] for v in services["gateway"]["volumes"]]
    assert "./gateway.yaml" in gateway_mounts
    assert (ROOT / "gateway.example.yaml").is_file()  # what gateway.yaml is copied from
