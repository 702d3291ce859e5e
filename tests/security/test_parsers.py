"""Strict JSON, the SDP offer check, the credential comparisons and the webhook parser, each on
the hostile inputs issue 7 found."""

from __future__ import annotations

import json

import pytest
from aiortc.sdp import SessionDescription
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway import strict_json
from gateway.media.sdp_offer import MAX_SDP_BYTES, validate_offer
from gateway.media.webrtc import SdpError
from gateway.whatsapp.events import MalformedWebhook, parse_body
from gateway.whatsapp.signature import sign, signature_ok
from gateway.whatsapp.webhook import same_secret

from .conftest import connect_sample

SDP = connect_sample()["entry"][0]["changes"][0]["value"]["calls"][0]["session"]["sdp"]


# --- strict JSON ---------------------------------------------------------------------------------

@pytest.mark.parametrize("raw, field, problem", [
    (b'{"ttl_minutes": 1e400}', "ttl_minutes", "out of range"),
    (b'{"a": -1e400}', "a", "out of range"),
    (b'{"n": ' + b"9" * 400 + b"}", "n", "400 digits"),
    (b'{"x": Infinity}', "x", "Infinity is not a JSON value"),
    (b'{"x": NaN}', "x", "NaN is not a JSON value"),
    (b'{"name": "\\ud800"}', "name", "surrogate"),
    (b'{"\\udfff": 1}', "body", "surrogate"),
    (b"[" * 1000 + b"]" * 1000, "body", "nested deeper"),
    (b"[" * 10000 + b"]" * 10000, "body", "nested deeper"),
    (b'{"a":' * 70 + b"1" + b"}" * 70, "body", "nested deeper"),
    (b"\xff\xfe{}", "body", "not UTF-8"),
    (b'{"a": 1', "body", "not JSON"),
])
def test_strict_json_refuses_with_the_field(raw, field, problem):
    with pytest.raises(strict_json.StrictJsonError) as err:
        strict_json.loads(raw)
    assert err.value.field == field
    assert problem in str(err.value)


def test_strict_json_keeps_what_meta_sends():
    body = connect_sample()
    assert strict_json.loads(json.dumps(body).encode()) == body
    assert strict_json.loads('{"name": "Zoë 🎧", "n": 12345678901, "f": 1.5}') == \
        {"name": "Zoë 🎧", "n": 12345678901, "f": 1.5}


@pytest.mark.parametrize("raw", [
    b'{"entry": [{"changes": [{"value": {"calls": [{"id": "c", "timestamp": 1e400}]}}]}]}',
    b"[" * 5000 + b"]" * 5000,
    b'{"entry": [{"changes": [{"value": {"contacts": [{"profile": {"name": "\\ud83d"}}]}}]}]}',
])
def test_webhook_parser_turns_odd_values_into_malformed(raw):
    with pytest.raises(MalformedWebhook):
        parse_body(raw)


def test_webhook_parser_survives_numbers_as_huge_strings():
    body = connect_sample()
    call = body["entry"][0]["changes"][0]["value"]["calls"][0]
    call["timestamp"] = "1e400"
    call["duration"] = "9" * 400
    (event,) = parse_body(json.dumps(body).encode()).events
    assert event.timestamp == 0 and event.duration is None


# --- credentials ---------------------------------------------------------------------------------

@pytest.mark.parametrize("header", [
    "sha256=café", "sha256=" + "é" * 64, "sha256=\udcff" * 3, "sha256=", "sha256= ",
    "sha256=" + "0" * 63, "sha256=" + "0" * 65, "sha1=abc", "\x00", "sha256=\ud800",
])
def test_malformed_signatures_are_a_mismatch_not_an_error(header):
    assert signature_ok("secret", b"{}", header) is False


def test_same_secret_is_bytes_and_total():
    assert same_secret("token", "token")
    for text in ("café", "\udcff", "\ud800", "", None, "token ", "tokeN"):
        assert not same_secret(text, "token")
    assert signature_ok("secret", b"{}", sign("secret", b"{}"))


# --- SDP ------------------------------------------------------------------------------------------

def variant(replace: str = "", by: str = "", drop: str = "", add: str = "") -> str:
    lines = SDP.split("\r\n")
    if drop:
        lines = [ln for ln in lines if not ln.startswith(drop)]
    out = "\r\n".join(lines)
    if replace:
        assert replace in out
        out = out.replace(replace, by)
    return out + add


AUDIO = SDP[SDP.index("m=audio"):]

BAD_SDP = {
    "empty": ("", "no SDP"),
    "random bytes": ("\x8f\x00\xfe garbage \x01", "not '<letter>="),
    "1 MB": ("v=0\r\n" + "a=x\r\n" * 200_000, f"larger than {MAX_SDP_BYTES}"),
    "50 audio sections": (SDP + "m=audio 9 UDP/TLS/RTP/SAVPF 111\r\na=rtpmap:111 opus/48000/2\r\n"
                          * 49, "exactly one media section"),
    "many lines": (SDP + "a=x\r\n" * 300, "more than 200 lines"),
    "two audio sections": (SDP + AUDIO, "exactly one media section"),
    "a video section": (SDP + "m=video 9 UDP/TLS/RTP/SAVPF 96\r\na=rtpmap:96 VP8/90000\r\n",
                        "exactly one media section"),
    "no audio": (variant(replace="m=audio 3480", by="m=video 3480"), "audio"),
    "no opus": (variant(replace="opus/48000/2", by="PCMU/8000"), "Opus"),
    "no fingerprint": (variant(drop="a=fingerprint"), "no a=fingerprint"),
    "sha-1 fingerprint": (variant(replace="a=fingerprint:sha-256 24:87",
                                  by="a=fingerprint:sha-1 24:87"), "sha-256"),
    "short fingerprint": (variant(replace=":B7:4D", by=":B7"), "sha-256"),
    "missing colon": (variant(replace="24:87:AA", by="2487:AA"), "sha-256"),
    "no ufrag": (variant(drop="a=ice-ufrag"), "ice-ufrag"),
    "no pwd": (variant(drop="a=ice-pwd"), "ice-pwd"),
    "short pwd": (variant(replace="TESTpwdMetaOffer000000000000001", by="short"), "ice-pwd"),
    "no setup": (variant(drop="a=setup"), "a=setup"),
    "bad setup": (variant(replace="a=setup:actpass", by="a=setup:whatever"), "a=setup"),
    "no v=0": (variant(replace="v=0", by="v=1"), "v=0"),
    "no connection": (variant(drop="c=IN"), "connection"),
    "opus not in m-line": (variant(replace="SAVPF 111 126", by="SAVPF 126"), "payload type"),
    "bad m-line": (variant(replace="m=audio 3480 UDP", by="m=audio port UDP"), "media line"),
    "broken candidate": (variant(replace="a=candidate:1000000001 1 udp",
                                 by="a=candidate:1000000001 1"), "not parseable"),
}


def test_the_reference_offer_is_valid():
    info = validate_offer(SDP)
    assert (info.opus_pt, info.dtmf_pt) == (111, 126)


@pytest.mark.parametrize("name", list(BAD_SDP))
def test_bad_offers_are_refused_with_a_reason(name):
    sdp, reason = BAD_SDP[name]
    with pytest.raises(SdpError) as err:
        validate_offer(sdp)
    assert reason in str(err.value), str(err.value)


@settings(max_examples=600, derandomize=True, deadline=None,
          suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_an_offer_that_passes_never_trips_aiortc(data):
    """Mutate the reference offer line by line: whatever validate_offer lets through, aiortc's
    parser (what setRemoteDescription runs first) takes without an exception."""
    lines = SDP.split("\r\n")
    for _ in range(data.draw(st.integers(1, 4))):
        i = data.draw(st.integers(0, len(lines) - 1))
        action = data.draw(st.sampled_from(["drop", "dup", "garble", "truncate"]))
        if action == "drop":
            del lines[i]
        elif action == "dup":
            lines.insert(i, lines[i])
        elif action == "garble":
            lines[i] = data.draw(st.text(min_size=0, max_size=40))
        elif lines:
            lines[i] = lines[i][:data.draw(st.integers(0, max(0, len(lines[i]) - 1)))]
        if not lines:
            break
    sdp = "\r\n".join(lines)
    try:
        validate_offer(sdp)
    except SdpError:
        return
    SessionDescription.parse(sdp)
