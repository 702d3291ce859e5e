"""Hand-offs between gateways over PostgreSQL LISTEN/NOTIFY: a :class:`CallEventRouter`
(gateway/handoff.py) for gateways sharing one store.

Why LISTEN/NOTIFY rather than an internal HTTP hand-off:

- Every gateway on a shared store is already connected to this PostgreSQL, and already
  trusts it with its calls. HTTP would need each gateway's private address advertised (a new
  ``advertise_url`` key, wrong as soon as a container is rescheduled), a port that the load
  balancer must not expose, and its own authentication; NOTIFY needs nothing new: the database
  login is the authentication, the instance id is the address.
- It is fast enough by far: a NOTIFY reaches the listener when the sending statement commits,
  about a millisecond on one host (measured: docs/scaling.md, the ``postgres`` test
  tests/unit/test_handoff_pg.py), where the issue asks for tens of milliseconds.
- Its limits are met here: a payload is at most 8000 bytes (a terminate or status event is
  well under 1 KB; an outbound connect with Meta's SDP answer about 3 KB), and a notification
  reaches only sessions listening at that moment, so every hand-off is answered and the
  sender sends it again when no answer comes (gateway/handoff.py).

One channel per instance, ``wa_handoff_<instance id>``. The listening connection is dedicated
(psycopg's ``notifies()`` holds it) and is made again, with a growing pause, whenever it
breaks (a server restart, a failover); notifications sent meanwhile are lost, and their
senders' retries cover that. Sending and answering use a small pool of their own, so a
hand-off never queues behind the store's record writes.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import uuid
from typing import Any

import psycopg
from psycopg import sql
from psycopg_pool import AsyncConnectionPool

from gateway.handoff import HandOff, HandOffHandler

log = logging.getLogger(__name__)

CHANNEL_PREFIX = "wa_handoff_"
MAX_PAYLOAD = 7999
"""PostgreSQL refuses a NOTIFY payload of 8000 bytes or more ("payload string too long")."""
RECONNECT_S = (0.2, 0.5, 1.0, 2.0, 5.0)
"""Pauses before each new try of the listening connection (the last one repeats)."""
CONNECT_TIMEOUT_S = 5


def channel_for(instance_id: str) -> str:
    """The NOTIFY channel of an instance (an id is at most 32 characters: this stays under
    PostgreSQL's 63-byte identifiers; hyphens are kept, LISTEN quotes the name)."""
    return CHANNEL_PREFIX + instance_id


class PgNotifyRouter:
    """Hand-offs to and from other gateway instances on one PostgreSQL."""

    def __init__(self, url: str, instance_id: str):
        self._url = url
        self.instance_id = instance_id
        self._handler: HandOffHandler | None = None
        self._pool: AsyncConnectionPool | None = None
        self._listener: asyncio.Task | None = None
        self._waiting: dict[str, asyncio.Future[dict[str, Any] | None]] = {}
        self._answers: set[asyncio.Task] = set()
        self.listening = asyncio.Event()
        """Set while the listening connection is up (hand-offs to this instance arrive)."""

    async def start(self, handler: HandOffHandler) -> None:
        """Listen from now on: returns once the first LISTEN is in place, so a hand-off sent
        after a gateway started is not missed (or, if the server does not let it listen
        within the connect timeout, with the listener still trying: calls go on, and what is
        handed here is resent until it listens)."""
        self._handler = handler
        self._pool = AsyncConnectionPool(
            self._url, min_size=1, max_size=2, open=False, name="handoff",
            kwargs={"autocommit": True, "connect_timeout": CONNECT_TIMEOUT_S},
            check=AsyncConnectionPool.check_connection)
        await self._pool.open(wait=True, timeout=CONNECT_TIMEOUT_S * 2)
        self._listener = asyncio.ensure_future(self._listen())
        listening = asyncio.ensure_future(self.listening.wait())
        await asyncio.wait({listening, self._listener}, timeout=CONNECT_TIMEOUT_S * 2,
                           return_when=asyncio.FIRST_COMPLETED)
        listening.cancel()
        if self._listener.done():  # failed for a reason no retry mends: say why
            self._listener.result()
        if not self.listening.is_set():
            log.warning("hand-offs: not listening yet on %s; still trying",
                        channel_for(self.instance_id))

    async def close(self) -> None:
        for task in (self._listener, *self._answers):
            if task is not None:
                task.cancel()
        for task in (self._listener, *self._answers):
            if task is not None:
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
        self._listener = None
        for waiting in self._waiting.values():
            if not waiting.done():
                waiting.set_result(None)
        if self._pool is not None:
            await self._pool.close()
            self._pool = None

    async def send(self, owner: str, message: HandOff, timeout_s: float) -> dict[str, Any] | None:
        ask = uuid.uuid4().hex
        answer: asyncio.Future[dict[str, Any] | None] = \
            asyncio.get_running_loop().create_future()
        self._waiting[ask] = answer
        try:
            await self._notify(owner, {"id": ask, "from": self.instance_id,
                                       "kind": message.kind, "body": message.body})
            return await asyncio.wait_for(answer, timeout_s)
        except (TimeoutError, psycopg.OperationalError, OSError) as exc:
            if not isinstance(exc, TimeoutError):
                log.warning("hand-off to %s not sent: %s", owner, exc)
            return None
        finally:
            self._waiting.pop(ask, None)

    async def _notify(self, instance: str, payload: dict[str, Any]) -> None:
        """Send one notification; a payload too large for one is not sent (logged), as if
        lost: the sender then gets no answer."""
        text = json.dumps(payload, separators=(",", ":"))
        if len(text.encode()) > MAX_PAYLOAD:
            log.warning("hand-off to %s not sent: %d bytes do not fit in a NOTIFY (%d)",
                        instance, len(text.encode()), MAX_PAYLOAD)
            return
        if self._pool is None:
            raise psycopg.OperationalError("hand-off router is closed")
        async with self._pool.connection() as conn:
            await conn.execute("SELECT pg_notify(%s, %s)", (channel_for(instance), text))

    async def _listen(self) -> None:
        failures = 0
        while True:
            try:
                async with await psycopg.AsyncConnection.connect(
                        self._url, autocommit=True, connect_timeout=CONNECT_TIMEOUT_S) as conn:
                    await conn.execute(sql.SQL("LISTEN {}").format(
                        sql.Identifier(channel_for(self.instance_id))))
                    if failures:
                        log.info("hand-offs: listening again on %s",
                                 channel_for(self.instance_id))
                    failures = 0
                    self.listening.set()
                    async for notify in conn.notifies():
                        self._received(notify.payload)
            except (psycopg.OperationalError, OSError) as exc:
                self.listening.clear()
                pause = RECONNECT_S[min(failures, len(RECONNECT_S) - 1)]
                failures += 1
                log.warning("hand-offs: listening connection lost (%s); again in %g s "
                            "(hand-offs to this gateway are resent by their senders)",
                            str(exc).strip() or type(exc).__name__, pause)
                await asyncio.sleep(pause)

    def _received(self, payload: str) -> None:
        try:
            data = json.loads(payload)
        except ValueError:
            log.warning("hand-offs: a notification that is not JSON dropped")
            return
        if "answers" in data:
            waiting = self._waiting.get(str(data["answers"]))
            if waiting is not None and not waiting.done():
                waiting.set_result(data.get("body") or {})
            return
        task = asyncio.ensure_future(self._answer(data))
        self._answers.add(task)
        task.add_done_callback(self._answers.discard)

    async def _answer(self, data: dict[str, Any]) -> None:
        assert self._handler is not None
        sender = str(data.get("from", ""))
        try:
            body = await self._handler(HandOff(str(data.get("kind", "")),
                                               dict(data.get("body") or {}), sender))
            await self._notify(sender, {"answers": data.get("id"), "body": body})
        except (psycopg.OperationalError, OSError) as exc:
            log.warning("hand-off from %s not answered: %s", sender, exc)
        except Exception:
            log.exception("hand-off from %s failed", sender)
