"""The calls the simulated Meta carries, either direction: the phones it hands its users, the
registry of calls (with a wait for the business's next call), and what Meta does when a call
ends."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from gateway.simulator.call import RequestLog, SimulatedCall
from gateway.simulator.payloads import Payloads
from gateway.simulator.permission_replies import PermissionReplies
from gateway.simulator.phone import DEFAULT_TIMERS, PhoneTimers, SimulatedPhone
from gateway.simulator.prompts import PromptLibrary
from gateway.simulator.runtime import Background, Clock
from gateway.simulator.transcript import Transcript
from gateway.simulator.users import meta_number_forms
from gateway.simulator.webhooks import WebhookSender

if TYPE_CHECKING:
    from gateway.simulator.media import CallMedia


class Phones:
    """Makes the users' phones, all alike: the same timers, hearing window and prompt
    library."""

    def __init__(self, *, timers: PhoneTimers = DEFAULT_TIMERS, hearing_window_s: float = 0.5,
                 prompts: PromptLibrary | None = None):
        self.timers = timers
        self.hearing_window_s = hearing_window_s
        self.prompts = prompts
        """Asterisk's sound files: phones name the prompts they hear (simulator/prompts.py)."""
        self.phone_class: type[SimulatedPhone] = SimulatedPhone
        """What a user's phone is: a load generator puts a cheaper subclass here
        (benchmarks/load_phones.py)."""

    def new(self, transcript: Transcript, name: str, idle_audio: bytes | None = None,
            g711: Sequence[str] = ()) -> SimulatedPhone:
        """``g711``: the codecs of the number's ``audio.additional_codecs``, which Meta then
        offers beside Opus (docs/meta-2026-settings-events.md §7)."""
        return self.phone_class(transcript=transcript, name=name, timers=self.timers,
                                idle_audio=idle_audio, hearing_window_s=self.hearing_window_s,
                                prompts=self.prompts, g711=g711)


class CallEnds:
    """Meta's side of every call's end (:class:`~gateway.simulator.call.CallEnding`): the
    terminate webhook, then voicemail or recordings, and the unanswered-call count of
    business calls."""

    def __init__(self, *, payloads: Payloads, webhooks: WebhookSender, media: CallMedia,
                 permissions: PermissionReplies, background: Background):
        self.payloads = payloads
        self.webhooks = webhooks
        self.media = media
        self.permissions = permissions
        self.background = background

    async def terminate(self, call: SimulatedCall, error_code: int | None,
                        error_detail: str | None) -> None:
        await self.webhooks.send_call_webhook(call, self.payloads.terminate(
            call, error_code=error_code, error_detail=error_detail))

    async def after(self, call: SimulatedCall) -> None:
        if call.voicemail_at is not None:
            self.background.spawn(self.media.deliver_voicemail(call))
        elif call.accepted_at is not None and call.opt_in:
            self.background.spawn(self.media.deliver_recordings(call))
        if call.outbound:
            await self.permissions.count_unanswered(call)


class CallRegistry:
    """Every call, both directions, by wacid; makes them and tells who listens."""

    def __init__(self, *, clock: Clock, background: Background, ending: CallEnds,
                 requests: RequestLog):
        self.clock = clock
        self.background = background
        self.ending = ending
        self.requests = requests
        self.calls: dict[str, SimulatedCall] = {}
        self.listeners: list[Callable[[SimulatedCall], None]] = []
        """Called with each new call, either direction, before its connect webhook goes out
        (e.g. to print its transcript live); ``call.direction`` tells them apart."""
        self._outbound_added = asyncio.Condition()
        self._claimed: set[str] = set()

    def new_call(self, **fields: Any) -> SimulatedCall:
        """A call on this Meta (not registered yet: :meth:`add`)."""
        return SimulatedCall(clock=self.clock, background=self.background,
                             ending=self.ending, requests=self.requests, **fields)

    async def add(self, call: SimulatedCall) -> None:
        """Register the call and tell the listeners and anyone waiting for it."""
        self.calls[call.call_id] = call
        for listener in self.listeners:
            listener(call)
        if call.outbound:
            async with self._outbound_added:
                self._outbound_added.notify_all()

    def get(self, call_id: str) -> SimulatedCall | None:
        return self.calls.get(call_id)

    def ongoing(self, phone_number_id: str, user_key: str) -> bool:
        """Is a call between this number and this user still up?"""
        return any(c.user.key == user_key and c.phone_number_id == phone_number_id
                   and not c.is_over for c in self.calls.values())

    @property
    def outbound_calls(self) -> list[SimulatedCall]:
        """Business-initiated calls, oldest first."""
        return [c for c in self.calls.values() if c.outbound]

    async def wait_outbound_call(self, to: str | None = None,
                                 timeout: float | None = 10.0) -> SimulatedCall:
        """The next business-initiated call (to ``to`` if given) not returned before by this
        method: an earlier one if it already exists, else the next to arrive. Raises
        TimeoutError."""
        wanted = to.lstrip("+") if to else None

        def find() -> SimulatedCall | None:
            return next((c for c in self.outbound_calls if c.call_id not in self._claimed
                         and (wanted is None or wanted == c.user.user_id
                              or c.wa_id in meta_number_forms(wanted))), None)

        async with self._outbound_added:
            call = await asyncio.wait_for(self._outbound_added.wait_for(find), timeout)
        assert call is not None
        self._claimed.add(call.call_id)
        return call

    async def hang_up_all(self) -> None:
        for call in list(self.calls.values()):
            if call.state != "ended":
                await call.phone.hangup()
