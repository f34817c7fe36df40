"""Outlier detection for one cluster, as Envoy's consecutive-error detectors do it
(source/common/upstream/outlier_detection_impl.cc), driven by an injected clock.

Results an L4 proxy sees, mapped onto Envoy's HTTP codes as its TCP proxy does:
- CONNECT_FAILED (refused, unreachable, or the connect timeout): a gateway error (503/504),
  so it counts towards both `consecutive_gateway_errors` and `consecutive_5xx_errors`;
- RESET (the upstream reset an established connection): a 5xx that is not a gateway error
  (500): counts towards 5xx and clears the gateway streak;
- CONNECTED: clears the gateway streak only. Envoy's TCP proxy reports a connect success as
  a 200, which clears both streaks; but then a reset, which always follows a successful
  connect, could never add up to a 5xx streak. So the 5xx streak is cleared by
- CLOSED: the connection ended without an upstream reset (200).

Ejection: when a streak reaches its threshold (exactly, as Envoy's `==`), the streak restarts
and the endpoint is ejected unless it already is, or unless one more ejection would put the
ejected share above max_ejection_percent: 100 * (ejected + 1) / endpoints > max. Envoy does
not eject "at least one" unless always_eject_one_host is set, which Istio never sets: with
the default 10%, a service needs 10 endpoints before one can be ejected.

Return: a sweep runs every `interval` from the detector's creation. It returns each ejected
endpoint whose time is up, min(base_ejection_time * k, max_ejection_time) since its
ejection, where k grows by one per ejection and shrinks by one per sweep the endpoint spends
back in service, one interval or more after its return (Envoy >= 1.18's backoff; Istio's
"base time multiplied by the number of times the host has been ejected" is the same for a
host that keeps failing). So an endpoint is out for at least its time, at most one interval
more. max_ejection_time is Envoy's 300s (Istio does not expose it). A returned endpoint's
streaks start from zero.

Sweeps are computed, not timed: `advance(now)` runs the sweeps due up to `now` (those that
return nobody in bulk), so the proxy needs no timer per cluster, the cost does not grow with
idle time, and a fake clock replays a timeline exactly.

The panic threshold (min_health_percent) is applied by the picker, not here: ejections stay
recorded; proxy/traffic/cluster.py ignores them while too few endpoints remain."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from enum import Enum
from typing import Any

from core.mesh.traffic import OutlierDetection

Clock = Callable[[], float]

# Sweeps fall on start + n * interval; float arithmetic must not push one past its moment.
_EPS = 1e-9


class Outcome(Enum):
    CONNECT_FAILED = "connect_failed"
    CONNECTED = "connected"
    RESET = "reset"
    CLOSED = "closed"


@dataclass(slots=True)
class _Host:
    streak_5xx: int = 0
    streak_gateway: int = 0
    ejected: bool = False
    ejections: int = 0                  # ever, for dumps
    backoff: int = 0                    # Envoy's ejectTimeBackoff multiplier
    ejected_at: float = 0.0
    returned_at: float | None = None


class OutlierDetector:
    def __init__(self, config: OutlierDetection, clock: Clock) -> None:
        self.config = config
        self._clock = clock
        self._start = clock()
        self._next = 1                  # index of the next sweep: at start + next * interval
        self._hosts: dict[str, _Host] = {}
        self.epoch = 0                  # bumped on every ejection or return
        self.overflows = 0              # ejections refused by max_ejection_percent

    # -- membership ---------------------------------------------------------------------------

    def set_hosts(self, uids: Iterable[str]) -> None:
        """The cluster's endpoints now: new ones start clean, gone ones are forgotten (an
        ejected one no longer counts against max_ejection_percent)."""
        keep = set(uids)
        for uid in [u for u in self._hosts if u not in keep]:
            if self._hosts.pop(uid).ejected:
                self.epoch += 1
        for uid in keep:
            self._hosts.setdefault(uid, _Host())

    # -- results ------------------------------------------------------------------------------

    def record(self, uid: str, outcome: Outcome) -> None:
        self.advance()
        h = self._hosts.get(uid)
        if h is None:
            return  # an endpoint that left the cluster while the connection lived
        cfg = self.config
        if outcome is Outcome.CONNECT_FAILED:
            h.streak_gateway += 1
            if cfg.consecutive_gateway_errors and \
                    h.streak_gateway == cfg.consecutive_gateway_errors:
                self._streak_ended(uid, h, gateway=True)
            h.streak_5xx += 1
            if cfg.consecutive_5xx_errors and h.streak_5xx == cfg.consecutive_5xx_errors:
                self._streak_ended(uid, h, gateway=False)
        elif outcome is Outcome.RESET:
            h.streak_gateway = 0
            h.streak_5xx += 1
            if cfg.consecutive_5xx_errors and h.streak_5xx == cfg.consecutive_5xx_errors:
                self._streak_ended(uid, h, gateway=False)
        elif outcome is Outcome.CONNECTED:
            h.streak_gateway = 0
        else:
            h.streak_gateway = h.streak_5xx = 0

    def _streak_ended(self, uid: str, h: _Host, gateway: bool) -> None:
        if h.ejected:
            return  # Envoy: no reset either; the return clears the streaks
        self._eject(h)
        if gateway:
            h.streak_gateway = 0
        else:
            h.streak_5xx = 0

    def _eject(self, h: _Host) -> None:
        cfg = self.config
        ejected = sum(1 for x in self._hosts.values() if x.ejected)
        if 100.0 * (ejected + 1) / len(self._hosts) > cfg.max_ejection_percent:
            self.overflows += 1
            return
        h.ejected = True
        h.ejections += 1
        h.ejected_at = self._clock()
        base, most = cfg.base_ejection_time, cfg.max_ejection_time
        if h.backoff * base < most + base:
            h.backoff += 1
        self.epoch += 1

    # -- sweeps -------------------------------------------------------------------------------

    def _sweep_time(self, n: int) -> float:
        return self._start + n * self.config.interval

    def _index_at_or_after(self, t: float) -> int:
        return math.ceil((t - self._start) / self.config.interval - _EPS)

    def advance(self, now: float | None = None) -> None:
        """Run the sweeps due up to `now`. Only a sweep that returns an endpoint is run one
        by one; the sweeps between two returns can only shrink backoffs, one per sweep for
        each endpoint back in service for an interval, which is applied in bulk. So the
        work is bounded by the ejections, not by the time elapsed."""
        now = self._clock() if now is None else now
        cfg = self.config
        last_due = math.floor((now - self._start) / cfg.interval + _EPS)  # last sweep <= now
        while self._next <= last_due:
            returns = [h.ejected_at + min(cfg.base_ejection_time * h.backoff,
                                          cfg.max_ejection_time)
                       for h in self._hosts.values() if h.ejected]
            first_return = self._index_at_or_after(min(returns)) if returns else None
            if first_return is not None and first_return <= self._next:
                self._sweep(self._sweep_time(self._next))
                self._next += 1
                continue
            # Sweeps next..upto return nobody: shrink the backoffs by the sweeps each sees.
            upto = last_due if first_return is None else min(last_due, first_return - 1)
            for h in self._hosts.values():
                if not h.ejected and h.backoff and h.returned_at is not None:
                    eligible = self._index_at_or_after(h.returned_at + cfg.interval)
                    h.backoff = max(0, h.backoff - max(0, upto - max(self._next, eligible) + 1))
            self._next = upto + 1

    def _sweep(self, at: float) -> None:
        cfg = self.config
        for h in self._hosts.values():
            if h.ejected and at - h.ejected_at + _EPS >= min(
                    cfg.base_ejection_time * h.backoff, cfg.max_ejection_time):
                h.ejected = False
                h.streak_5xx = h.streak_gateway = 0
                h.returned_at = at
                self.epoch += 1
        for h in self._hosts.values():
            if (not h.ejected and h.backoff and h.returned_at is not None
                    and at - h.returned_at + _EPS >= cfg.interval):
                h.backoff -= 1

    # -- queries ------------------------------------------------------------------------------

    def ejections(self) -> int:
        """Ejections ever made, over the endpoints still held."""
        return sum(h.ejections for h in self._hosts.values())

    def ejected(self) -> frozenset[str]:
        self.advance()
        return frozenset(uid for uid, h in self._hosts.items() if h.ejected)

    def dump(self) -> dict[str, Any]:
        self.advance()
        return {uid: {"ejected": h.ejected, "ejections": h.ejections, "backoff": h.backoff,
                      "consecutive_5xx": h.streak_5xx, "consecutive_gateway": h.streak_gateway}
                for uid, h in sorted(self._hosts.items())}
