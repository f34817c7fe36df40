"""ROUND_ROBIN, RANDOM and LEAST_REQUEST among candidates; and LEAST_REQUEST's point: a slow
endpoint gets fewer connections than round robin gives it (simulated, fake clock)."""

from __future__ import annotations

import asyncio
import heapq
import random
from collections import Counter

from core.mesh.traffic import LoadBalancer, ServiceTraffic, SimpleLb, TrafficPolicy
from proxy.traffic import balancers
from proxy.traffic.router import Endpoint, Opened, TrafficRouter
from proxy.traffic.routes import Connection
from tests.traffic.fakes import FakeClock, FakeMesh, service, workload

EPS = [workload(f"e{i}", f"10.0.1.{i}") for i in range(3)]


def test_round_robin_cycles() -> None:
    assert [balancers.round_robin(EPS, n).name for n in range(5)] == \
           ["e0", "e1", "e2", "e0", "e1"]


def test_random_is_uniform() -> None:
    rng = random.Random(11)
    got = Counter(balancers.random_pick(EPS, rng).name for _ in range(3000))
    assert all(abs(got[w.name] / 3000 - 1 / 3) < 0.04 for w in EPS), got


def test_least_request_with_equal_counts_is_random() -> None:
    rng = random.Random(12)
    got = Counter(balancers.least_request(EPS, lambda uid: 4, rng).name for _ in range(3000))
    assert all(abs(got[w.name] / 3000 - 1 / 3) < 0.04 for w in EPS), got


def test_least_request_is_power_of_two_choices() -> None:
    # Two candidates, one busy: the busy one wins only when both samples hit it (1/4), where
    # a full scan would never pick it and random would half the time.
    rng = random.Random(13)
    active = {"uid-e0": 5, "uid-e1": 0}
    got = Counter(balancers.least_request(EPS[:2], lambda u: active[u], rng).name
                  for _ in range(4000))
    assert abs(got["e0"] / 4000 - 0.25) < 0.03, got


def simulate(lb: SimpleLb, seed: int = 21) -> Counter[str]:
    """3000 connections, one every 50 ms, to 3 endpoints; e0 holds a connection 1 s, the
    others 0.1 s. Returns the connections each endpoint got."""
    svc = service("api", "10.96.0.20")
    eps = [workload(f"e{i}", f"10.0.2.{i}", [svc]) for i in range(3)]
    rules = ServiceTraffic(svc.key, traffic_policy=TrafficPolicy(LoadBalancer(lb)))
    clock = FakeClock()
    router = TrafficRouter(FakeMesh([svc], eps, [rules]), clock=clock, rng=random.Random(seed))
    conn = Connection("10.96.0.20", 80, "10.0.0.1")
    got: Counter[str] = Counter()
    ends: list[tuple[float, int, Opened[None]]] = []

    async def connect(e: Endpoint, budget: float) -> None:
        return None

    async def run() -> None:
        for n in range(3000):
            clock.now = n * 0.05
            while ends and ends[0][0] <= clock.now:
                router.closed(heapq.heappop(ends)[2], reset=False)
            opened = await router.open(router.decide(svc, conn), conn, connect)
            name = opened.endpoint.workload.name
            got[name] += 1
            heapq.heappush(ends, (clock.now + (1.0 if name == "e0" else 0.1), n, opened))

    asyncio.run(run())
    return got


def test_least_request_spares_a_slow_endpoint() -> None:
    rr, lr = simulate(SimpleLb.ROUND_ROBIN), simulate(SimpleLb.LEAST_REQUEST)
    assert rr["e0"] == 1000  # round robin ignores load
    assert lr["e0"] < 0.7 * rr["e0"], (rr, lr)
    assert sum(lr.values()) == 3000
