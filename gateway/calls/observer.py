"""What a call tells the outside world (metrics, call records, logs) as it goes.

Calls depend on this small interface, not on Prometheus or SQLite, so a call can be driven in a
test with nothing behind it and the app decides what is recorded where (gateway/app.py).
"""

from __future__ import annotations

from gateway.calls.record import CallRecord


class CallObserver:
    """No-op base: override what you record."""

    def call_admitted(self, record: CallRecord) -> None:
        """The call got past admission; the record is saved so a crash cannot lose it."""

    def call_rejected(self, record: CallRecord) -> None:
        """The gateway refused the call (record.reason says why)."""

    def call_setup(self, record: CallRecord, stage: str, seconds: float) -> None:
        """Set-up milestone since the webhook: stage is pre_accept, dialplan or media."""

    def call_event(self, record: CallRecord, event: str, **fields: object) -> None:
        """Any notable step, for the one-line-per-event call log."""

    def call_ended(self, record: CallRecord) -> None:
        """Final record: outcome, causes, media stats."""


class ObserverGroup(CallObserver):
    """Fans every notification out to several observers; one failing never stops the others."""

    def __init__(self, *observers: CallObserver):
        self.observers = list(observers)

    def _each(self, name: str, *args: object, **kwargs: object) -> None:
        import logging

        for o in self.observers:
            try:
                getattr(o, name)(*args, **kwargs)
            except Exception:
                logging.getLogger(__name__).exception("observer %s.%s failed",
                                                      type(o).__name__, name)

    def call_admitted(self, record: CallRecord) -> None:
        self._each("call_admitted", record)

    def call_rejected(self, record: CallRecord) -> None:
        self._each("call_rejected", record)

    def call_setup(self, record: CallRecord, stage: str, seconds: float) -> None:
        self._each("call_setup", record, stage, seconds)

    def call_event(self, record: CallRecord, event: str, **fields: object) -> None:
        self._each("call_event", record, event, **fields)

    def call_ended(self, record: CallRecord) -> None:
        self._each("call_ended", record)
