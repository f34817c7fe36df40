"""Fighting-loop guard for repairs.

If another CNI agent rewrites the conflist every time we fix it (Cilium with
`cni.exclusive=true` deletes foreign entries; cilium/cilium#30614), both would loop as
fast as inotify allows. A token bucket lets `burst` repairs through at once, then
`rate` per second (istio-cni uses 0.2/s), and warns once per episode with a hint.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import structlog

from agent.install import metrics

log = structlog.get_logger()

FIGHT_HINT = ("another agent keeps rewriting the CNI config; if it is Cilium, set "
              "'cni.exclusive=false' so it leaves chained plugins in place")


class RepairThrottle:
    def __init__(self, burst: int = 5, rate: float = 0.2,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if burst < 1 or rate <= 0:
            raise ValueError("throttle needs burst >= 1 and rate > 0")
        self.burst = burst
        self.rate = rate
        self._clock = clock
        self._tokens = float(burst)
        self._stamp = clock()
        self._warned = False

    def _refill(self, now: float) -> None:
        self._tokens = min(float(self.burst), self._tokens + (now - self._stamp) * self.rate)
        self._stamp = now
        if self._tokens >= self.burst:
            self._warned = False  # the episode is over

    def delay(self) -> float:
        """Seconds to wait before the next repair may run (0: go now, and a token is spent)."""
        now = self._clock()
        self._refill(now)
        if self._tokens >= 1.0:
            self._tokens -= 1.0
            return 0.0
        wait = (1.0 - self._tokens) / self.rate
        metrics.THROTTLED.inc()
        if not self._warned:
            self._warned = True
            log.warning("cni_install_repair_throttled", hint=FIGHT_HINT, burst=self.burst,
                        rate_per_second=self.rate, wait_seconds=round(wait, 3))
        return wait
