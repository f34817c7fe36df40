"""A token bucket per key, for log lines a client can make the proxy write.

One pod looping `connect()` must not fill the node's log (issue 12: 18,783 access-log
lines in 12 s). Each key (e.g. a pod's uid and the event) gets `burst` lines at once and
`rate` more per second; beyond that lines are dropped and counted, and the next line let
through reports how many were dropped before it (`suppressed`), so nothing vanishes
silently. Keys are bounded: the least recently used bucket is forgotten first.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable, Hashable
from dataclasses import dataclass


@dataclass
class _Bucket:
    tokens: float
    at: float
    suppressed: int = 0


class TokenBuckets:
    def __init__(self, rate: float, burst: float, max_keys: int = 4096,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if rate < 0 or burst < 1 or max_keys < 1:
            raise ValueError("rate must be >= 0, burst >= 1, max_keys >= 1")
        self.rate, self.burst, self.max_keys = rate, float(burst), max_keys
        self._clock = clock
        self._buckets: OrderedDict[Hashable, _Bucket] = OrderedDict()

    def take(self, key: Hashable) -> int | None:
        """None when `key` is over its budget (the line is to be dropped); otherwise the
        number of lines dropped for `key` since the last one let through (usually 0)."""
        now = self._clock()
        b = self._buckets.get(key)
        if b is None:
            b = self._buckets[key] = _Bucket(self.burst, now)
            while len(self._buckets) > self.max_keys:
                self._buckets.popitem(last=False)
        else:
            self._buckets.move_to_end(key)
            b.tokens = min(self.burst, b.tokens + (now - b.at) * self.rate)
            b.at = now
        if b.tokens < 1:
            b.suppressed += 1
            return None
        b.tokens -= 1
        dropped, b.suppressed = b.suppressed, 0
        return dropped

    def __len__(self) -> int:
        return len(self._buckets)
