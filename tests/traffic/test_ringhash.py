"""Consistent hash on the source IP: the same client sticks to one endpoint, and membership
changes move only the keys they must."""

from __future__ import annotations

import math
import random
from collections import Counter

from core.mesh.traffic import ConsistentHash, LoadBalancer, ServiceTraffic, TrafficPolicy
from proxy.traffic.ringhash import Ring, RingCache, hash64
from proxy.traffic.router import TrafficRouter
from proxy.traffic.routes import Connection
from tests.traffic.fakes import FakeMesh, service, workload

EPS = [workload(f"e{i}", f"10.0.1.{i}") for i in range(10)]
KEYS = [hash64(f"10.1.{i // 250}.{i % 250}") for i in range(5000)]


def owners(ring: Ring) -> list[str]:
    return [ring.pick(k).name for k in KEYS]


def test_hash_is_stable_across_processes() -> None:
    # blake2b, not Python's salted hash(): a restart keeps every client's endpoint.
    assert hash64("10.0.0.1") == 0x538EF646E14D03E6
    assert owners(Ring(EPS, 1024)) == owners(Ring(list(EPS), 1024))


def test_ring_size_follows_envoy() -> None:
    assert len(Ring(EPS, 1024)) == math.ceil(1024 / 10) * 10
    assert len(Ring(EPS[:3], 4)) == 2 * 3  # ceil(4 / 3) each
    assert len(Ring(EPS[:3], 1)) == 3  # at least one point each


def test_keys_spread_evenly_enough() -> None:
    got = Counter(owners(Ring(EPS, 1024)))
    assert len(got) == 10 and all(0.05 < n / len(KEYS) < 0.15 for n in got.values()), got


def test_removing_an_endpoint_moves_few_keys_besides_its_own() -> None:
    before = owners(Ring(EPS, 1024))
    gone = EPS[3].name
    after = owners(Ring([w for w in EPS if w.name != gone], 1024))
    assert gone in before and gone not in after
    stray = sum(1 for b, a in zip(before, after, strict=True) if b != a and b != gone)
    moved = sum(1 for b, a in zip(before, after, strict=True) if b != a)
    # Its own ~1/10, plus ~1/10 between the others (their 103 -> 114 points each).
    assert stray / len(KEYS) < 0.15 and moved / len(KEYS) < 0.25, (stray, moved)


def test_adding_an_endpoint_moves_few_keys_besides_those_it_takes() -> None:
    before = owners(Ring(EPS, 1024))
    after = owners(Ring([*EPS, workload("e10", "10.0.1.10")], 1024))
    taken = sum(1 for a in after if a == "e10")
    stray = sum(1 for b, a in zip(before, after, strict=True) if b != a and a != "e10")
    assert 0.5 / 11 < taken / len(KEYS) < 2 / 11
    assert stray / len(KEYS) < 0.15, stray


def test_the_same_membership_gives_the_same_ring() -> None:
    # Order does not matter either: points are sorted by hash.
    assert owners(Ring(EPS, 1024)) == owners(Ring(list(reversed(EPS)), 1024))


def test_ring_cache_reuses_and_bounds() -> None:
    cache = RingCache(limit=2)
    a = cache.ring(EPS, 64)
    assert cache.ring(list(EPS), 64) is a
    cache.ring(EPS[:5], 64)
    cache.ring(EPS[:4], 64)
    assert cache.ring(EPS, 64) is not a  # evicted, rebuilt


def router_for(h: ConsistentHash) -> tuple[TrafficRouter, object]:
    svc = service("cache", "10.96.0.30")
    eps = [workload(f"c{i}", f"10.0.3.{i}", [svc]) for i in range(5)]
    rules = ServiceTraffic(svc.key, traffic_policy=TrafficPolicy(LoadBalancer(
        consistent_hash=h)))
    return TrafficRouter(FakeMesh([svc], eps, [rules]), rng=random.Random(3)), svc


def test_same_source_ip_same_endpoint_through_the_router() -> None:
    router, svc = router_for(ConsistentHash(use_source_ip=True))
    for i in range(20):
        conn = Connection("10.96.0.30", 80, f"10.2.0.{i}")
        d = router.decide(svc, conn)  # type: ignore[arg-type]
        assert len({router.pick(d, conn).workload.uid for _ in range(10)}) == 1
    spread = {router.pick(router.decide(svc, c), c).workload.uid  # type: ignore[arg-type]
              for c in (Connection("10.96.0.30", 80, f"10.2.1.{i}") for i in range(50))}
    assert len(spread) == 5


def test_without_a_computable_key_the_ring_is_random() -> None:
    # An L7 hash key (header, cookie) converts to use_source_ip=False: Envoy then picks a
    # random ring point, so one client spreads over the endpoints.
    router, svc = router_for(ConsistentHash(use_source_ip=False))
    conn = Connection("10.96.0.30", 80, "10.2.0.1")
    d = router.decide(svc, conn)  # type: ignore[arg-type]
    assert len({router.pick(d, conn).workload.uid for _ in range(50)}) == 5
