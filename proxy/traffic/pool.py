"""connectionPool.tcp.maxConnections: a counter per cluster. A connection holds a slot from
before its first connect attempt until it closes (retries reuse the slot); with the limit
reached the next one is refused as overflow and counted. Envoy's circuit breaker counts the
same way (per cluster, not per endpoint; `current < max` to open one more).

Counts are kept per cluster key whatever the policy: a limit lowered by a new config applies
to the connections already open, and no connection is forgotten by a config change."""

from __future__ import annotations

from collections.abc import Hashable

from proxy.traffic.refusal import Reason, Refused


class Lease:
    """One slot; `release` is idempotent, so every exit path may call it."""

    __slots__ = ("_key", "_pools")

    def __init__(self, pools: ConnectionPools, key: Hashable) -> None:
        self._pools: ConnectionPools | None = pools
        self._key = key

    def release(self) -> None:
        if self._pools is not None:
            self._pools._release(self._key)
            self._pools = None

    @property
    def held(self) -> bool:
        return self._pools is not None


class ConnectionPools:
    def __init__(self) -> None:
        self._open: dict[Hashable, int] = {}
        self.overflows: dict[Hashable, int] = {}

    def acquire(self, key: Hashable, limit: int) -> Lease:
        n = self._open.get(key, 0)
        if n >= limit:
            self.overflows[key] = self.overflows.get(key, 0) + 1
            raise Refused(Reason.OVERFLOW,
                          f"{key}: {n} connections open, maxConnections is {limit}")
        self._open[key] = n + 1
        return Lease(self, key)

    def open(self, key: Hashable) -> int:
        return self._open.get(key, 0)

    def _release(self, key: Hashable) -> None:
        n = self._open.get(key, 0) - 1
        if n > 0:
            self._open[key] = n
        else:
            self._open.pop(key, None)
