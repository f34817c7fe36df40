"""One cluster (a service port, or one subset of it, as Envoy's clusters): its policy and
the state its picks keep (round-robin turn, outlier detector, hash rings), and the endpoint
pick, composed in this order:

  members (the usable endpoints of the subset; the caller selects them)
  -> minus the ejected ones, unless fewer than min_health_percent remain (panic: all)
  -> minus the endpoints this connection already tried (retries), when others remain
  -> locality preference (proxy/traffic/locality.py, the rule MeshTable applies)
  -> the load balancer: ROUND_ROBIN, RANDOM, LEAST_REQUEST or the ring hash.

Ejection and retries come before locality so that they fail over to the next locality rank,
as an unhealthy endpoint does. With no outlier detection, no retry and round robin this is
exactly MeshTable.route's pick, so it can replace it."""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from core.mesh.model import Service, Workload
from core.mesh.traffic import SimpleLb
from proxy.traffic import balancers
from proxy.traffic.active import ActiveConnections
from proxy.traffic.locality import describe, preferred
from proxy.traffic.outlier import Clock, OutlierDetector
from proxy.traffic.policy import ClusterPolicy
from proxy.traffic.refusal import Reason, Refused
from proxy.traffic.ringhash import RingCache, hash64


@dataclass(frozen=True, slots=True)
class ClusterKey:
    service: str        # "namespace/hostname"
    port: int           # the service port
    subset: str = ""

    def __str__(self) -> str:
        # Istio's cluster name, with the service key for the host (unique per namespace).
        return f"outbound|{self.port}|{self.subset}|{self.service}"


_AVOID_NOTHING: list[frozenset[str]] = [frozenset()]


def _avoid_levels(tried: Sequence[str]) -> list[frozenset[str]]:
    """What to leave out, strongest first: every endpoint tried, the last one, nothing."""
    if not tried:
        return _AVOID_NOTHING  # a first attempt: every connection, so no allocation
    levels = [frozenset(tried), frozenset(tried[-1:]), frozenset()]
    return [s for i, s in enumerate(levels) if s not in levels[:i]]


class Cluster:
    def __init__(self, key: ClusterKey, policy: ClusterPolicy, clock: Clock,
                 rng: random.Random, active: ActiveConnections) -> None:
        self.key = key
        self._clock = clock
        self._rng = rng
        self._active = active
        self._turn = 0
        self._rings = RingCache()
        self.policy = policy
        self.detector = OutlierDetector(policy.outlier, clock) if policy.outlier else None
        self._seen: Sequence[Workload] | None = None
        self._healthy: tuple[int, tuple[Workload, ...]] | None = None

    def update(self, policy: ClusterPolicy) -> None:
        """A new config: ejections survive only if outlier detection is unchanged (Envoy
        rebuilds a changed cluster, detector included)."""
        if policy.outlier != self.policy.outlier:
            self.detector = OutlierDetector(policy.outlier, self._clock) \
                if policy.outlier else None
            self._seen = self._healthy = None
        self.policy = policy

    def _not_ejected(self, members: Sequence[Workload]) -> tuple[Workload, ...]:
        d = self.detector
        if d is None:
            return tuple(members)
        if members is not self._seen:
            d.set_hosts(w.uid for w in members)
            self._seen, self._healthy = members, None
        d.advance()  # runs due sweeps, so `epoch` is current
        if self._healthy is None or self._healthy[0] != d.epoch:
            ejected = d.ejected()
            healthy = tuple(w for w in members if w.uid not in ejected)
            if members and 100 * len(healthy) < d.config.min_health_percent * len(members):
                healthy = tuple(members)  # panic: below min_health_percent, ignore ejections
            self._healthy = (d.epoch, healthy)
        return self._healthy[1]

    def pick(self, svc: Service, members: Sequence[Workload], src: Workload | None,
             src_ip: str = "", tried: Sequence[str] = ()) -> Workload:
        """One endpoint for a connection from `src` (`src_ip` for the hash); `tried`: the
        endpoints earlier attempts of this connection failed on, oldest first. Raises
        Refused(no_healthy_endpoint)."""
        if not members:
            raise Refused(Reason.NO_HEALTHY_ENDPOINT, f"{self.key} has no usable endpoint")
        healthy = self._not_ejected(members)
        if not healthy:
            raise Refused(Reason.NO_HEALTHY_ENDPOINT,
                          f"{self.key}: all {len(members)} endpoints are ejected")
        for avoid in _avoid_levels(tried):
            candidates = preferred(svc, src, [w for w in healthy if w.uid not in avoid]
                                   if avoid else healthy)
            if candidates:
                return self._balance(candidates, src_ip)
        who = "the source" if src is not None else "an unknown source"
        raise Refused(Reason.NO_HEALTHY_ENDPOINT,
                      f"{self.key} has no endpoint that matches {who} on {describe(svc)}")

    def _balance(self, candidates: tuple[Workload, ...], src_ip: str) -> Workload:
        p = self.policy
        if p.consistent_hash is not None:
            ring = self._rings.ring(candidates, p.consistent_hash.minimum_ring_size)
            use_ip = p.consistent_hash.use_source_ip and src_ip
            return ring.pick(hash64(src_ip) if use_ip else self._rng.getrandbits(64))
        if p.lb == SimpleLb.RANDOM:
            return balancers.random_pick(candidates, self._rng)
        if p.lb == SimpleLb.LEAST_REQUEST:
            return balancers.least_request(candidates, self._active.get, self._rng)
        w = balancers.round_robin(candidates, self._turn)
        self._turn += 1
        return w

    def dump(self) -> dict[str, Any]:
        p = self.policy
        return {"lb": "RING_HASH" if p.consistent_hash else p.lb.name,
                "max_connections": p.pool.max_connections,
                "connect_timeout": p.pool.connect_timeout,
                "outlier_detection": self.detector.dump() if self.detector else None}
