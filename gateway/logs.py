"""Logging: one line per call event, text or JSON, and no secret ever written.

Every line goes through :class:`RedactionFilter`, attached to the gateway's handler: configured
secret values (access token, app secret, verify token, AMI secret, API tokens), ``Bearer ...``
credentials and ``access_token=...`` style query parameters are replaced by ``***`` in the
message, its arguments, the exception text and the call-event fields. A configured value is
replaced only where it stands whole (not glued to letters or digits), so a short secret cannot
mangle ordinary words. Redaction happens on the formatted text, so a secret cannot slip through
an argument's ``repr`` or a traceback.

Call events (:func:`call_log`) carry ``wacid`` and ``channel`` (our channel id, the Asterisk
Uniqueid) so one grep finds a call in the gateway's log and in Asterisk's.
"""

from __future__ import annotations

import json
import logging
import re
import sys
import time
from collections.abc import Iterable
from typing import IO, TYPE_CHECKING, Any

from gateway.calls.observer import CallObserver

if TYPE_CHECKING:
    from gateway.calls.record import CallRecord
    from gateway.config import Config, Secret

MASK = "***"
_HANDLER_NAME = "whatsapp-gateway"
_PATTERNS = (
    # Authorization headers and anything else that looks like "Bearer <token>".
    (re.compile(r"(?i)\b(bearer\s+)[A-Za-z0-9._~+/=-]+"), rf"\g<1>{MASK}"),
    # Query strings and form bodies: ?access_token=...&appsecret_proof=...
    (re.compile(r"(?i)\b(access_token|appsecret_proof|hub\.verify_token|client_secret)"
                r"=[^&\s\"',;]+"), rf"\g<1>={MASK}"),
    # JSON bodies and dict reprs: "access_token": "..."
    (re.compile(r"(?i)([\"'](?:access_token|app_secret|secret|verify_token|token)[\"']"
                r"\s*:\s*[\"'])[^\"']*"), rf"\g<1>{MASK}"),
)


class Redactor:
    """Removes secrets from text: configured values, Bearer tokens, token query params."""

    def __init__(self, secrets: Iterable[str | Secret] = ()):
        self._secrets: list[str] = []
        self._whole: re.Pattern[str] | None = None
        self.add(secrets)

    def add(self, secrets: Iterable[str | Secret]) -> None:
        values = set(self._secrets)
        for s in secrets:
            value = s if isinstance(s, str) else s.reveal()
            if value:
                values.add(value)
        # Longest first, so a secret that contains another is removed whole.
        self._secrets = sorted(values, key=len, reverse=True)
        self._whole = re.compile("|".join(
            rf"(?<![A-Za-z0-9]){re.escape(v)}(?![A-Za-z0-9])" for v in self._secrets)) \
            if self._secrets else None

    def __call__(self, text: str) -> str:
        # Only a whole value: a secret must not be glued to letters or digits on either side,
        # so a short test secret such as "t" never turns "context" into "con***ex***".
        if self._whole is not None:
            text = self._whole.sub(MASK, text)
        for pattern, replacement in _PATTERNS:
            text = pattern.sub(replacement, text)
        return text


class RedactionFilter(logging.Filter):
    """Rewrites each record so that no handler after it sees a secret."""

    def __init__(self, redactor: Redactor):
        super().__init__()
        self.redactor = redactor

    def filter(self, record: logging.LogRecord) -> bool:
        redact = self.redactor
        try:
            message = record.getMessage()
        except Exception:  # a bad format string must not lose the line
            message = f"{record.msg!r} % {record.args!r}"
        record.msg, record.args = redact(message), None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = redact(record.exc_text)
        if record.stack_info:
            record.stack_info = redact(record.stack_info)
        fields = getattr(record, "call_fields", None)
        if fields:
            record.call_fields = {k: redact(v) if isinstance(v, str) else v
                                  for k, v in fields.items()}
        return True


def _logfmt(value: Any) -> str:
    text = "" if value is None else str(value)
    if not text or any(c in text for c in ' "=\\') or not text.isprintable():
        return json.dumps(text, ensure_ascii=False)
    return text


def _utc(created: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(created)) + \
        f".{int(created % 1 * 1000):03d}Z"


class TextFormatter(logging.Formatter):
    """``2026-01-01T12:00:00.123Z INFO gateway.calls event=answered wacid=... k=v``."""

    def format(self, record: logging.LogRecord) -> str:
        line = f"{_utc(record.created)} {record.levelname} {record.name} {record.getMessage()}"
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            line += "\n" + record.exc_text
        if record.stack_info:
            line += "\n" + record.stack_info
        return line


class JsonFormatter(logging.Formatter):
    """One JSON object per line; call events carry event, wacid, channel (the channel id) and
    their fields as keys of their own."""

    def format(self, record: logging.LogRecord) -> str:
        data: dict[str, Any] = {"ts": _utc(record.created), "level": record.levelname,
                                "logger": record.name}
        event = getattr(record, "call_event", None)
        if event is not None:
            data["event"] = event
            data["wacid"] = getattr(record, "wacid", "")
            data["channel"] = getattr(record, "channel_id", "") or "-"
            for key, value in (getattr(record, "call_fields", None) or {}).items():
                data.setdefault(key, value if isinstance(value, (int, float, bool)) or
                                value is None else str(value))
        else:
            data["message"] = record.getMessage()
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            data["exception"] = record.exc_text
        if record.stack_info:
            data["stack"] = record.stack_info
        return json.dumps(data, ensure_ascii=False)


_redactor = Redactor()


def add_secrets(secrets: Iterable[str | Secret]) -> None:
    """Redact these values too from now on (e.g. once the config is loaded)."""
    _redactor.add(secrets)


def config_secrets(config: Config) -> list[Secret]:
    """Every secret the config holds (a password in ``store.url`` too)."""
    from urllib.parse import urlsplit

    from gateway.config import Secret

    store_password = urlsplit(config.store.url).password if config.store.url else None
    return [config.whatsapp.access_token, config.whatsapp.app_secret,
            config.whatsapp.verify_token,
            *(server.secret for server in config.asterisk.all_servers), *config.api.tokens,
            *([Secret(store_password)] if store_password else [])]


MEDIA_LOGGERS = ("aioice", "aiortc")
"""ICE and WebRTC internals: at INFO/DEBUG they log every STUN check and state change of every
call, which drowns the call-event lines. WARNING unless ``verbose_media`` asks for them."""


def setup_logging(level: str | int = "INFO", fmt: str = "text",
                  secrets: Iterable[str | Secret] = (), stream: IO[str] | None = None,
                  verbose_media: bool = False) -> None:
    """Send every logger's lines to ``stream`` (stderr) in ``fmt`` (``text`` or ``json``).

    Calling it again replaces the gateway's handler (tests, or once the config is read).
    ``verbose_media`` lets aioice/aiortc log at ``level`` too (``--verbose-media``)."""
    if fmt not in ("text", "json"):
        raise ValueError(f"log format must be text or json, got {fmt!r}")
    add_secrets(secrets)
    root = logging.getLogger()
    for handler in list(root.handlers):
        if handler.get_name() == _HANDLER_NAME:
            root.removeHandler(handler)
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.set_name(_HANDLER_NAME)
    handler.addFilter(RedactionFilter(_redactor))
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    root.addHandler(handler)
    root.setLevel(level.upper() if isinstance(level, str) else level)
    # aiohttp logs every request at INFO; an operator wants calls, not webhook POSTs.
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
    for name in MEDIA_LOGGERS:
        logging.getLogger(name).setLevel(logging.NOTSET if verbose_media else logging.WARNING)


def call_log(logger: logging.Logger, event: str, *, wacid: str, channel_id: str = "",
             level: int = logging.INFO, **fields: Any) -> None:
    """One line for one call event: ``event=answered wacid=... channel=<channel_id> k=v``.

    ``channel`` is our Asterisk channel id (the channel's Uniqueid), ``-`` before Originate."""
    if not logger.isEnabledFor(level):
        return
    parts = [f"event={_logfmt(event)}", f"wacid={_logfmt(wacid)}",
             f"channel={_logfmt(channel_id or '-')}"]
    parts += [f"{key}={_logfmt(value)}" for key, value in fields.items()]
    logger.log(level, "%s", " ".join(parts),
               extra={"call_event": event, "wacid": wacid, "channel_id": channel_id,
                      "call_fields": fields})


class LogObserver(CallObserver):
    """Logs every call notification as one call-event line."""

    def __init__(self, logger: logging.Logger | None = None):
        self.logger = logger or logging.getLogger("gateway.calls")

    def call_admitted(self, record: CallRecord) -> None:
        call_log(self.logger, "admitted", wacid=record.wacid, channel_id=record.channel_id,
                 direction=record.direction.value, phone_number_id=record.phone_number_id,
                 from_number=record.from_number, to_number=record.to_number,
                 user=record.user_key, username=record.username)

    def call_rejected(self, record: CallRecord) -> None:
        call_log(self.logger, "rejected", wacid=record.wacid, channel_id=record.channel_id,
                 level=logging.WARNING, direction=record.direction.value,
                 phone_number_id=record.phone_number_id, reason=record.reason)

    def call_setup(self, record: CallRecord, stage: str, seconds: float) -> None:
        call_log(self.logger, f"setup_{stage}", wacid=record.wacid,
                 channel_id=record.channel_id, seconds=round(seconds, 3))

    def call_event(self, record: CallRecord, event: str, **fields: object) -> None:
        call_log(self.logger, event, wacid=record.wacid, channel_id=record.channel_id,
                 **fields)

    def call_ended(self, record: CallRecord) -> None:
        failed = record.outcome.value == "failed"
        call_log(self.logger, "ended", wacid=record.wacid, channel_id=record.channel_id,
                 level=logging.WARNING if failed else logging.INFO,
                 outcome=record.outcome.value, reason=record.reason,
                 hangup_side=record.hangup_side.value if record.hangup_side else "",
                 q850_cause=record.q850_cause, meta_error_code=record.meta_error_code,
                 duration_seconds=record.duration_seconds, packets_in=record.packets_in,
                 packets_lost=record.packets_lost, dtmf_in=record.dtmf_in)
