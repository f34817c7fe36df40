"""The effective policy of a cluster: pilot's merge of DestinationRule, port-level settings
and subset, and Istio's defaults."""

from __future__ import annotations

from core.mesh.traffic import (
    ConnectionPool,
    ConsistentHash,
    LoadBalancer,
    OutlierDetection,
    PortTrafficPolicy,
    ServiceTraffic,
    SimpleLb,
    Subset,
    TrafficPolicy,
)
from proxy.traffic.policy import NO_RULES, effective

KEY = "default/db.default.svc.cluster.local"
RR, RANDOM, LR = (LoadBalancer(SimpleLb.ROUND_ROBIN), LoadBalancer(SimpleLb.RANDOM),
                  LoadBalancer(SimpleLb.LEAST_REQUEST))
POOL = ConnectionPool(max_connections=7, connect_timeout=2.0)
OD = OutlierDetection(consecutive_5xx_errors=3)


def rule(policy: TrafficPolicy | None = None, *subsets: Subset) -> ServiceTraffic:
    return ServiceTraffic(KEY, subsets=subsets, traffic_policy=policy)


def test_no_rules_keep_round_robin() -> None:
    p = effective(None, "", 80)
    assert p == NO_RULES and p.lb == SimpleLb.ROUND_ROBIN and p.outlier is None
    assert p.pool.max_connections == 2**32 - 1 and p.pool.connect_timeout == 10.0
    assert effective(None, "", 80, ConnectionPool(connect_timeout=3.0)).pool.connect_timeout == 3


def test_unspecified_is_least_request_like_pilot() -> None:
    assert effective(rule(), "", 80).lb == SimpleLb.LEAST_REQUEST
    assert effective(rule(TrafficPolicy(LoadBalancer())), "", 80).lb == SimpleLb.LEAST_REQUEST
    legacy = TrafficPolicy(LoadBalancer(SimpleLb.LEAST_CONN))
    assert effective(rule(legacy), "", 80).lb == SimpleLb.LEAST_REQUEST
    assert effective(rule(TrafficPolicy(RANDOM)), "", 80).lb == SimpleLb.RANDOM


def test_subset_overrides_part_by_part() -> None:
    dr = rule(TrafficPolicy(RR, POOL, OD), Subset("v2", traffic_policy=TrafficPolicy(RANDOM)))
    v2 = effective(dr, "v2", 80)
    assert (v2.lb, v2.pool, v2.outlier) == (SimpleLb.RANDOM, POOL, OD)
    whole = effective(dr, "", 80)
    assert (whole.lb, whole.pool, whole.outlier) == (SimpleLb.ROUND_ROBIN, POOL, OD)
    v1 = effective(rule(TrafficPolicy(RR, POOL, OD), Subset("v1")), "v1", 80)
    assert v1 == whole  # a subset without policy inherits the rule's


def test_port_level_replaces_the_rule_as_a_whole() -> None:
    # Istio: "default values will be applied to fields omitted in port-level traffic
    # policies", so port 80 loses the rule's pool and outlier detection.
    dr = rule(TrafficPolicy(RR, POOL, OD, (PortTrafficPolicy(80, load_balancer=RANDOM),)))
    p80 = effective(dr, "", 80)
    assert (p80.lb, p80.pool, p80.outlier) == (SimpleLb.RANDOM, ConnectionPool(), None)
    p81 = effective(dr, "", 81)
    assert (p81.lb, p81.pool, p81.outlier) == (SimpleLb.ROUND_ROBIN, POOL, OD)


def test_subset_port_level_replaces_everything_for_that_port() -> None:
    sub = Subset("v2", traffic_policy=TrafficPolicy(
        RANDOM, port_level=(PortTrafficPolicy(80, connection_pool=POOL),)))
    dr = rule(TrafficPolicy(RR, ConnectionPool(max_connections=99), OD), sub)
    p80 = effective(dr, "v2", 80)
    assert (p80.lb, p80.pool, p80.outlier) == (SimpleLb.LEAST_REQUEST, POOL, None)
    p81 = effective(dr, "v2", 81)  # the subset's top level, part by part over the rule's
    assert (p81.lb, p81.pool.max_connections, p81.outlier) == (SimpleLb.RANDOM, 99, OD)


def test_subset_merges_over_the_rules_port_level_entry() -> None:
    dr = rule(TrafficPolicy(RR, port_level=(PortTrafficPolicy(80, connection_pool=POOL),)),
              Subset("v2", traffic_policy=TrafficPolicy(outlier_detection=OD)))
    p = effective(dr, "v2", 80)
    assert (p.lb, p.pool, p.outlier) == (SimpleLb.LEAST_REQUEST, POOL, OD)


def test_consistent_hash_is_carried() -> None:
    h = ConsistentHash(use_source_ip=True, minimum_ring_size=64)
    p = effective(rule(TrafficPolicy(LoadBalancer(consistent_hash=h))), "", 80)
    assert p.consistent_hash == h
