"""Logs: one line per call event, text or JSON, and never a secret."""

from __future__ import annotations

import io
import json
import logging

import pytest

from gateway.config import Secret
from gateway.logs import call_log, setup_logging

TOKEN = "EAAGtestAccessToken0123456789abcdef"
APP_SECRET = "appsecret-5f2b9c"
AMI_SECRET = "ami-pass-77"
UNCONFIGURED_BEARER = "ya29.someOtherToken-xyz"


def start(fmt: str) -> io.StringIO:
    stream = io.StringIO()
    setup_logging("DEBUG", fmt, secrets=[Secret(TOKEN), APP_SECRET, AMI_SECRET], stream=stream)
    return stream


@pytest.fixture(autouse=True)
def _remove_handler():
    yield
    root = logging.getLogger()
    for handler in list(root.handlers):
        if handler.get_name() == "whatsapp-gateway":
            root.removeHandler(handler)


@pytest.fixture(params=["text", "json"])
def capture(request):
    return request.param, start(request.param)


def leaked(text: str) -> list[str]:
    return [s for s in (TOKEN, APP_SECRET, AMI_SECRET, UNCONFIGURED_BEARER) if s in text]


def test_secrets_never_reach_a_log_line(capture) -> None:
    fmt, stream = capture
    log = logging.getLogger("gateway.test")
    log.info("POST https://graph.facebook.com/v23.0/1/calls?access_token=%s&x=1", TOKEN)
    log.warning("headers %s", {"Authorization": f"Bearer {UNCONFIGURED_BEARER}"})
    log.error("AMI login as gateway/%s refused", AMI_SECRET)
    log.info("body %s", json.dumps({"access_token": "not-configured-either"}))
    try:
        raise RuntimeError(f"signature check with {APP_SECRET} failed; token {TOKEN}")
    except RuntimeError:
        log.exception("webhook failed")
    call_log(log, "graph_error", wacid="wacid.1", channel_id="wa-1",
             detail=f"Authorization: Bearer {TOKEN}")
    text = stream.getvalue()
    assert leaked(text) == []
    assert "not-configured-either" not in text
    assert text.count("***") >= 6
    assert "webhook failed" in text and "RuntimeError" in text  # the line itself survives
    if fmt == "json":
        for line in text.splitlines():
            json.loads(line)


def test_secret_in_exception_args_formatted_lazily(capture) -> None:
    _, stream = capture
    log = logging.getLogger("gateway.test")
    try:
        {}["key"] = 1 / 0
    except ZeroDivisionError as exc:
        log.error("failed with token %s", TOKEN, exc_info=exc, stack_info=True)
    assert leaked(stream.getvalue()) == []


def test_call_event_text_line() -> None:
    stream = start("text")
    call_log(logging.getLogger("gateway.calls"), "answered", wacid="wacid.ABC=",
             channel_id="wa-1", context="from-whatsapp", seconds=1.25, reason="two words")
    line = stream.getvalue().strip()
    assert line.endswith('INFO gateway.calls event=answered wacid="wacid.ABC=" '
                         'channel=wa-1 context=from-whatsapp seconds=1.25 '
                         'reason="two words"')
    assert "\n" not in line


def test_call_event_json_line() -> None:
    stream = start("json")
    call_log(logging.getLogger("gateway.calls"), "ended", wacid="wacid.1", channel_id="wa-1",
             outcome="answered", q850_cause=16, duration_seconds=None)
    data = json.loads(stream.getvalue())
    assert data["event"] == "ended" and data["wacid"] == "wacid.1"
    assert data["channel"] == "wa-1" and data["q850_cause"] == 16
    assert data["duration_seconds"] is None and data["level"] == "INFO"


def test_unknown_format_refused() -> None:
    with pytest.raises(ValueError, match="text or json"):
        setup_logging("INFO", "xml")


def test_a_short_secret_is_only_redacted_where_it_stands_whole(monkeypatch) -> None:
    """A 1-character test secret must not mangle every word that contains its letter."""
    import gateway.logs

    monkeypatch.setattr(gateway.logs, "_redactor", gateway.logs.Redactor())  # keep "t" local
    stream = io.StringIO()
    setup_logging("INFO", "text", secrets=["t", Secret("x1")], stream=stream)
    log = logging.getLogger("gateway.test")
    log.info("context=from-whatsapp extension=s secret=t ami=x1 word=x12 path=/t/")
    line = stream.getvalue()
    assert "context=from-whatsapp extension=s" in line
    assert "word=x12" in line
    assert "secret=*** ami=*** " in line and "path=/***/" in line


def test_a_secret_inside_a_url_or_header_is_still_redacted() -> None:
    stream = start("text")
    log = logging.getLogger("gateway.test")
    log.info("GET /x?a=%s&b=1 and Basic:%s; ami %s.", APP_SECRET, AMI_SECRET, AMI_SECRET)
    assert leaked(stream.getvalue()) == []


@pytest.mark.parametrize("verbose", [False, True])
def test_media_stack_chatter_only_when_asked(verbose: bool) -> None:
    stream = io.StringIO()
    setup_logging("DEBUG", "text", stream=stream, verbose_media=verbose)
    logging.getLogger("aioice.ice").info("Connection(0) Check CandidatePair succeeded")
    logging.getLogger("aiortc.rtcdtlstransport").debug("DTLS handshake complete")
    logging.getLogger("aiortc").warning("sender stopped")
    logging.getLogger("gateway.calls").debug("still here")
    text = stream.getvalue()
    assert "sender stopped" in text and "still here" in text
    assert ("CandidatePair succeeded" in text) is verbose
    assert ("DTLS handshake complete" in text) is verbose


def test_the_ami_clients_own_filter_redacts_a_short_secret_only_where_it_stands_whole():
    """panoramisk's own log lines pass the AMI client's filter: a 1-character AMI secret
    must go where it stands whole and leave words like "context" alone."""
    from gateway.asterisk.ami import AmiClient
    from gateway.config import AmiSettings, Secret

    client = AmiClient(AmiSettings(host="127.0.0.1", port=5038, username="gw",
                                   secret=Secret("t")))
    logger = client._panoramisk_log
    record = logger.makeRecord(logger.name, logging.WARNING, __file__, 1,
                               "Fail to send %r", ({"Context": "context", "Secret": "t"},), None)
    for f in logger.filters:
        f.filter(record)
    text = record.getMessage()
    assert "'context'" in text and "'Context'" in text
    assert "'Secret': '***'" in text
