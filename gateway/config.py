"""The gateway's one YAML file, turned into typed settings and validated at start.

Every error names the key path (``numbers[0].context``) and what is wrong with it, and all
errors are reported together so an admin fixes the file in one pass. Secrets come from the
environment through ``${VAR}`` references and are wrapped in :class:`Secret`, whose ``repr``
and ``str`` never show the value, so a logged config cannot leak them.
"""

from __future__ import annotations

import ipaddress
import os
import re
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import yaml

from gateway.calling_settings import validate_calling
from gateway.errors import BadInput
from gateway.instance import INSTANCE_ID, derive_instance_id
from gateway.media.codecs import ASTERISK_CODECS

MEDIA_MODES = ("opus", "passthrough", "auto")
_ENV_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")
ACCOUNTCODE = re.compile(r"[A-Za-z0-9_.@+-]{1,79}")
"""What an accountcode may hold: Asterisk keeps at most 79 characters (AST_MAX_ACCOUNT_CODE
is 80 with the NUL), and the CSV, SQL and AMI paths it travels are safest without quotes,
commas, spaces or semicolons."""


class ConfigError(BadInput):
    """The config file is unusable; ``problems`` lists every ``key: problem`` found."""

    def __init__(self, problems: list[str]):
        self.problems = problems
        super().__init__("invalid configuration:\n" + "\n".join(f"  - {p}" for p in problems))


class Secret:
    """A value that must never reach a log line or a traceback."""

    __slots__ = ("_value",)

    def __init__(self, value: str):
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "Secret('***')"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)


@dataclass(frozen=True)
class WhatsAppSettings:
    graph_url: str
    """Graph API base with version, e.g. https://graph.facebook.com/v25.0 (or the simulator)."""
    access_token: Secret
    app_secret: Secret
    verify_token: Secret
    graph_timeout_s: float = 10.0


GRAPH_VERSIONS_UNTIL: dict[int, str | None] = {
    17: "2025-09-12", 18: "2025-09-12", 19: "2025-09-12", 20: "2025-09-12",
    21: "2027-01-21", 22: "2027-05-20", 23: "2027-05-20", 24: "2027-05-20",
    25: "2028-07-29", 26: None,
}
"""Last day each Graph API version works (docs/meta-2026-identity.md §7; None: not announced).
Where the reference gives a range (v17-v20 "expired 2025-09-12 to 2026-09-24", v22-v24 "2027-05-20
to 2028-02-18") the earliest date is taken, so the warning never comes too late."""
GRAPH_VERSION_WARN_DAYS = 90


def graph_version_warning(graph_url: str, today: str | None = None) -> str | None:
    """A warning for ``check-config`` when ``whatsapp.graph_url``'s version has expired (or
    will within 90 days); None when it is current. ``today`` is ``YYYY-MM-DD`` (UTC)."""
    m = re.search(r"/v(\d+)\.(\d+)/?$", graph_url)
    if not m:
        return None
    today = today or time.strftime("%Y-%m-%d", time.gmtime())
    major = int(m.group(1))
    version = f"v{major}.{m.group(2)}"
    if major < min(GRAPH_VERSIONS_UNTIL):
        return f"whatsapp.graph_url: Graph API {version} expired long ago; use v25.0 or v26.0"
    if major not in GRAPH_VERSIONS_UNTIL:
        return None  # newer than this gateway knows: nothing to say
    until = GRAPH_VERSIONS_UNTIL[major]
    if until is None:
        return None
    if today > until:
        return (f"whatsapp.graph_url: Graph API {version} expired on {until}: Meta refuses "
                f"it; use v25.0 or v26.0")
    left = (time.mktime(time.strptime(until, "%Y-%m-%d"))
            - time.mktime(time.strptime(today, "%Y-%m-%d"))) / 86400
    if left <= GRAPH_VERSION_WARN_DAYS:
        return (f"whatsapp.graph_url: Graph API {version} is available only until {until} "
                f"({left:.0f} days); move to v25.0 or v26.0")
    return None


USERNAME_PLACEHOLDERS = ("username", "profile_name", "user_id")


@dataclass(frozen=True)
class UsernameCallerId:
    """CALLERID for a caller Meta gave no phone number (a username user, docs/meta-2026-identity.md
    §1 of the
    reference). Templates take ``{username}``, ``{profile_name}`` and ``{user_id}``.

    The number is empty by default and may never look like a phone number: a made-up E.164
    could be dialled back over a PSTN trunk and reach a stranger. ``{user_id}`` (the BSUID)
    is allowed: dialled into ``to-whatsapp`` it calls the user back over WhatsApp."""

    name: str = "{username}"
    number: str = ""

    def render(self, *, username: str, profile_name: str, user_id: str) -> tuple[str, str]:
        """(name, number) for this caller; the name falls back to the profile name, then
        to "WhatsApp", so CALLERID(name) is never empty."""
        values = {"username": username, "profile_name": profile_name, "user_id": user_id}
        name = self.name.format(**values).strip() or profile_name or "WhatsApp"
        return name, self.number.format(**values).strip()


@dataclass(frozen=True)
class RecordingSettings:
    """Meta's call recording / transcription for one number, opted in per call
    (docs/meta-2026-settings-events.md §4): the objects sent on ``accept`` (inbound) and ``connect``
    (outbound)."""

    purpose: str
    """Spoken to both sides before recording starts (at most 250 characters)."""
    announcement_language: str = "en_US"
    audio: bool = True
    """Ask Meta for the call's audio (``recording``)."""
    transcription: bool = False
    """Ask Meta for a transcript (``transcription``)."""
    directions: tuple[str, ...] = ("inbound", "outbound")

    def objects(self, direction: str) -> dict[str, dict[str, str]]:
        """``{"recording": {...}, "transcription": {...}}`` for a call in ``direction``; empty
        when this direction is not recorded."""
        if direction not in self.directions:
            return {}
        obj = {"status": "ENABLED", "purpose": self.purpose,
               "announcement_language": self.announcement_language}
        out: dict[str, dict[str, str]] = {}
        if self.audio:
            out["recording"] = dict(obj)
        if self.transcription:
            out["transcription"] = dict(obj)
        return out


@dataclass(frozen=True)
class NumberSettings:
    phone_number_id: str
    """Meta's id of the business number: webhooks are routed by it, never by the display number."""
    context: str
    extension: str = "s"
    display_number: str | None = None
    max_calls: int = 100
    closed_context: str | None = None
    """Where calls outside the configured call hours go (issue: calling settings)."""
    closed_extension: str = "s"
    calling: dict[str, Any] = field(default_factory=dict)
    """Meta calling settings for this number, as written in the YAML (validated by
    calling_settings.py)."""
    username_caller_id: UsernameCallerId = UsernameCallerId()
    """CALLERID of callers without a phone number (username users)."""
    accountcode: str | None = None
    """Asterisk accountcode of this number's calls (AMI Originate ``Account``): the CDR's
    ``accountcode`` column, for billing and reports per business number."""
    recording: RecordingSettings | None = None
    """Meta's recording/transcription of this number's calls; None: not recorded."""
    media_mode: str = "opus"
    """``numbers[].media.mode``. ``opus``: WhatsApp's leg is Opus, transcoded to
    ``asterisk.codec`` (wideband with G.722). ``passthrough``: when WhatsApp's offer carries
    PCMU/PCMA (the number's ``calling.audio.additional_codecs`` at Meta), answer with it and
    hand the payloads to an ulaw/alaw channel untouched (about a fifth of the CPU, narrowband);
    an offer without it falls back to Opus with a warning. ``auto``: the same choice without the
    warning or the check that the setting is on."""

    @property
    def g711(self) -> tuple[str, ...]:
        """G.711 codecs to answer with before Opus, in preference order (none in ``opus``)."""
        return () if self.media_mode == "opus" else ("PCMU", "PCMA")


@dataclass(frozen=True)
class AmiSettings:
    host: str
    port: int
    username: str
    secret: Secret
    connect_timeout_s: float = 5.0
    action_timeout_s: float = 5.0


@dataclass(frozen=True)
class AsteriskSettings:
    ami: AmiSettings
    codec: str = "g722"
    ami_down_grace_s: float = 10.0
    """Live calls survive an AMI outage this long (a reconnect finds their channels); after
    it, they are ended toward WhatsApp, so no caller sits in silence with no limit."""


@dataclass(frozen=True)
class PortRange:
    first: int
    last: int

    def __len__(self) -> int:
        return self.last - self.first + 1


@dataclass(frozen=True)
class MediaSettings:
    rtp_address: str = "127.0.0.1"
    """Address of the Asterisk leg's sockets: the one written in the UnicastRTP dial string."""
    rtp_ports: PortRange = PortRange(40000, 40999)
    webrtc_addresses: tuple[str, ...] = ()
    """Local addresses the WebRTC leg gathers host candidates on; empty means every interface."""
    public_ip: str | None = None
    """Address WhatsApp must reach, written into our candidates when behind NAT."""
    webrtc_ports: PortRange | None = None
    """UDP ports of the WhatsApp leg (open them to WhatsApp's relays); None: any free port."""
    opus_bitrate: int = 32000
    opus_complexity: int = 3
    """libopus complexity 0-10: the main CPU knob (see gateway/media/codecs.py for costs)."""
    connect_timeout_s: float = 20.0
    """ICE+DTLS must be up this long after pre_accept (WhatsApp itself gives up after 20 s)."""
    no_media_timeout_s: float = 30.0
    """A call whose WhatsApp leg sends nothing this long is ended (WhatsApp's own mid-call rule
    is 30 s); catches a leg that died silently, long before ICE consent expiry notices."""


@dataclass(frozen=True)
class HttpSettings:
    host: str = "127.0.0.1"
    port: int = 8080


@dataclass(frozen=True)
class ApiSettings:
    tokens: tuple[Secret, ...] = ()
    """Bearer tokens accepted by /v1 (CRM click-to-call, call records); empty disables /v1."""


@dataclass(frozen=True)
class StoreSettings:
    path: str = "var/gateway.sqlite3"
    """The SQLite file of the call records and the permission ledger, unless ``url`` is
    set."""
    url: str | None = field(default=None, repr=False)
    """``postgresql://...``: call records and the permission ledger in PostgreSQL, shared by
    several gateways (docs/scaling.md). May hold a password (then a secret: never logged);
    libpq's ``PGPASSWORD`` keeps it out of the file."""
    media_dir: str | None = None
    """Where Meta's recordings, transcripts and voicemails are downloaded; None: only their
    media ids are kept (Meta keeps the files 7 days)."""


    @property
    def calls_at(self) -> str:
        """Where the call records and the permission ledger live: the URL if set, else the
        SQLite file."""
        return self.url or self.path


@dataclass(frozen=True)
class GatewaySettings:
    """This gateway among several (docs/scaling.md)."""

    instance_id: str = field(default_factory=derive_instance_id)
    """In every channel id it creates and every record it writes (gateway/instance.py)."""


@dataclass(frozen=True)
class CrmEventsSettings:
    """Call events pushed to CRMs (gateway/crm_events.py)."""

    urls: tuple[str, ...] = ()
    secret: Secret = Secret("")
    """HMAC-SHA256 key of the X-Gateway-Signature-256 header."""
    queue_size: int = 1000
    """Events kept per URL while the CRM is down; beyond it the oldest are dropped."""
    timeout_s: float = 5.0
    max_retry_delay_s: float = 60.0


@dataclass(frozen=True)
class ServiceSettings:
    shutdown_grace_s: float = 30.0
    """SIGTERM drains: no new calls, live ones may go on this long; then they are ended."""


LIVE_KEYS = ("numbers", "api.tokens", "whatsapp.access_token", "whatsapp.app_secret",
             "whatsapp.verify_token", "asterisk.ami_down_grace", "service.shutdown_grace")
"""What a reload (SIGHUP, ``whatsapp-gateway reload``) applies without a restart: numbers
(routes, max_calls, closed hours, call hours), API tokens, Meta tokens and the graces. Calls
in progress keep what they started with."""


@dataclass(frozen=True)
class Config:
    whatsapp: WhatsAppSettings
    numbers: tuple[NumberSettings, ...]
    asterisk: AsteriskSettings
    media: MediaSettings = MediaSettings()
    http: HttpSettings = HttpSettings()
    api: ApiSettings = ApiSettings()
    store: StoreSettings = StoreSettings()
    crm_events: CrmEventsSettings = CrmEventsSettings()
    service: ServiceSettings = ServiceSettings()
    source: str = "<memory>"
    gateway: GatewaySettings = field(default_factory=GatewaySettings)

    @property
    def pid_file(self) -> Path:
        """Where ``serve`` writes its pid (beside the store), for ``whatsapp-gateway reload``."""
        return Path(self.store.path).with_suffix(".pid")

    def reloaded(self, new: Config) -> tuple[Config, list[str]]:
        """This config with ``new``'s live parts (:data:`LIVE_KEYS`) applied, and the keys
        whose change only a restart can apply (those keep their running value)."""
        restart = [name for name, old_part, new_part in (
            ("whatsapp.graph_url", self.whatsapp.graph_url, new.whatsapp.graph_url),
            ("whatsapp.graph_timeout", self.whatsapp.graph_timeout_s,
             new.whatsapp.graph_timeout_s),
            ("asterisk.ami", self.asterisk.ami, new.asterisk.ami),
            ("asterisk.codec", self.asterisk.codec, new.asterisk.codec),
            ("media", self.media, new.media),
            ("http", self.http, new.http),
            ("store", self.store, new.store),
            ("gateway", self.gateway, new.gateway)) if old_part != new_part]
        applied = replace(
            self, numbers=new.numbers, api=new.api, service=new.service, source=new.source,
            whatsapp=replace(self.whatsapp, access_token=new.whatsapp.access_token,
                             app_secret=new.whatsapp.app_secret,
                             verify_token=new.whatsapp.verify_token),
            asterisk=replace(self.asterisk, ami_down_grace_s=new.asterisk.ami_down_grace_s))
        return applied, restart

    def number(self, phone_number_id: str) -> NumberSettings | None:
        for n in self.numbers:
            if n.phone_number_id == phone_number_id:
                return n
        return None


class _Reader:
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


def _username_caller_id(r: _Reader, raw: Any, path: str) -> UsernameCallerId:
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


def parse_config(data: Any, env: dict[str, str] | None = None, source: str = "<memory>",
                 *, secrets: bool = True) -> Config:
    """Validate parsed YAML; raise :class:`ConfigError` listing every problem.
    ``secrets=False`` leaves every secret empty and unchecked: for commands that use none."""
    r = _Reader(dict(os.environ) if env is None else env, secrets)
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
            username_caller_id=_username_caller_id(r, item.get("username_caller_id"),
                                                   f"{path}.username_caller_id"),
            accountcode=_accountcode(r, item, f"{path}.accountcode"),
            recording=_recording(r, item.get("recording"), f"{path}.recording"),
            media_mode=_media_mode(r, item.get("media"), calling, path),
        ))

    ast = r.section(data, "asterisk", "asterisk")
    r.unknown(ast, {"ami", "codec", "ami_down_grace"}, "asterisk")
    ami = r.section(ast, "ami", "asterisk.ami")
    r.unknown(ami, {"host", "port", "username", "secret", "connect_timeout", "action_timeout"},
              "asterisk.ami")
    codec = str(ast.get("codec", "g722")).lower()
    if codec not in ASTERISK_CODECS:
        r.fail("asterisk.codec", f"must be one of {', '.join(ASTERISK_CODECS)}, got {codec!r}")
        codec = "g722"
    asterisk = AsteriskSettings(
        ami=AmiSettings(
            host=r.string(ami, "host", "asterisk.ami.host", default="127.0.0.1") or "127.0.0.1",
            port=r.integer(ami, "port", "asterisk.ami.port", 5038, 1, 65535),
            username=r.string(ami, "username", "asterisk.ami.username") or "",
            secret=r.secret(ami, "secret", "asterisk.ami.secret"),
            connect_timeout_s=r.number(ami, "connect_timeout", "asterisk.ami.connect_timeout",
                                       5.0, 0.1),
            action_timeout_s=r.number(ami, "action_timeout", "asterisk.ami.action_timeout",
                                      5.0, 0.1),
        ),
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

    _check_port_overlap(r, media)

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
                          url=_store_url(r, store_raw),
                          media_dir=r.string(store_raw, "media_dir", "store.media_dir",
                                             required=False))
    gateway = _gateway(r, r.section(data, "gateway", "gateway", required=False), http)
    crm_events = _crm_events(r, r.section(data, "crm_events", "crm_events", required=False))

    service_raw = r.section(data, "service", "service", required=False)
    r.unknown(service_raw, {"shutdown_grace"}, "service")
    service = ServiceSettings(shutdown_grace_s=r.number(
        service_raw, "shutdown_grace", "service.shutdown_grace", 30.0, 0.0))

    if r.problems:
        raise ConfigError(r.problems)
    return Config(whatsapp=whatsapp, numbers=tuple(numbers), asterisk=asterisk, media=media,
                  http=http, api=ApiSettings(tokens=tokens), store=store,
                  crm_events=crm_events, service=service, source=source, gateway=gateway)


def _store_url(r: _Reader, raw: dict) -> str | None:
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


def _gateway(r: _Reader, raw: dict, http: HttpSettings) -> GatewaySettings:
    """``gateway.instance_id``; derived from the host (and the HTTP listen address, so two
    gateways on one host differ) when not given."""
    r.unknown(raw, {"instance_id"}, "gateway")
    given = r.string(raw, "instance_id", "gateway.instance_id", required=False)
    if given is None:
        return GatewaySettings(derive_instance_id(f"{http.host}:{http.port}"))
    if not INSTANCE_ID.fullmatch(given):
        r.fail("gateway.instance_id", f"{given!r}: use 1-32 lower-case letters, digits and "
               "inner hyphens (it goes into every Asterisk channel id)")
    elif re.search(r"-w\d+$", given):
        r.fail("gateway.instance_id", f"{given!r}: must not end in -w<digits>, which names a "
               "worker of serve --workers N (gateway/workers/identity.py)")
    return GatewaySettings(given)


RECORDING_LANGUAGE = re.compile(r"[a-z]{2}(_[A-Z]{2})?")


def _media_mode(r: _Reader, raw: Any, calling: dict[str, Any], number: str) -> str:
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


def _recording(r: _Reader, raw: Any, path: str) -> RecordingSettings | None:
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


def _crm_events(r: _Reader, raw: dict) -> CrmEventsSettings:
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


def _accountcode(r: _Reader, item: dict, path: str) -> str | None:
    code = r.string(item, "accountcode", path, required=False)
    if code is not None and not ACCOUNTCODE.fullmatch(code):
        r.fail(path, "must be 1-79 characters of letters, digits and _ . @ + - "
                     f"(Asterisk's accountcode), got {code!r}")
        return None
    return code


def _check_port_overlap(r: _Reader, media: MediaSettings) -> None:
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
