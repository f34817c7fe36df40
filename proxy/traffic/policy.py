"""The traffic policy in force for one cluster (a service port, or one subset of it), merged
as pilot merges it (MergeSubsetTrafficPolicy) and with Istio's defaults filled in:

1. the DestinationRule's policy, or its portLevelSettings entry for the port, which replaces
   it as a whole (a part the entry leaves unset takes its default, not the rule's value);
2. then the subset's policy, part by part: a load balancer, connection pool or outlier
   detection the subset sets replaces the rule's; the subset's own port-level entry for the
   port replaces all three (unset parts reset to their defaults).

Defaults: no load balancer or UNSPECIFIED is LEAST_REQUEST (pilot's default algorithm; the
deprecated LEAST_CONN is its old name); no connection pool is unlimited connections with the
mesh connect timeout; no outlier detection is none.

A service with no traffic rules at all (no ServiceTraffic record) keeps the proxy's round
robin (`NO_RULES`): meshnode without VirtualService or DestinationRule routes exactly as it
did, as ztunnel's own picker ignores DestinationRules. That is the one departure from Istio,
whose sidecars use LEAST_REQUEST for every service."""

from __future__ import annotations

from dataclasses import dataclass

from core.mesh.traffic import (
    ConnectionPool,
    ConsistentHash,
    LoadBalancer,
    OutlierDetection,
    ServiceTraffic,
    SimpleLb,
    TrafficPolicy,
)

_Parts = tuple[LoadBalancer | None, ConnectionPool | None, OutlierDetection | None]


@dataclass(frozen=True, slots=True)
class ClusterPolicy:
    lb: SimpleLb                        # RANDOM, ROUND_ROBIN, LEAST_REQUEST or PASSTHROUGH
    pool: ConnectionPool
    outlier: OutlierDetection | None = None
    consistent_hash: ConsistentHash | None = None   # set: ring hash, `lb` unused


NO_RULES = ClusterPolicy(SimpleLb.ROUND_ROBIN, ConnectionPool())


def _for_port(policy: TrafficPolicy | None, port: int) -> tuple[_Parts | None, bool]:
    """The parts of one level for `port`, and whether a port-level entry supplied them."""
    if policy is None:
        return None, False
    p = policy.for_port(port)
    if p is None:
        return (policy.load_balancer, policy.connection_pool, policy.outlier_detection), False
    return (p.load_balancer, p.connection_pool, p.outlier_detection), True


def merged(rule: TrafficPolicy | None, subset: TrafficPolicy | None, port: int) -> _Parts:
    base, _ = _for_port(rule, port)
    over, whole = _for_port(subset, port)
    if over is None:
        return base or (None, None, None)
    if base is None or whole:
        return over
    return (over[0] if over[0] is not None else base[0],
            over[1] if over[1] is not None else base[1],
            over[2] if over[2] is not None else base[2])


def effective(traffic: ServiceTraffic | None, subset: str, port: int,
              default_pool: ConnectionPool | None = None) -> ClusterPolicy:
    """The policy for `port` of the service `traffic` describes (its `subset`, "" for the
    whole service). `default_pool` carries the mesh connectTimeout (default 10s)."""
    if traffic is None:
        return NO_RULES if default_pool is None else ClusterPolicy(SimpleLb.ROUND_ROBIN,
                                                                  default_pool)
    sub = traffic.subset(subset) if subset else None
    lb, pool, outlier = merged(traffic.traffic_policy,
                               sub.traffic_policy if sub is not None else None, port)
    lb = lb or LoadBalancer()
    simple = lb.simple
    if simple in (SimpleLb.UNSPECIFIED, SimpleLb.LEAST_CONN):
        simple = SimpleLb.LEAST_REQUEST
    return ClusterPolicy(simple, pool or default_pool or ConnectionPool(), outlier,
                         lb.consistent_hash)
