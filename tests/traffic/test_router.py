"""The decision path end to end on a fake mesh: a 90/10 canary by subsets, a config change,
routes to another host and port, passthrough, and the refusals' reasons."""

from __future__ import annotations

import random
from collections import Counter

import pytest

from core.mesh.traffic import (
    L4Match,
    L4Route,
    LoadBalancer,
    RouteDestination,
    RouteKind,
    ServiceTraffic,
    SimpleLb,
    Subset,
    TrafficPolicy,
    labels,
)
from proxy.traffic.refusal import Reason, Refused
from proxy.traffic.router import TrafficRouter, destination_port
from proxy.traffic.routes import Connection
from tests.traffic.fakes import FakeMesh, service, workload

ECHO = service("echo", "10.96.1.1", [(80, 8080)])
V1 = [workload(f"v1-{i}", f"10.1.1.{i}", [ECHO]) for i in range(3)]
V2 = [workload(f"v2-{i}", f"10.1.2.{i}", [ECHO]) for i in range(2)]
LABELS = {**{w.uid: {"app": "echo", "version": "v1"} for w in V1},
          **{w.uid: {"app": "echo", "version": "v2"} for w in V2}}
SUBSETS = (Subset("v1", labels({"version": "v1"})), Subset("v2", labels({"version": "v2"})))
CONN = Connection("10.96.1.1", 80, "10.0.0.1", workload("client", "10.0.0.1"))


def canary(w1: int, w2: int) -> ServiceTraffic:
    dests = (RouteDestination(ECHO.key, "v1", weight=w1),
             RouteDestination(ECHO.key, "v2", weight=w2))
    return ServiceTraffic(ECHO.key, (L4Route(RouteKind.TCP, dests, name="default/echo/tcp/0"),),
                          SUBSETS, TrafficPolicy(LoadBalancer(SimpleLb.ROUND_ROBIN)))


def mesh(*rules: ServiceTraffic) -> FakeMesh:
    return FakeMesh([ECHO], [*V1, *V2], rules, LABELS)


def versions(router: TrafficRouter, n: int) -> Counter[str]:
    got: Counter[str] = Counter()
    for _ in range(n):
        d = router.decide(ECHO, CONN)
        e = router.pick(d, CONN)
        assert LABELS[e.workload.uid]["version"] == d.subset  # picked inside the subset
        assert e.addr == (e.workload.addresses[0], 8080)
        got[d.subset] += 1
    return got


def test_canary_90_10_over_2000_connections() -> None:
    got = versions(TrafficRouter(mesh(canary(90, 10)), rng=random.Random(42)), 2000)
    assert abs(got["v2"] / 2000 - 0.10) <= 0.03, got


def test_new_weights_apply_to_the_next_connection() -> None:
    m = mesh(canary(90, 10))
    router = TrafficRouter(m, rng=random.Random(43))
    versions(router, 100)
    m.set_traffic(canary(50, 50))
    got = versions(router, 2000)
    assert abs(got["v2"] / 2000 - 0.50) <= 0.03, got
    m.set_traffic(canary(0, 100))
    assert versions(router, 50) == Counter({"v2": 50})


def test_decision_names_route_cluster_and_policy() -> None:
    router = TrafficRouter(mesh(canary(0, 100)), rng=random.Random(1))
    d = router.decide(ECHO, CONN)
    assert d.route == "default/echo/tcp/0" and d.subset == "v2" and not d.passthrough
    assert str(d.cluster) == f"outbound|80|v2|{ECHO.key}"
    assert d.policy.lb == SimpleLb.ROUND_ROBIN
    assert str(d.cluster) in router.dump()


def test_without_rules_the_service_is_round_robin_over_all() -> None:
    router = TrafficRouter(mesh(), rng=random.Random(1))
    d = router.decide(ECHO, CONN)
    assert d.route == "" and d.subset == "" and d.policy.lb == SimpleLb.ROUND_ROBIN
    picks = [router.pick(d, CONN).workload.name for _ in range(10)]
    assert picks == [w.name for w in [*V1, *V2]] * 2


def test_source_labels_choose_the_route() -> None:
    def dests(subset: str) -> tuple[RouteDestination, ...]:
        return (RouteDestination(ECHO.key, subset),)

    rules = ServiceTraffic(ECHO.key, (
        L4Route(RouteKind.TCP, dests("v2"), (L4Match(source_labels=labels({"canary": "yes"})),),
                "testers"),
        L4Route(RouteKind.TCP, dests("v1"), name="everyone")), SUBSETS)
    router = TrafficRouter(mesh(rules), rng=random.Random(1))
    tester = Connection("10.96.1.1", 80, "10.0.0.2", workload("t", "10.0.0.2"),
                        {"canary": "yes"})
    assert router.decide(ECHO, tester).route == "testers"
    assert router.decide(ECHO, CONN).route == "everyone"


def test_a_route_to_another_host_and_port() -> None:
    backup = service("mongo", "10.96.1.9", [(5555, 27017)], ns="backup")
    stores = [workload("m0", "10.1.9.1", [backup], ns="backup")]
    rules = ServiceTraffic(ECHO.key, (L4Route(RouteKind.TCP, (
        RouteDestination(backup.key, port=5555),)),))
    router = TrafficRouter(FakeMesh([ECHO, backup], [*V1, *stores], [rules]))
    d = router.decide(ECHO, CONN)
    assert d.service is backup and d.cluster.port == 5555
    assert d.policy.lb == SimpleLb.ROUND_ROBIN  # backup has no rules of its own
    assert router.pick(d, CONN).addr == ("10.1.9.1", 27017)  # its target port


def test_destination_port_rules() -> None:
    two = service("two", "10.96.1.3", [(80, 8080), (81, 8081)])
    assert destination_port(RouteDestination(two.key, port=81), 80, two) == 81
    assert destination_port(RouteDestination(two.key), 81, two) == 81   # the dialled one
    assert destination_port(RouteDestination(ECHO.key), 9999, ECHO) == 80  # the only one


def refusal(router: TrafficRouter) -> Refused:
    with pytest.raises(Refused) as refused:
        router.pick(router.decide(ECHO, CONN), CONN)
    return refused.value


def test_refusals_carry_their_reason() -> None:
    nowhere = ServiceTraffic(ECHO.key, (L4Route(RouteKind.TCP, (
        RouteDestination("default/gone.default.svc.cluster.local"),), name="r"),))
    r = refusal(TrafficRouter(mesh(nowhere)))
    assert r.reason == Reason.UNKNOWN_DESTINATION and "not in the registry" in r.detail
    bad_port = ServiceTraffic(ECHO.key, (L4Route(RouteKind.TCP, (
        RouteDestination(ECHO.key, port=81),)),))
    assert refusal(TrafficRouter(mesh(bad_port))).reason == Reason.UNKNOWN_DESTINATION
    no_subset = ServiceTraffic(ECHO.key, (L4Route(RouteKind.TCP, (
        RouteDestination(ECHO.key, "v3"),)),), SUBSETS)
    r = refusal(TrafficRouter(mesh(no_subset)))
    assert r.reason == Reason.UNKNOWN_DESTINATION and "subset v3" in r.detail
    empty = ServiceTraffic(ECHO.key, (L4Route(RouteKind.TCP, (
        RouteDestination(ECHO.key, "v9"),)),), (Subset("v9", labels({"version": "v9"})),))
    r = refusal(TrafficRouter(mesh(empty)))
    assert r.reason == Reason.NO_HEALTHY_ENDPOINT and "no usable endpoint" in r.detail


def test_passthrough_keeps_the_original_destination() -> None:
    rules = ServiceTraffic(ECHO.key, traffic_policy=TrafficPolicy(LoadBalancer(
        SimpleLb.PASSTHROUGH)))
    assert TrafficRouter(mesh(rules)).decide(ECHO, CONN).passthrough
    assert not TrafficRouter(mesh()).decide(ECHO, CONN).passthrough
    # a port the service does not have: left alone, as MeshTable.route leaves it
    other_port = Connection("10.96.1.1", 9999, "10.0.0.1")
    assert TrafficRouter(mesh(canary(0, 100))).decide(ECHO, other_port).passthrough


def test_membership_follows_endpoint_changes() -> None:
    m = mesh(canary(0, 100))
    router = TrafficRouter(m, rng=random.Random(1))
    assert {router.pick(router.decide(ECHO, CONN), CONN).workload.name
            for _ in range(6)} == {"v2-0", "v2-1"}
    m.set_workloads([*V1, V2[1]])
    assert {router.pick(router.decide(ECHO, CONN), CONN).workload.name
            for _ in range(6)} == {"v2-1"}
