"""The gateway's settings as typed, validated values: what :mod:`gateway.config` makes of the
YAML file, and what the rest of the gateway reads.

Kept apart from the reader (gateway/config.py) so a module that only needs a setting's type
does not pull in the validation. :class:`Secret` wraps every value that came from the
environment: its ``repr`` and ``str`` never show it, so a logged config cannot leak one.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from gateway.errors import BadInput
from gateway.instance import GONE_AFTER_S, HEARTBEAT_S, derive_instance_id


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
    name: str = ""
    """What logs, /readyz and the ``server`` metric label call this Asterisk (default
    ``host:port``)."""

    @property
    def label(self) -> str:
        return self.name or f"{self.host}:{self.port}"


AMI_POLICIES = ("failover", "round_robin")
"""How a new call picks among the connected ``asterisk.servers`` (gateway/asterisk/pool.py)."""


@dataclass(frozen=True)
class AsteriskSettings:
    ami: AmiSettings
    """The first (primary) server: ``asterisk.ami``, or ``asterisk.servers[0]``."""
    codec: str = "g722"
    ami_down_grace_s: float = 10.0
    """Live calls survive an AMI outage this long (a reconnect finds their channels); after
    it, they are ended toward WhatsApp, so no caller sits in silence with no limit."""
    servers: tuple[AmiSettings, ...] = ()
    """``asterisk.servers``, in list order (its first is :attr:`ami`); empty with the
    one-server form ``asterisk.ami``. Read it through :attr:`all_servers`."""
    policy: str = "failover"
    """``failover``: a new call goes to the first connected server in list order;
    ``round_robin``: the connected servers take turns."""

    @property
    def all_servers(self) -> tuple[AmiSettings, ...]:
        return self.servers or (self.ami,)


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
    heartbeat_s: float = HEARTBEAT_S
    """How often this gateway tells the shared store it is alive."""
    gone_after_s: float = GONE_AFTER_S
    """Silence after which this gateway takes another for gone and ends its calls: every
    gateway on one store should use the same values."""


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
            ("asterisk.servers", self.asterisk.all_servers[1:], new.asterisk.all_servers[1:]),
            ("asterisk.policy", self.asterisk.policy, new.asterisk.policy),
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
