"""Active connections per endpoint (workload uid), node-wide: the load signal LEAST_REQUEST
compares. A connection counts from the moment an attempt is made to the endpoint until it
fails or closes, as Envoy counts a request active from its assignment to a host. Node-wide
rather than per cluster: an endpoint's load does not depend on which subset sent it."""

from __future__ import annotations


class ActiveConnections:
    def __init__(self) -> None:
        self._n: dict[str, int] = {}

    def get(self, uid: str) -> int:
        return self._n.get(uid, 0)

    def start(self, uid: str) -> None:
        self._n[uid] = self._n.get(uid, 0) + 1

    def end(self, uid: str) -> None:
        n = self._n.get(uid, 0) - 1
        if n > 0:
            self._n[uid] = n
        else:
            self._n.pop(uid, None)

    def snapshot(self) -> dict[str, int]:
        return dict(self._n)
