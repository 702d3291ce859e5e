"""compose.yml cannot run here (no Docker engine): check at least that everything it builds
from and mounts exists in the repo, so a user with Docker does not meet a missing file."""

import re
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


def services() -> dict:
    return yaml.safe_load((ROOT / "compose.yml").read_text())["services"]


def dockerfile_of(service: dict) -> Path:
    build = service["build"]
    if isinstance(build, str):
        return ROOT / build / "Dockerfile"
    return ROOT / build.get("context", ".") / build.get("dockerfile", "Dockerfile")


def test_every_image_is_pinned():
    """No ``latest``, no bare name: an upgrade is a deliberate edit, not a surprise pull."""
    images = {name: s["image"] for name, s in services().items() if "image" in s}
    for name, service in services().items():
        if "build" in service:
            images.update({f"{name} (FROM)": m for m in re.findall(
                r"^FROM\s+(\S+)", dockerfile_of(service).read_text(), re.M)})
    assert len(images) >= 4
    for name, image in images.items():
        assert ":" in image, f"{name}: {image} has no tag"
        tag = image.rsplit(":", 1)[1]
        assert tag != "latest" and re.search(r"\d", tag), f"{name}: {image} is not pinned"


def test_every_service_has_a_healthcheck():
    for name, service in services().items():
        test = service.get("healthcheck", {}).get("test")
        assert test and test[0] in ("CMD", "CMD-SHELL"), name


def test_no_default_grafana_password():
    env = services()["grafana"]["environment"]
    password = env["GF_SECURITY_ADMIN_PASSWORD"]
    assert re.fullmatch(r"\$\{GRAFANA_ADMIN_PASSWORD:\?[^}]+\}", password), password
    assert env.get("GF_USERS_ALLOW_SIGN_UP") == "false"


def test_env_example_lists_every_variable():
    example = (ROOT / ".env.example").read_text()
    defined = set(re.findall(r"^([A-Z][A-Z0-9_]*)=", example, re.M))
    used: set[str] = set()
    for name in ("compose.yml", "gateway.example.yaml"):
        for line in (ROOT / name).read_text().splitlines():
            used |= set(re.findall(r"\$\{([A-Z][A-Z0-9_]*)", line.split("#")[0]))
    assert used and used <= defined, used - defined
    assert all(re.fullmatch(r"[A-Z0-9_]+=", line) for line in example.splitlines()
               if "=" in line and not line.startswith("#")), "no values in the example"


def test_services_run_as_non_root():
    """Our images switch user; the upstream ones (prometheus: nobody, grafana: 472) already
    run unprivileged, so compose must not force them back to root."""
    for name, service in services().items():
        assert str(service.get("user", "")).split(":")[0] not in ("root", "0"), name
        if "build" in service:
            users = re.findall(r"^USER\s+(\S+)", dockerfile_of(service).read_text(), re.M)
            assert users and users[-1] not in ("root", "0"), f"{name} runs as root"


def test_servers_listen_on_loopback():
    svc = services()
    assert "--web.listen-address=127.0.0.1:9090" in svc["prometheus"]["command"]
    assert svc["grafana"]["environment"]["GF_SERVER_HTTP_ADDR"] == "127.0.0.1"
