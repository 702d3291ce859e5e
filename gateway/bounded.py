"""A dict that keeps only its newest entries: the gateway's one bounded cache.

Meta delivers webhooks at least once (docs/meta-calling.md §7) and observers may hear a call's
end twice, so several places remember what they have already seen: webhook events
(gateway/calls/manager.py), finished outbound calls still answerable by id (same), ended calls
counted in metrics (gateway/metrics.py) and in the pickup rate (gateway/account_health.py),
digits already reported (gateway/media/rfc4733.py). Each must stay bounded for a gateway that
runs for months; each forgets the oldest first. ``collections.OrderedDict`` does that in a few
lines, so no cache library is pulled in for it.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Hashable
from typing import TypeVar

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class BoundedDict(OrderedDict[K, V]):
    """An ordered dict of at most ``maxsize`` entries: adding one more forgets the oldest
    (first inserted; setting an existing key again keeps its place)."""

    def __init__(self, maxsize: int):
        if maxsize < 1:
            raise ValueError(f"maxsize must be at least 1, got {maxsize}")
        super().__init__()
        self.maxsize = maxsize

    def __setitem__(self, key: K, value: V) -> None:
        super().__setitem__(key, value)
        if len(self) > self.maxsize:
            self.popitem(last=False)

    def first_time(self, key: K) -> bool:
        """Remember ``key``; True unless it was already remembered (a duplicate)."""
        if key in self:
            return False
        self[key] = None  # type: ignore[assignment]
        return True
