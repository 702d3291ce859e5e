"""The gateway's one YAML file, turned into typed settings and validated at start.

This module is the entry (:func:`load_config`, :func:`parse_config`) and the one import path
for the settings' types, which live in gateway/config_types.py; the reader and the parsers of
the richer sections are in gateway/config_reader.py.

Every error names the key path (``numbers[0].context``) and what is wrong with it, and all
errors are reported together so an admin fixes the file in one pass. Secrets come from the
environment through ``${VAR}`` references and are wrapped in :class:`Secret`, whose ``repr``
and ``str`` never show the value, so a logged config cannot leak them.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import yaml

from gateway.calling_settings import validate_calling
from gateway.config_reader import (
    Reader,
    check_port_overlap,
    read_accountcode,
    read_ami_servers,
    read_crm_events,
    read_gateway,
    read_media_mode,
    read_recording,
    read_store_url,
    read_username_caller_id,
)
from gateway.config_types import (  # noqa: F401 (the settings' types, imported from here)
    GRAPH_VERSION_WARN_DAYS,
    GRAPH_VERSIONS_UNTIL,
    LIVE_KEYS,
    USERNAME_PLACEHOLDERS,
    AmiSettings,
    ApiSettings,
    AsteriskSettings,
    Config,
    ConfigError,
    CrmEventsSettings,
    GatewaySettings,
    HttpSettings,
    MediaSettings,
    NumberSettings,
    PortRange,
    RecordingSettings,
    Secret,
    ServiceSettings,
    StoreSettings,
    UsernameCallerId,
    WhatsAppSettings,
    graph_version_warning,
)
from gateway.media.codecs import ASTERISK_CODECS


def parse_config(data: Any, env: dict[str, str] | None = None, source: str = "<memory>",
                 *, secrets: bool = True) -> Config:
    """Validate parsed YAML; raise :class:`ConfigError` listing every problem.
    ``secrets=False`` leaves every secret empty and unchecked: for commands that use none."""
    r = Reader(dict(os.environ) if env is None else env, secrets)
    if not isinstance(data, dict):
        raise ConfigError([f"{source}: the file must hold a mapping of sections"])
    r.unknown(data, {"whatsapp", "numbers", "asterisk", "media", "http", "api", "store",
                     "crm_events", "service", "gateway"}, "")

    wa = r.section(data, "whatsapp", "whatsapp")
    r.unknown(wa, {"graph_url", "access_token", "app_secret", "verify_token", "graph_timeout"},
              "whatsapp")
    graph_url = r.string(wa, "graph_url", "whatsapp.graph_url",
                         default="https://graph.facebook.com/v25.0") or ""
    if graph_url and not re.match(r"^https?://[^/]+/v\d+\.\d+/?$", graph_url):
        r.fail("whatsapp.graph_url",
               f"must be an http(s) URL ending in the API version, like "
               f"https://graph.facebook.com/v25.0, got {graph_url!r}")
    whatsapp = WhatsAppSettings(
        graph_url=graph_url.rstrip("/"),
        access_token=r.secret(wa, "access_token", "whatsapp.access_token"),
        app_secret=r.secret(wa, "app_secret", "whatsapp.app_secret"),
        verify_token=r.secret(wa, "verify_token", "whatsapp.verify_token"),
        graph_timeout_s=r.number(wa, "graph_timeout", "whatsapp.graph_timeout", 10.0, 0.1),
    )

    numbers: list[NumberSettings] = []
    raw_numbers = data.get("numbers")
    if not isinstance(raw_numbers, list) or not raw_numbers:
        r.fail("numbers", "must be a list with at least one business number")
        raw_numbers = []
    seen: set[str] = set()
    for i, item in enumerate(raw_numbers):
        path = f"numbers[{i}]"
        if not isinstance(item, dict):
            r.fail(path, "must be a mapping with phone_number_id and context")
            continue
        r.unknown(item, {"phone_number_id", "display_number", "context", "extension", "max_calls",
                         "closed_context", "closed_extension", "calling",
                         "username_caller_id", "accountcode", "recording", "media"}, path)
        pnid = r.string(item, "phone_number_id", f"{path}.phone_number_id") or ""
        if pnid and not pnid.isdigit():
            r.fail(f"{path}.phone_number_id", f"must be Meta's numeric id, got {pnid!r}")
        if pnid in seen:
            r.fail(f"{path}.phone_number_id", f"{pnid} is listed twice")
        seen.add(pnid)
        calling = item.get("calling") or {}
        if not isinstance(calling, dict):
            r.fail(f"{path}.calling", "must be a mapping of Meta calling settings")
            calling = {}
        else:
            r.problems.extend(validate_calling(calling, f"{path}.calling"))
        numbers.append(NumberSettings(
            phone_number_id=pnid,
            context=r.string(item, "context", f"{path}.context") or "",
            extension=r.string(item, "extension", f"{path}.extension", default="s") or "s",
            display_number=r.string(item, "display_number", f"{path}.display_number",
                                    required=False),
            max_calls=r.integer(item, "max_calls", f"{path}.max_calls", 100, 1, 1000),
            closed_context=r.string(item, "closed_context", f"{path}.closed_context",
                                    required=False),
            closed_extension=r.string(item, "closed_extension", f"{path}.closed_extension",
                                      default="s") or "s",
            calling=calling,
            username_caller_id=read_username_caller_id(r, item.get("username_caller_id"),
                                                   f"{path}.username_caller_id"),
            accountcode=read_accountcode(r, item, f"{path}.accountcode"),
            recording=read_recording(r, item.get("recording"), f"{path}.recording"),
            media_mode=read_media_mode(r, item.get("media"), calling, path),
        ))

    ast = r.section(data, "asterisk", "asterisk")
    r.unknown(ast, {"ami", "servers", "policy", "codec", "ami_down_grace"}, "asterisk")
    primary, servers, policy = read_ami_servers(r, ast)
    codec = str(ast.get("codec", "g722")).lower()
    if codec not in ASTERISK_CODECS:
        r.fail("asterisk.codec", f"must be one of {', '.join(ASTERISK_CODECS)}, got {codec!r}")
        codec = "g722"
    asterisk = AsteriskSettings(
        ami=primary, servers=servers, policy=policy,
        codec=codec,
        ami_down_grace_s=r.number(ast, "ami_down_grace", "asterisk.ami_down_grace", 10.0, 0.0),
    )

    med = r.section(data, "media", "media", required=False)
    r.unknown(med, {"rtp_address", "rtp_ports", "webrtc_addresses", "public_ip", "opus_bitrate",
                    "opus_complexity", "connect_timeout", "no_media_timeout", "webrtc_ports"},
              "media")
    raw_webrtc = med.get("webrtc_addresses") or []
    if not isinstance(raw_webrtc, list):
        r.fail("media.webrtc_addresses", "must be a list of IP addresses")
        raw_webrtc = []
    webrtc = [r.address(a, f"media.webrtc_addresses[{i}]") for i, a in enumerate(raw_webrtc)]
    public_ip = med.get("public_ip")
    media = MediaSettings(
        rtp_address=r.address(med.get("rtp_address", "127.0.0.1"), "media.rtp_address")
        or "127.0.0.1",
        rtp_ports=r.port_range(med.get("rtp_ports"), "media.rtp_ports", MediaSettings.rtp_ports),
        webrtc_ports=r.port_range(med.get("webrtc_ports"), "media.webrtc_ports", None)
        if med.get("webrtc_ports") is not None else None,
        webrtc_addresses=tuple(a for a in webrtc if a),
        public_ip=r.address(public_ip, "media.public_ip") if public_ip else None,
        opus_bitrate=r.integer(med, "opus_bitrate", "media.opus_bitrate", 32000, 6000, 128000),
        opus_complexity=r.integer(med, "opus_complexity", "media.opus_complexity", 3, 0, 10),
        connect_timeout_s=r.number(med, "connect_timeout", "media.connect_timeout", 20.0, 0.5),
        no_media_timeout_s=r.number(med, "no_media_timeout", "media.no_media_timeout", 30.0,
                                    1.0),
    )

    check_port_overlap(r, media)

    http_raw = r.section(data, "http", "http", required=False)
    r.unknown(http_raw, {"listen"}, "http")
    http = r.host_port(http_raw.get("listen"), "http.listen", HttpSettings())

    api_raw = r.section(data, "api", "api", required=False)
    r.unknown(api_raw, {"tokens"}, "api")
    raw_tokens = api_raw.get("tokens") or []
    if not isinstance(raw_tokens, list):
        r.fail("api.tokens", "must be a list of tokens (use ${ENV} references)")
        raw_tokens = []
    tokens = tuple(Secret(r.expand(str(t), f"api.tokens[{i}]") if r.secrets else "")
                   for i, t in enumerate(raw_tokens))

    store_raw = r.section(data, "store", "store", required=False)
    r.unknown(store_raw, {"path", "url", "media_dir"}, "store")
    store = StoreSettings(path=r.string(store_raw, "path", "store.path",
                                        default=StoreSettings.path) or StoreSettings.path,
                          url=read_store_url(r, store_raw),
                          media_dir=r.string(store_raw, "media_dir", "store.media_dir",
                                             required=False))
    gateway = read_gateway(r, r.section(data, "gateway", "gateway", required=False), http)
    crm_events = read_crm_events(r, r.section(data, "crm_events", "crm_events", required=False))

    service_raw = r.section(data, "service", "service", required=False)
    r.unknown(service_raw, {"shutdown_grace"}, "service")
    service = ServiceSettings(shutdown_grace_s=r.number(
        service_raw, "shutdown_grace", "service.shutdown_grace", 30.0, 0.0))

    if r.problems:
        raise ConfigError(r.problems)
    return Config(whatsapp=whatsapp, numbers=tuple(numbers), asterisk=asterisk, media=media,
                  http=http, api=ApiSettings(tokens=tokens), store=store,
                  crm_events=crm_events, service=service, source=source, gateway=gateway)


def load_config(path: str | Path, env: dict[str, str] | None = None, *,
                secrets: bool = True) -> Config:
    """Read and validate the YAML file at ``path`` (``secrets``: see :func:`parse_config`)."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigError([f"{path}: cannot read ({exc.strerror})"]) from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark else ""
        raise ConfigError([f"{path}{where}: not valid YAML ({getattr(exc, 'problem', exc)})"]) \
            from None
    return parse_config(data, env=env, source=str(path), secrets=secrets)
