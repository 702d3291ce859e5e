"""Property-based fuzzing of the webhook parser and of every HTTP endpoint of a running gateway.

The property: whatever arrives — signed or not, JSON or not, shaped like Meta's connect or not —
the answer is never a 5xx, no handler raises, and nothing the gateway spawned for it logs an
error. Deterministic in CI (``derandomize=True``, no example database), a few thousand cases in
all; benchmarks/fuzz_gateway.py runs the same generators 100,000 times against a live gateway.
"""

from __future__ import annotations

import asyncio
import logging

import pytest
from hypothesis import HealthCheck, given, settings

from gateway.whatsapp.events import MalformedWebhook, ParsedWebhook, parse_body
from tests.security import hostile

from .conftest import Running


def fuzz(examples: int) -> settings:
    return settings(max_examples=examples, derandomize=True, database=None, deadline=None,
                    print_blob=True,
                    suppress_health_check=[HealthCheck.function_scoped_fixture,
                                           HealthCheck.too_slow, HealthCheck.data_too_large])



@fuzz(2000)
@given(hostile.webhook_bodies())
def test_the_parser_returns_events_or_malformed_never_anything_else(body: bytes):
    try:
        parsed = parse_body(body)
    except MalformedWebhook:
        return
    assert isinstance(parsed, ParsedWebhook)
    for event in parsed.events:
        hash(event.dedup_key)


class Errors(logging.Handler):
    """ERROR records and loop exceptions seen while the fuzz ran."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.seen: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.seen.append(self.format(record))


@pytest.fixture
def errors():
    handler = Errors()
    logging.getLogger().addHandler(handler)
    yield handler
    logging.getLogger().removeHandler(handler)


async def _check(running: Running, errors: Errors, request: hostile.Request) -> None:
    status = await hostile.send(running.http, running.url, request)
    assert status < 500, f"{status} for {request}"


@fuzz(1000)
@given(request=hostile.webhook_requests())
async def test_webhook_endpoint_never_answers_5xx(running: Running, errors: Errors,
                                                  request: hostile.Request):
    asyncio.get_running_loop().set_exception_handler(
        lambda loop, ctx: errors.seen.append(str(ctx.get("exception") or ctx["message"])))
    errors.seen.clear()
    await _check(running, errors, request)
    await running.settle()
    assert errors.seen == []


@fuzz(600)
@given(request=hostile.api_requests())
async def test_api_endpoints_never_answer_5xx(running: Running, errors: Errors,
                                              request: hostile.Request):
    errors.seen.clear()
    await _check(running, errors, request)
    await running.settle()
    assert errors.seen == []
