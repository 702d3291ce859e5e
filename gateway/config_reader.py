"""Reading the YAML into settings: the reader that walks it collecting every problem (each
naming its key path), and the parsers of the sections that need more than a type check.

:func:`gateway.config.parse_config` drives them; the typed results are in
gateway/config_types.py.
"""

from __future__ import annotations

import ipaddress
import re
from typing import Any

from gateway.config_types import (
    AMI_POLICIES,
    USERNAME_PLACEHOLDERS,
    AmiSettings,
    CrmEventsSettings,
    GatewaySettings,
    HttpSettings,
    MediaSettings,
    PortRange,
    RecordingSettings,
    Secret,
    UsernameCallerId,
)
from gateway.instance import GONE_AFTER_S, HEARTBEAT_S, INSTANCE_ID, derive_instance_id

_ENV_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")
GONE_AFTER_BEATS = 3
"""``gateway.gone_after_s`` spans at least this many heartbeats: one late write must not make
a live gateway look gone."""
MEDIA_MODES = ("opus", "passthrough", "auto")
ACCOUNTCODE = re.compile(r"[A-Za-z0-9_.@+-]{1,79}")
"""What an accountcode may hold: Asterisk keeps at most 79 characters (AST_MAX_ACCOUNT_CODE
is 80 with the NUL), and the CSV, SQL and AMI paths it travels are safest without quotes,
commas, spaces or semicolons."""


class Reader:
    """Walks the parsed YAML collecting problems instead of stopping at the first one."""

    def __init__(self, env: dict[str, str], secrets: bool = True):
        self.env = env
        self.secrets = secrets
        """False: secrets may be unset (commands that use none of them, e.g. ``calls list``)."""
        self.problems: list[str] = []

    def fail(self, key: str, problem: str) -> None:
        self.problems.append(f"{key}: {problem}")

    def section(self, data: dict, key: str, path: str, required: bool = True) -> dict:
        value = data.get(key)
        if value is None:
            if required:
                self.fail(path, "missing section")
            return {}
        if not isinstance(value, dict):
            self.fail(path, f"must be a mapping, got {type(value).__name__}")
            return {}
        return value

    def unknown(self, data: dict, known: set[str], path: str) -> None:
        for key in data:
            if key not in known:
                self.fail(f"{path}.{key}" if path else str(key), "unknown key (typo?)")

    def expand(self, value: str, path: str) -> str:
        def sub(match: re.Match) -> str:
            name, default = match.group(1), match.group(2)
            if name in self.env:
                return self.env[name]
            if default is not None:
                return default
            self.fail(path, f"environment variable {name} is not set")
            return ""

        return _ENV_REF.sub(sub, value)

    def string(self, data: dict, key: str, path: str, default: str | None = None,
               required: bool = True) -> str | None:
        value = data.get(key)
        if value is None:
            if default is None and required:
                self.fail(path, "missing")
            return default
        if isinstance(value, bool) or not isinstance(value, (str, int)):
            self.fail(path, f"must be a string, got {type(value).__name__}")
            return default
        reported = len(self.problems)
        text = self.expand(str(value), path)
        if required and not text and len(self.problems) == reported:
            self.fail(path, "must not be empty")
        return text

    def secret(self, data: dict, key: str, path: str, required: bool = True) -> Secret:
        if not self.secrets:
            return Secret("")
        return Secret(self.string(data, key, path, required=required) or "")

    def integer(self, data: dict, key: str, path: str, default: int, low: int, high: int) -> int:
        value = data.get(key, default)
        if isinstance(value, str):
            value = self.expand(value, path)
        try:
            number = int(value)
        except (TypeError, ValueError):
            self.fail(path, f"must be a whole number, got {value!r}")
            return default
        if not low <= number <= high:
            self.fail(path, f"must be between {low} and {high}, got {number}")
            return default
        return number

    def number(self, data: dict, key: str, path: str, default: float, low: float) -> float:
        value = data.get(key, default)
        try:
            number = float(value)
        except (TypeError, ValueError):
            self.fail(path, f"must be a number, got {value!r}")
            return default
        if number < low:
            self.fail(path, f"must be at least {low}, got {number}")
            return default
        return number

    def address(self, value: Any, path: str) -> str | None:
        try:
            return str(ipaddress.ip_address(str(value)))
        except ValueError:
            self.fail(path, f"must be an IP address, got {value!r}")
            return None

    def host_port(self, value: Any, path: str, default: HttpSettings) -> HttpSettings:
        if value is None:
            return default
        text = str(value)
        host, sep, port = text.rpartition(":")
        if not sep or not port.isdigit() or not 0 <= int(port) < 65536:
            self.fail(path, f"must be HOST:PORT (port 0 = any free port), got {text!r}")
            return default
        return HttpSettings(host=host.strip("[]") or "0.0.0.0", port=int(port))

    def port_range(self, value: Any, path: str, default: PortRange) -> PortRange:
        if value is None:
            return default
        match = re.fullmatch(r"\s*(\d+)\s*-\s*(\d+)\s*", str(value))
        if not match:
            self.fail(path, f"must be FIRST-LAST, e.g. 40000-40999, got {value!r}")
            return default
        first, last = int(match.group(1)), int(match.group(2))
        if not 1024 <= first <= last <= 65535:
            self.fail(path, f"must lie within 1024-65535 with FIRST <= LAST, got {value!r}")
            return default
        return PortRange(first, last)


_PHONE_LIKE = re.compile(r"\+?[\d\s().-]{7,}")


def read_username_caller_id(r: Reader, raw: Any, path: str) -> UsernameCallerId:
    if raw is None:
        return UsernameCallerId()
    if not isinstance(raw, dict):
        r.fail(path, "must be a mapping with name and/or number")
        return UsernameCallerId()
    r.unknown(raw, {"name", "number"}, path)
    out = {}
    for key, default in (("name", UsernameCallerId.name), ("number", UsernameCallerId.number)):
        value = raw.get(key, default)
        if value is None:
            value = ""
        if not isinstance(value, str):
            r.fail(f"{path}.{key}", f"must be a string, got {type(value).__name__}")
            continue
        try:
            value.format(**dict.fromkeys(USERNAME_PLACEHOLDERS, "x"))
        except (KeyError, IndexError, ValueError) as exc:
            r.fail(f"{path}.{key}", f"unknown placeholder {exc} (use "
                   + ", ".join("{" + p + "}" for p in USERNAME_PLACEHOLDERS) + ")")
            continue
        out[key] = value
    number = out.get("number", "")
    if _PHONE_LIKE.fullmatch(number.strip()):
        r.fail(f"{path}.number", f"{number!r} looks like a phone number: a caller without one "
               "must not get a made-up number that could be dialled back over PSTN (leave it "
               "empty, or use a short extension, text or {user_id})")
    return UsernameCallerId(**out)


def read_store_url(r: Reader, raw: dict) -> str | None:
    """``store.url``: a PostgreSQL URL libpq accepts, checked now so a typo stops the start
    with the key's name, not the first call. The message never repeats the URL (it may hold
    a password)."""
    url = r.string(raw, "url", "store.url", required=False)
    if not url:
        return None
    if not url.startswith(("postgresql://", "postgres://")):
        r.fail("store.url", "must be a postgresql://user@host:port/database URL (leave it out "
               "for the SQLite file at store.path)")
        return None
    try:
        from psycopg.conninfo import conninfo_to_dict
    except ImportError:
        r.fail("store.url", "PostgreSQL needs psycopg: install the gateway with its postgres "
               "extra, whatsapp-asterisk-gateway[postgres]")
        return None
    try:
        conninfo_to_dict(url)
    except Exception as exc:  # noqa: BLE001 - psycopg.ProgrammingError, its wording varies
        r.fail("store.url", f"not a valid PostgreSQL URL ({type(exc).__name__})")
        return None
    return url


def read_gateway(r: Reader, raw: dict, http: HttpSettings) -> GatewaySettings:
    """``gateway.instance_id``, derived from the host (and the HTTP listen address, so two
    gateways on one host differ) when not given; ``heartbeat_s`` and ``gone_after_s``."""
    r.unknown(raw, {"instance_id", "heartbeat_s", "gone_after_s"}, "gateway")
    beat = r.number(raw, "heartbeat_s", "gateway.heartbeat_s", HEARTBEAT_S, 0.1)
    gone = r.number(raw, "gone_after_s", "gateway.gone_after_s", GONE_AFTER_S, 0.3)
    if gone < GONE_AFTER_BEATS * beat:
        r.fail("gateway.gone_after_s", f"must be at least {GONE_AFTER_BEATS} x "
               f"gateway.heartbeat_s ({GONE_AFTER_BEATS * beat:g} s), got {gone:g}: a live "
               "gateway whose write is a moment late would be taken for gone and its calls "
               "ended")
    given = r.string(raw, "instance_id", "gateway.instance_id", required=False)
    if given is None:
        return GatewaySettings(derive_instance_id(f"{http.host}:{http.port}"), beat, gone)
    if not INSTANCE_ID.fullmatch(given):
        r.fail("gateway.instance_id", f"{given!r}: use 1-32 lower-case letters, digits and "
               "inner hyphens (it goes into every Asterisk channel id)")
    elif re.search(r"-w\d+$", given):
        r.fail("gateway.instance_id", f"{given!r}: must not end in -w<digits>, which names a "
               "worker of serve --workers N (gateway/workers/identity.py)")
    return GatewaySettings(given, beat, gone)


RECORDING_LANGUAGE = re.compile(r"[a-z]{2}(_[A-Z]{2})?")


def read_media_mode(r: Reader, raw: Any, calling: dict[str, Any], number: str) -> str:
    """``numbers[].media.mode``. ``passthrough`` with the number's calling settings in this
    file needs ``calling.audio.additional_codecs``: without it Meta never offers G.711
    (docs/meta-2026-settings-events.md §1)."""
    path = f"{number}.media"
    if raw is None:
        return "opus"
    if not isinstance(raw, dict):
        r.fail(path, f"must be a mapping with mode ({', '.join(MEDIA_MODES)})")
        return "opus"
    r.unknown(raw, {"mode"}, path)
    mode = raw.get("mode", "opus")
    if mode not in MEDIA_MODES:
        r.fail(f"{path}.mode", f"must be one of {', '.join(MEDIA_MODES)}, got {mode!r}")
        return "opus"
    codecs = (calling.get("audio") or {}).get("additional_codecs") \
        if isinstance(calling.get("audio"), dict) else None
    if mode == "passthrough" and calling and not codecs:
        r.fail(f"{path}.mode", f"passthrough needs {number}.calling.audio.additional_codecs "
                               "(PCMU and/or PCMA): without it WhatsApp offers Opus only")
    return mode


def read_recording(r: Reader, raw: Any, path: str) -> RecordingSettings | None:
    """``numbers[].recording``: purpose, announcement_language, audio, transcription,
    directions (docs/meta-2026-settings-events.md §4)."""
    if raw is None:
        return None
    if not isinstance(raw, dict):
        r.fail(path, "must be a mapping with purpose (and announcement_language, audio, "
                     "transcription, directions)")
        return None
    r.unknown(raw, {"purpose", "announcement_language", "audio", "transcription", "directions"},
              path)
    purpose = r.string(raw, "purpose", f"{path}.purpose") or ""
    if len(purpose) > 250:
        r.fail(f"{path}.purpose", f"Meta allows at most 250 characters, got {len(purpose)}")
    language = str(raw.get("announcement_language", "en_US"))
    if not RECORDING_LANGUAGE.fullmatch(language):
        r.fail(f"{path}.announcement_language",
               f"must be a language code like en_US, es or pt_BR, got {language!r}")
    flags = {}
    for key, default in (("audio", True), ("transcription", False)):
        value = raw.get(key, default)
        if not isinstance(value, bool):
            r.fail(f"{path}.{key}", f"must be true or false, got {value!r}")
            value = default
        flags[key] = value
    if not flags["audio"] and not flags["transcription"]:
        r.fail(path, "audio and transcription are both off: remove the section instead")
    directions = raw.get("directions", ["inbound", "outbound"])
    if not isinstance(directions, list) or not directions or \
            not set(directions) <= {"inbound", "outbound"}:
        r.fail(f"{path}.directions", f"must list inbound and/or outbound, got {directions!r}")
        directions = ["inbound", "outbound"]
    return RecordingSettings(purpose=purpose, announcement_language=language,
                             audio=flags["audio"], transcription=flags["transcription"],
                             directions=tuple(directions))


def read_crm_events(r: Reader, raw: dict) -> CrmEventsSettings:
    """``crm_events``: urls, secret (from the environment), queue_size, timeout,
    max_retry_delay."""
    r.unknown(raw, {"urls", "secret", "queue_size", "timeout", "max_retry_delay"}, "crm_events")
    urls = raw.get("urls") or []
    if not isinstance(urls, list):
        r.fail("crm_events.urls", "must be a list of http(s) URLs")
        urls = []
    checked = []
    for i, url in enumerate(urls):
        text = r.expand(str(url), f"crm_events.urls[{i}]")
        if not re.match(r"^https?://[^/\s]+", text):
            r.fail(f"crm_events.urls[{i}]", f"must be an http(s) URL, got {text!r}")
            continue
        checked.append(text)
    secret = r.secret(raw, "secret", "crm_events.secret", required=bool(checked))
    return CrmEventsSettings(
        urls=tuple(checked), secret=secret,
        queue_size=r.integer(raw, "queue_size", "crm_events.queue_size", 1000, 1, 1_000_000),
        timeout_s=r.number(raw, "timeout", "crm_events.timeout", 5.0, 0.1),
        max_retry_delay_s=r.number(raw, "max_retry_delay", "crm_events.max_retry_delay", 60.0,
                                   0.1))


def read_accountcode(r: Reader, item: dict, path: str) -> str | None:
    code = r.string(item, "accountcode", path, required=False)
    if code is not None and not ACCOUNTCODE.fullmatch(code):
        r.fail(path, "must be 1-79 characters of letters, digits and _ . @ + - "
                     f"(Asterisk's accountcode), got {code!r}")
        return None
    return code


def check_port_overlap(r: Reader, media: MediaSettings) -> None:
    """Both legs take one UDP port per call from their ranges: shared ports would make the
    two pools hand out the same port, and the second bind of a call fails mid-setup."""
    rtp, webrtc = media.rtp_ports, media.webrtc_ports
    if webrtc is None:
        return
    first, last = max(rtp.first, webrtc.first), min(rtp.last, webrtc.last)
    if first <= last:
        r.fail("media.rtp_ports", f"{rtp.first}-{rtp.last} overlaps media.webrtc_ports "
                                  f"{webrtc.first}-{webrtc.last} (ports {first}-{last}): "
                                  "give each leg its own range")


AMI_KEYS = {"host", "port", "username", "secret", "connect_timeout", "action_timeout"}


def read_ami(r: Reader, ami: dict, path: str, named: bool = False) -> AmiSettings:
    """One AMI server (``asterisk.ami``, or one item of ``asterisk.servers``)."""
    r.unknown(ami, AMI_KEYS | ({"name"} if named else set()), path)
    return AmiSettings(
        host=r.string(ami, "host", f"{path}.host", default="127.0.0.1") or "127.0.0.1",
        port=r.integer(ami, "port", f"{path}.port", 5038, 1, 65535),
        username=r.string(ami, "username", f"{path}.username") or "",
        secret=r.secret(ami, "secret", f"{path}.secret"),
        connect_timeout_s=r.number(ami, "connect_timeout", f"{path}.connect_timeout", 5.0, 0.1),
        action_timeout_s=r.number(ami, "action_timeout", f"{path}.action_timeout", 5.0, 0.1),
        name=(r.string(ami, "name", f"{path}.name", required=False) or "") if named else "",
    )


def read_ami_servers(r: Reader, ast: dict) -> tuple[AmiSettings, tuple[AmiSettings, ...], str]:
    """``asterisk.ami`` (one server) or ``asterisk.servers`` (a list, failover or rotation:
    gateway/asterisk/pool.py), never both. Returns (primary, servers, policy); servers is
    empty with the one-server form."""
    policy = str(ast.get("policy", "failover"))
    if policy not in AMI_POLICIES:
        r.fail("asterisk.policy", f"must be one of {', '.join(AMI_POLICIES)}, got {policy!r}")
        policy = "failover"
    if "servers" not in ast:
        if "policy" in ast:
            r.fail("asterisk.policy", "only with asterisk.servers (one server has no choice)")
        return read_ami(r, r.section(ast, "ami", "asterisk.ami"), "asterisk.ami"), (), policy
    if "ami" in ast:
        r.fail("asterisk", "give asterisk.ami (one server) or asterisk.servers (a list), "
                           "not both")
    items = ast.get("servers")
    if not isinstance(items, list) or not items:
        r.fail("asterisk.servers", "must be a list of at least one AMI server "
                                   "(host, port, username, secret, name)")
        return read_ami(r, {}, "asterisk.servers[0]", named=True), (), policy
    servers = []
    for i, item in enumerate(items):
        path = f"asterisk.servers[{i}]"
        if not isinstance(item, dict):
            r.fail(path, f"must be a mapping, got {type(item).__name__}")
            item = {}
        servers.append(read_ami(r, item, path, named=True))
    labels = [s.label for s in servers]
    for label in sorted({x for x in labels if labels.count(x) > 1}):
        r.fail("asterisk.servers", f"two servers named {label!r} (give each a unique name)")
    return servers[0], tuple(servers), policy
