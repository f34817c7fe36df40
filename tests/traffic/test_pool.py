"""connectionPool.tcp.maxConnections: N connections open, the N+1-th refused as overflow and
counted; slots come back on close and on failed connects."""

from __future__ import annotations

import asyncio
import random

import pytest

from core.mesh.traffic import ConnectionPool, ServiceTraffic, TrafficPolicy
from proxy.traffic.pool import ConnectionPools
from proxy.traffic.refusal import Reason, Refused
from proxy.traffic.router import Endpoint, TrafficRouter
from proxy.traffic.routes import Connection
from tests.traffic.fakes import FakeMesh, service, workload


def test_n_plus_one_is_refused_and_counted() -> None:
    pools = ConnectionPools()
    leases = [pools.acquire("c", 3) for _ in range(3)]
    with pytest.raises(Refused) as refused:
        pools.acquire("c", 3)
    assert refused.value.reason == Reason.OVERFLOW and str(refused.value.reason) == "overflow"
    assert "3 connections open, maxConnections is 3" in refused.value.detail
    assert pools.overflows == {"c": 1} and pools.open("c") == 3
    leases[0].release()
    pools.acquire("c", 3)  # a slot came back
    assert pools.open("c") == 3


def test_release_is_idempotent_and_keys_are_separate() -> None:
    pools = ConnectionPools()
    lease = pools.acquire("a", 1)
    pools.acquire("b", 1)
    lease.release()
    lease.release()
    assert not lease.held and pools.open("a") == 0 and pools.open("b") == 1
    pools.acquire("a", 1)


def test_a_lowered_limit_applies_to_open_connections() -> None:
    pools = ConnectionPools()
    for _ in range(5):
        pools.acquire("c", 10)
    with pytest.raises(Refused):
        pools.acquire("c", 4)


def test_through_the_router() -> None:
    svc = service("db", "10.96.0.40")
    eps = [workload(f"d{i}", f"10.0.4.{i}", [svc]) for i in range(2)]
    rules = ServiceTraffic(svc.key, traffic_policy=TrafficPolicy(
        connection_pool=ConnectionPool(max_connections=2)))
    router = TrafficRouter(FakeMesh([svc], eps, [rules]), rng=random.Random(1))
    conn = Connection("10.96.0.40", 80, "10.0.0.1")
    fail = {"on": False}

    async def connect(e: Endpoint, budget: float) -> str:
        if fail["on"]:
            raise ConnectionRefusedError("refused")
        return e.workload.name

    async def run() -> None:
        d = router.decide(svc, conn)
        a = await router.open(d, conn, connect)
        b = await router.open(d, conn, connect)
        with pytest.raises(Refused) as refused:
            await router.open(d, conn, connect)
        assert refused.value.reason == Reason.OVERFLOW
        router.closed(a, reset=False)
        c = await router.open(d, conn, connect)
        assert router.pools.open(d.cluster) == 2
        router.closed(b, reset=False)
        router.closed(c, reset=False)
        fail["on"] = True
        with pytest.raises(Refused) as refused:
            await router.open(d, conn, connect)
        assert refused.value.reason == Reason.CONNECT_FAILED
        assert router.pools.open(d.cluster) == 0  # the failed connect gave its slot back
        assert router.active.snapshot() == {}
        assert router.dump()[str(d.cluster)]["overflows"] == 1

    asyncio.run(run())
