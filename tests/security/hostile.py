"""Hypothesis generators of hostile requests, shared by tests/security/test_fuzz.py (a few
thousand cases in CI) and benchmarks/fuzz_gateway.py (100,000 against a live gateway).

They aim where issue 7 found damage: text a caller controls carrying CR/LF and AMI headers,
numbers Python turns into inf or overflows on, nesting, lone surrogates, credentials of any
shape, and bodies that look enough like Meta's connect to get past the parser.
"""

from __future__ import annotations

import copy
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

import aiohttp
from hypothesis import strategies as st

from gateway.whatsapp.signature import sign

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "payloads" / \
    "webhook-connect-user-initiated.json"
APP_SECRET = "security-app-secret"
API_TOKEN = "security-api-token"
PNID = "100000000000001"

INJECTIONS = [
    "x\r\n\r\nAction: Hangup\r\nChannel: /^UnicastRTP/\r\n\r\n",
    "Eve\r\nApplication: UserEvent\r\nData: X",
    "cut\nshort", "\r", "\x00", "\x1b[2J", "\x7f", "Zoë 🎧", '"quoted", (x);y|z',
    "${SHELL(id)}", "$[1+1]", "%s%n", "../../etc/passwd", "agents\r\nAction: Logoff",
    "a" * 5000,
]
RAW_ODD = [
    b"1e400", b"-1e400", b"Infinity", b"NaN", b"9" * 400, b'"\\ud800"', b'"\\udfff x"',
    b"[" * 3000 + b"]" * 3000, b'{"a":' * 100 + b"1" + b"}" * 100, b"\xff\xfe", b"",
    b"null", b"true", b"[]", b'"\\u0000"',
]


def connect_template() -> dict[str, Any]:
    body = json.loads(FIXTURE.read_text())
    body["entry"][0]["changes"][0]["value"]["metadata"]["phone_number_id"] = PNID
    return body


_TEMPLATE = connect_template()

hostile_text = st.one_of(st.sampled_from(INJECTIONS), st.text(max_size=40),
                         st.builds(lambda a, b: a + b, st.sampled_from(INJECTIONS),
                                   st.text(max_size=10)))
json_scalars = st.one_of(st.none(), st.booleans(), st.integers(-2**70, 2**70),
                         st.floats(allow_nan=False, allow_infinity=False), hostile_text)
json_values = st.recursive(json_scalars, lambda inner: st.one_of(
    st.lists(inner, max_size=4), st.dictionaries(hostile_text, inner, max_size=4)),
    max_leaves=12)

CALL_FIELDS = ["id", "from", "to", "event", "timestamp", "direction", "session", "status",
               "biz_opaque_callback_data", "cta_payload", "deeplink_payload", "duration",
               "errors", "start_time", "end_time"]


@st.composite
def mutated_connects(draw) -> bytes:
    """Meta's connect with some fields replaced by hostile values; often fresh and valid."""
    body = copy.deepcopy(_TEMPLATE)
    value = body["entry"][0]["changes"][0]["value"]
    call = value["calls"][0]
    call["id"] = f"wacid.fuzz-{draw(st.integers(0, 10**9))}"
    call["timestamp"] = str(int(time.time()))
    for _ in range(draw(st.integers(0, 4))):
        target = draw(st.sampled_from(["call", "profile", "metadata", "value", "sdp"]))
        try:  # an earlier mutation may have replaced the container: then skip this one
            _mutate(draw, target, value, call)
        except (TypeError, KeyError, IndexError, AttributeError):
            pass
    raw = json.dumps(body, separators=(",", ":")).encode()
    if draw(st.integers(0, 9)) == 0:  # splice a raw odd value where a string was
        odd = draw(st.sampled_from(RAW_ODD))
        raw = raw.replace(b'"timestamp":"', b'"timestamp":' + (odd or b"0") + b',"x":"', 1)
    return raw


def _mutate(draw, target: str, value: dict, call: dict) -> None:
    if target == "call":
        call[draw(st.sampled_from(CALL_FIELDS))] = draw(json_values)
    elif target == "profile":
        value["contacts"][0]["profile"]["name"] = draw(hostile_text)
    elif target == "metadata":
        key = draw(st.sampled_from(["phone_number_id", "display_phone_number"]))
        value["metadata"][key] = draw(json_values)
    elif target == "value":
        key = draw(st.sampled_from(["calls", "contacts", "statuses", "errors", "metadata"]))
        value[key] = draw(json_values)
    else:
        lines = call["session"]["sdp"].split("\r\n")
        lines[draw(st.integers(0, len(lines) - 1))] = draw(hostile_text)
        call["session"]["sdp"] = "\r\n".join(lines)


def webhook_bodies() -> st.SearchStrategy[bytes]:
    return st.one_of(
        mutated_connects(),
        json_values.map(lambda v: json.dumps(v).encode()),
        st.sampled_from(RAW_ODD),
        st.binary(max_size=200),
        st.builds(lambda odd: b'{"entry":[{"changes":[{"value":{"calls":[{"id":"c",'
                              b'"timestamp":' + (odd or b"0") + b"}]}}]}]}",
                  st.sampled_from(RAW_ODD)),
    )


@dataclass
class Request:
    method: str
    path: str
    body: bytes | None = None
    headers: dict[str, str] = field(default_factory=dict)

    def __repr__(self) -> str:
        body = self.body if self.body is None or len(self.body) < 300 else \
            self.body[:300] + b"..."
        return f"Request({self.method} {self.path[:200]!r} body={body!r} " \
               f"headers={self.headers!r})"


signatures = st.one_of(st.just("SIGN"), st.just(None), hostile_text,
                       st.builds(lambda t: "sha256=" + t, hostile_text))


@st.composite
def webhook_requests(draw) -> Request:
    if draw(st.integers(0, 9)) == 0:
        params = draw(st.dictionaries(
            st.sampled_from(["hub.mode", "hub.verify_token", "hub.challenge", "x"]),
            hostile_text, max_size=3))
        query = "&".join(f"{quote(k)}={quote(v, errors='surrogateescape')}"
                         for k, v in params.items())
        return Request("GET", f"/webhook?{query}")
    body = draw(webhook_bodies())
    signature = draw(signatures)
    headers = {"Content-Type": draw(st.sampled_from(["application/json", "text/plain",
                                                     "x/y; charset=utf-16"]))}
    if signature == "SIGN" or draw(st.integers(0, 2)) > 0:
        headers["X-Hub-Signature-256"] = sign(APP_SECRET, body)
    elif signature is not None:
        headers["X-Hub-Signature-256"] = _one_line(signature)
    return Request("POST", "/webhook", body, headers)


def _one_line(text: str) -> str:
    """Header values without line breaks (a client library refuses those; the raw-socket
    tests in test_http.py send them)."""
    return text.replace("\r", "").replace("\n", "")


API_FIELDS = ["to", "phone_number_id", "context", "extension", "channel", "body",
              "display_text", "ttl_minutes", "payload"]
api_values = st.one_of(json_values, st.sampled_from(
    ["+5511999990000", PNID, "agents", "s", "PJSIP/agent-1", 10080]))


@st.composite
def api_requests(draw) -> Request:
    kind = draw(st.sampled_from(["create", "permission", "button", "list", "get", "delete",
                                 "permissions"]))
    token = draw(st.one_of(st.just(API_TOKEN), st.just(API_TOKEN), hostile_text))
    headers = {"Authorization": _one_line(f"Bearer {token}"),
               "Content-Type": "application/json"}
    segment = draw(hostile_text).replace("/", "%2F")
    segment = quote(segment, safe="", errors="surrogateescape") or "x"
    if kind in ("create", "permission", "button"):
        path = {"create": "/v1/calls", "permission": "/v1/permission-requests",
                "button": "/v1/call-buttons"}[kind]
        if draw(st.integers(0, 4)) == 0:
            body = draw(st.one_of(st.sampled_from(RAW_ODD), st.binary(max_size=100)))
        else:
            fields = draw(st.dictionaries(st.sampled_from(API_FIELDS), api_values,
                                          max_size=6))
            body = json.dumps(fields).encode()
            if draw(st.integers(0, 5)) == 0:
                body = body[:-1] + b',"n":' + (draw(st.sampled_from(RAW_ODD)) or b"0") + b"}"
        return Request("POST", path, body, headers)
    if kind == "list":
        params = draw(st.dictionaries(st.sampled_from(
            ["since", "until", "direction", "outcome", "limit", "phone_number_id", "format",
             "bogus"]), st.one_of(hostile_text, st.sampled_from(
                 ["99999999999d", "1e400", "nan", "-1", "7d", "2026-13-45", "csv",
                  "99999999999999999999"])), max_size=4))
        query = "&".join(f"{quote(k)}={quote(v, errors='surrogateescape')}"
                         for k, v in params.items())
        return Request("GET", f"/v1/calls?{query}", headers=headers)
    if kind == "permissions":
        return Request("GET", f"/v1/permissions/{segment}/{segment}", headers=headers)
    return Request("GET" if kind == "get" else "DELETE", f"/v1/calls/{segment}",
                   headers=headers)


async def send(http: aiohttp.ClientSession, base_url: str, request: Request) -> int:
    """Send one request; its status, or 0 when the client library refuses to send it (a
    header with a line break: nothing reached the gateway)."""
    try:
        async with http.request(request.method, base_url + request.path, data=request.body,
                                headers=request.headers, skip_auto_headers=["Content-Type"]
                                ) as resp:
            await resp.read()
            return resp.status
    except (ValueError, UnicodeEncodeError, aiohttp.InvalidURL):
        return 0
