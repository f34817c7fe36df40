"""The router's per-(service, address, source, SNI) cache of routes and decisions
(proxy/traffic/router.py): reused while its records are the same objects, recomputed as
soon as any is replaced, and bounded against a client that varies its SNI."""

from __future__ import annotations

import pytest

from core.mesh.traffic import (
    L4Match,
    L4Route,
    RouteDestination,
    RouteKind,
    ServiceTraffic,
    Subset,
    labels,
)
from proxy.traffic import router as router_mod
from proxy.traffic.refusal import Reason, Refused
from proxy.traffic.router import TrafficRouter
from proxy.traffic.routes import Connection
from tests.traffic.fakes import FakeMesh, service, workload

ECHO = service("echo", "10.96.1.1", [(80, 8080)])
OTHER = service("other", "10.96.1.2", [(80, 8080)])
EPS = [workload(f"e{i}", f"10.1.1.{i}", [ECHO]) for i in range(2)]
OTHER_EPS = [workload("o0", "10.1.2.0", [OTHER])]
CLIENT = workload("client", "10.0.0.1")
SUBSETS = (Subset("v1", labels({"version": "v1"})), Subset("v2", labels({"version": "v2"})))
LABELS = {EPS[0].uid: {"version": "v1"}, EPS[1].uid: {"version": "v2"}}


def by_label(value: str, subset: str, gen: str = "") -> ServiceTraffic:
    """Testers (source label team=value) go to `subset`, everyone else to v1."""
    return ServiceTraffic(ECHO.key, (
        L4Route(RouteKind.TCP, (RouteDestination(ECHO.key, subset),),
                (L4Match(source_labels=labels({"team": value})),), f"testers{gen}"),
        L4Route(RouteKind.TCP, (RouteDestination(ECHO.key, "v1"),), name=f"everyone{gen}")),
        SUBSETS)


def conn(team: str = "a", sni: str = "") -> Connection:
    return Connection("10.96.1.1", 80, "10.0.0.1", CLIENT, {"team": team}, sni)


def test_a_replaced_rule_takes_effect_at_the_next_connection() -> None:
    mesh = FakeMesh([ECHO], EPS, [by_label("a", "v2")], LABELS)
    r = TrafficRouter(mesh)
    first = r.decide(ECHO, conn())
    assert (first.route, first.subset) == ("testers", "v2")
    assert r.decide(ECHO, conn()) is first  # reused: the same records
    mesh.set_traffic(by_label("b", "v2", "-2"))
    d = r.decide(ECHO, conn())
    assert (d.route, d.subset) == ("everyone-2", "v1")


def test_the_source_labels_of_each_connection_are_honoured() -> None:
    mesh = FakeMesh([ECHO], EPS, [by_label("a", "v2")], LABELS)
    r = TrafficRouter(mesh)
    assert r.decide(ECHO, conn("a")).route == "testers"
    # The same workload, relabelled: a new labels mapping for the same source uid.
    assert r.decide(ECHO, conn("b")).route == "everyone"
    assert r.decide(ECHO, conn("a")).route == "testers"


def test_a_route_to_another_service_follows_that_service() -> None:
    rules = ServiceTraffic(ECHO.key, (L4Route(RouteKind.TCP, (RouteDestination(OTHER.key),),
                                              name="away"),))
    mesh = FakeMesh([ECHO], [*EPS, *OTHER_EPS], [rules], LABELS)
    r = TrafficRouter(mesh)
    with pytest.raises(Refused) as first:
        r.decide(ECHO, conn())
    assert first.value.reason is Reason.UNKNOWN_DESTINATION
    with pytest.raises(Refused) as again:
        r.decide(ECHO, conn())
    # A fresh exception each time: re-raising one object would grow its traceback.
    assert again.value is not first.value and again.value.detail == first.value.detail
    mesh.services[OTHER.key] = OTHER  # the other service arrives
    d = r.decide(ECHO, conn())
    assert d.service is OTHER and d.route == "away"
    assert r.pick(d, conn()).workload.uid == OTHER_EPS[0].uid


def test_a_client_varying_its_sni_cannot_grow_the_cache_without_bound(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(router_mod, "ROUTED_CACHE", 64)
    r = TrafficRouter(FakeMesh([ECHO], EPS, [by_label("a", "v2")], LABELS))
    for i in range(1000):
        assert r.decide(ECHO, conn(sni=f"h{i}.example.com")).route == "testers"
        assert len(r._routed) <= 64
