"""Connect retries: another endpoint after a failure, within the connect timeout, never the
same endpoint twice in a row when another is available; and through the router, a dead
endpoint costs the client nothing once outlier detection has ejected it."""

from __future__ import annotations

import asyncio
import itertools
import random
from collections.abc import Sequence

import pytest

from core.mesh.traffic import (
    ConsistentHash,
    LoadBalancer,
    OutlierDetection,
    ServiceTraffic,
    SimpleLb,
    TrafficPolicy,
)
from proxy.traffic.refusal import Reason, Refused
from proxy.traffic.retry import Attempt, Connected, connect_with_retries
from proxy.traffic.router import Endpoint, Opened, TrafficRouter
from proxy.traffic.routes import Connection
from tests.traffic.fakes import FakeClock, FakeMesh, service, workload


class Picker:
    """A sticky balancer (the first name, as a hash would keep one client on one endpoint)
    that avoids what the retry loop says it tried, as Cluster does."""

    def __init__(self, names: Sequence[str]) -> None:
        self.names = list(names)

    def __call__(self, tried: Sequence[str]) -> str:
        for avoid in (set(tried), set(tried[-1:]), set()):
            left = [n for n in self.names if n not in avoid]
            if left:
                return left[0]
        raise Refused(Reason.NO_HEALTHY_ENDPOINT, "none")


def run(names: Sequence[str], fails: set[str], clock: FakeClock | None = None,
        timeout: float = 9.0, hang: bool = False) -> tuple[Connected[str, str] | Refused,
                                                           list[tuple[str, float]]]:
    clock = clock or FakeClock()
    calls: list[tuple[str, float]] = []
    reports: list[Attempt] = []

    async def connect(name: str, budget: float) -> str:
        calls.append((name, budget))
        if name in fails:
            if hang:
                clock.advance(budget)
                raise TimeoutError()
            raise ConnectionRefusedError(f"{name} refused")
        return f"sock-{name}"

    async def go() -> Connected[str, str] | Refused:
        try:
            return await connect_with_retries(
                Picker(names), connect, key=lambda n: n, timeout=timeout, clock=clock,
                report=lambda n, a: reports.append(a))
        except Refused as exc:
            return exc

    got = asyncio.run(go())
    assert [a.endpoint for a in reports] == [n for n, _ in calls]  # every attempt reported
    return got, calls


def test_a_failure_moves_on_to_another_endpoint() -> None:
    got, calls = run(["a", "b", "c"], fails={"a"})
    assert isinstance(got, Connected) and got.value == "sock-b"
    assert [n for n, _ in calls] == ["a", "b"]
    assert [a.failure for a in got.attempts] == [Reason.CONNECT_FAILED, None]
    assert got.attempts[0].error == "a refused"


def test_never_the_same_endpoint_twice_in_a_row() -> None:
    got, calls = run(["a", "b"], fails={"a", "b"})
    assert isinstance(got, Refused) and got.reason == Reason.CONNECT_FAILED
    names = [n for n, _ in calls]
    assert names == ["a", "b", "a"]
    assert all(x != y for x, y in itertools.pairwise(names))
    assert "3 attempt(s) in 9s" in got.detail and "a: a refused" in got.detail


def test_every_other_endpoint_before_a_second_try() -> None:
    got, calls = run(["a", "b", "c"], fails={"a", "b"})
    assert isinstance(got, Connected) and [n for n, _ in calls] == ["a", "b", "c"]


def test_a_lone_endpoint_is_retried() -> None:
    got, calls = run(["a"], fails={"a"})
    assert isinstance(got, Refused) and [n for n, _ in calls] == ["a", "a", "a"]


def test_each_attempt_gets_a_share_of_what_is_left() -> None:
    clock = FakeClock(100.0)
    got, calls = run(["a", "b", "c"], fails={"a", "b", "c"}, clock=clock, hang=True)
    assert isinstance(got, Refused) and got.reason == Reason.CONNECT_TIMEOUT
    assert [b for _, b in calls] == pytest.approx([3.0, 3.0, 3.0])
    assert clock.now == pytest.approx(109.0)  # never past the connect timeout


def test_a_quick_failure_leaves_more_time_to_the_next() -> None:
    clock = FakeClock()
    got, calls = run(["a", "b", "c"], fails={"a"}, clock=clock, timeout=6.0)
    assert isinstance(got, Connected)
    assert [b for _, b in calls] == pytest.approx([2.0, 3.0])  # 6/3, then 6/2


def test_no_endpoint_at_all_is_the_pickers_refusal() -> None:
    got, calls = run([], fails=set())
    assert isinstance(got, Refused) and got.reason == Reason.NO_HEALTHY_ENDPOINT
    assert calls == []


# ---- through the router ----------------------------------------------------------------------

def test_a_hashed_client_whose_endpoint_died_is_served_elsewhere() -> None:
    svc = service("cache", "10.96.0.61")
    eps = [workload(f"c{i}", f"10.0.8.{i}", [svc]) for i in range(4)]
    rules = ServiceTraffic(svc.key, traffic_policy=TrafficPolicy(
        LoadBalancer(consistent_hash=ConsistentHash(use_source_ip=True))))
    router = TrafficRouter(FakeMesh([svc], eps, [rules]), rng=random.Random(4))
    conn = Connection("10.96.0.61", 80, "10.2.3.4")
    d = router.decide(svc, conn)
    home = router.pick(d, conn).workload.name  # where the ring puts this client
    tried: list[str] = []

    async def connect(e: Endpoint, budget: float) -> str:
        tried.append(e.workload.name)
        if e.workload.name == home:
            raise ConnectionRefusedError("refused")
        return e.workload.name

    opened = asyncio.run(router.open(d, conn, connect))
    assert tried[0] == home and opened.value != home and len(tried) == 2



def test_a_dead_endpoint_is_ejected_and_clients_see_no_failure() -> None:
    svc = service("api", "10.96.0.60")
    eps = [workload(f"e{i}", f"10.0.7.{i}", [svc]) for i in range(3)]
    od = OutlierDetection(consecutive_5xx_errors=5, interval=10.0, base_ejection_time=30.0,
                          max_ejection_percent=100)
    rules = ServiceTraffic(svc.key, traffic_policy=TrafficPolicy(
        LoadBalancer(SimpleLb.ROUND_ROBIN), outlier_detection=od))
    clock = FakeClock()
    router = TrafficRouter(FakeMesh([svc], eps, [rules]), clock=clock, rng=random.Random(2))
    conn = Connection("10.96.0.60", 80, "10.0.0.1")
    tried: list[tuple[float, str]] = []

    async def connect(e: Endpoint, budget: float) -> None:
        tried.append((clock.now, e.workload.name))
        if e.workload.name == "e1":
            raise ConnectionRefusedError("refused")

    async def one() -> Opened[None]:
        return await router.open(router.decide(svc, conn), conn, connect)

    async def go() -> None:
        for n in range(120):  # one connection a second, each closed cleanly at once
            clock.now = float(n)
            router.closed(await one(), reset=False)

    asyncio.run(go())  # no Refused escaped: the client never saw a failure
    to_e1 = [t for t, name in tried if name == "e1"]
    # Round robin (turns spent on retries too) reaches e1 at t = 1, 3, 5, 7, 9: the fifth
    # failure ejects it for 30s, until the first sweep after t = 39 (sweeps every 10s); back
    # at 40 with its streak restarted, five more failures eject it for 2 x 30s, until the
    # sweep at 110.
    assert to_e1[:10] == [1.0, 3.0, 5.0, 7.0, 9.0, 41.0, 43.0, 45.0, 47.0, 49.0]
    assert to_e1[10] in (110.0, 111.0, 112.0)
    assert router.active.snapshot() == {}
    assert router.pools.open(router.decide(svc, conn).cluster) == 0
