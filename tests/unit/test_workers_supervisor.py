"""The supervisor's choices that need no worker running: which worker an API request goes to,
and what it refuses before any worker sees the request."""

from __future__ import annotations

import os
import shutil

import pytest
from aiohttp.test_utils import make_mocked_request

from gateway.config import parse_config
from gateway.workers.routing import user_worker
from gateway.workers.supervisor import Supervisor, _body_user


def config(**media):
    return parse_config({
        "whatsapp": {"graph_url": "http://127.0.0.1:1/v25.0", "access_token": "t",
                     "app_secret": "s", "verify_token": "v"},
        "numbers": [{"phone_number_id": "1", "context": "c"}],
        "asterisk": {"ami": {"port": 1, "username": "u", "secret": "x"}},
        "media": {"rtp_ports": "40000-40003", **media},
        "api": {"tokens": ["api-token"]},
    }, env={})


@pytest.fixture
def supervisor(tmp_path):
    sup = Supervisor(config(), str(tmp_path / "gateway.yaml"), 3)
    for i in range(3):
        sup.router.worker_up(i)
    yield sup
    shutil.rmtree(sup.metrics_dir)
    os.rmdir(sup.socket_dir)


def test_api_requests_go_to_the_worker_that_decides_for_the_user_or_owns_the_call(supervisor):
    user_index = user_worker("+5511987650000", 3)
    post = make_mocked_request("POST", "/v1/calls")
    assert supervisor._api_worker(post, b'{"to": "+5511987650000", "context": "c"}') \
        == user_index
    request = make_mocked_request("POST", "/v1/permission-requests")
    assert supervisor._api_worker(request, b'{"recipient": "+5511987650000"}') == user_index
    get = make_mocked_request("GET", "/v1/calls/wa-gw-a1b2c3-w2-" + "0123abcd" * 4)
    assert supervisor._api_worker(get, None) == 2
    show = make_mocked_request("GET", "/v1/permissions/1/+5511987650000")
    assert supervisor._api_worker(show, None) == user_index
    supervisor.router.report(0, 4)
    supervisor.router.report(1, 0)
    supervisor.router.report(2, 4)
    assert supervisor._api_worker(make_mocked_request("GET", "/v1/calls"), None) == 1


def test_a_body_that_names_no_user_is_left_for_the_worker_to_refuse():
    assert _body_user(b'{"to": 5511}') == ""
    assert _body_user(b"[1, 2]") == ""
    assert _body_user(b'{"to": NaN}') == ""  # not strict JSON: the worker answers the 400
    assert _body_user(None) == ""


async def test_api_without_the_token_never_reaches_a_worker(supervisor):
    async def handler(request):
        raise AssertionError("forwarded")

    for header in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "api-token"}):
        request = make_mocked_request("POST", "/v1/calls", headers=header)
        (auth,) = supervisor.web.middlewares  # the one /v1 guard, gateway/api.py bearer_auth
        response = await auth(request, handler)
        assert response.status == 401


def test_each_worker_needs_ports_of_its_own(tmp_path):
    with pytest.raises(ValueError, match="rtp_ports has 4 port"):
        Supervisor(config(), str(tmp_path / "gateway.yaml"), 5)
