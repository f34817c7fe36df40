"""Route selection: first match wins, TLS by SNI before TCP, and weighted splits that hold
their shares (seeded, so a failure replays)."""

from __future__ import annotations

import ipaddress
import random
from collections import Counter

import pytest

from core.mesh.traffic import L4Match, L4Route, RouteDestination, RouteKind, Subset, labels
from proxy.traffic.routes import Connection, match, pick_destination, select_route
from proxy.traffic.subsets import members, selects
from tests.traffic.fakes import workload

SVC = "default/db.default.svc.cluster.local"
TCP, TLS = RouteKind.TCP, RouteKind.TLS


def route(name: str, *matches: L4Match, kind: RouteKind = TCP) -> L4Route:
    return L4Route(kind, (RouteDestination(SVC, name),), matches, name)


def conn(port: int = 5432, ip: str = "10.96.0.10", ns: str = "default",
         lbl: dict[str, str] | None = None, sni: str = "") -> Connection:
    src = workload("client", "10.0.0.1", ns=ns)
    return Connection(ip, port, "10.0.0.1", src, lbl or {}, sni)


def test_first_matching_route_wins() -> None:
    routes = (route("a", L4Match(port=1)), route("b", L4Match(port=5432)), route("c"))
    assert select_route(routes, conn()) is routes[1]
    assert select_route(routes, conn(port=1)) is routes[0]
    assert select_route(routes, conn(port=2)) is routes[2]  # no match: the catch-all
    assert select_route(routes[:2], conn(port=2)) is None


def test_fields_of_a_match_are_anded_and_matches_ored() -> None:
    both = L4Match(port=5432, source_namespace="prod")
    assert not match(both, conn(ns="default")) and not match(both, conn(port=1, ns="prod"))
    assert match(both, conn(ns="prod"))
    either = route("x", L4Match(port=1), L4Match(source_namespace="prod"))
    assert select_route((either,), conn(ns="prod")) is either
    assert select_route((either,), conn(port=1)) is either
    assert select_route((either,), conn()) is None


def test_source_labels_select_the_client() -> None:
    m = L4Match(source_labels=labels({"app": "web", "version": "v2"}))
    assert match(m, conn(lbl={"app": "web", "version": "v2", "extra": "1"}))
    assert not match(m, conn(lbl={"app": "web"}))
    assert not match(m, conn(lbl={"app": "web", "version": "v1"}))
    assert not match(m, conn())


def test_destination_subnets() -> None:
    m = L4Match(destination_subnets=(ipaddress.ip_network("10.96.0.0/16"),
                                     ipaddress.ip_network("fd00::/64")))
    assert match(m, conn(ip="10.96.3.4")) and match(m, conn(ip="fd00::5"))
    assert not match(m, conn(ip="10.97.0.1"))


def test_tls_routes_need_sni_and_come_before_tcp() -> None:
    tcp = route("tcp")
    login = route("login", L4Match(sni_hosts=("login.example.com",)), kind=TLS)
    wild = route("wild", L4Match(port=443, sni_hosts=("*.example.com",)), kind=TLS)
    routes = (tcp, login, wild)  # the TCP catch-all first in YAML order
    assert select_route(routes, conn(port=443, sni="login.example.com")) is login
    assert select_route(routes, conn(port=443, sni="api.example.com")) is wild
    assert select_route(routes, conn(port=8443, sni="api.example.com")) is tcp  # port
    assert select_route(routes, conn(port=443, sni="other.org")) is tcp  # fallback
    assert select_route(routes, conn(port=443)) is tcp  # no SNI peeked
    assert select_route((login,), conn(port=443)) is None


def split(weights: tuple[int, ...]) -> L4Route:
    return L4Route(TCP, tuple(RouteDestination(SVC, f"v{i + 1}", weight=w)
                              for i, w in enumerate(weights)))


@pytest.mark.parametrize(("weights", "seed"), [((90, 10), 1), ((90, 10), 2), ((50, 50), 3),
                                               ((9, 1), 4)])
def test_weights_split_connections(weights: tuple[int, int], seed: int) -> None:
    rng = random.Random(seed)
    got = Counter(pick_destination(split(weights), rng).subset for _ in range(2000))
    share = got["v2"] / 2000
    assert abs(share - weights[1] / sum(weights)) <= 0.03, got


def test_zero_weight_gets_nothing_and_a_lone_destination_everything() -> None:
    rng = random.Random(5)
    got = Counter(pick_destination(split((0, 70, 30)), rng).subset for _ in range(1000))
    assert got["v1"] == 0 and got["v2"] > got["v3"] > 0
    lone = L4Route(TCP, (RouteDestination(SVC, "only", weight=0),))
    assert {pick_destination(lone, rng).subset for _ in range(10)} == {"only"}


def test_same_seed_same_split() -> None:
    a, b = random.Random(7), random.Random(7)
    r = split((90, 10))
    assert [pick_destination(r, a).subset for _ in range(200)] == \
           [pick_destination(r, b).subset for _ in range(200)]


def test_subset_membership_by_labels() -> None:
    ws = [workload(f"w{i}", f"10.0.1.{i}") for i in range(4)]
    lbl = {"uid-w0": {"version": "v1"}, "uid-w1": {"version": "v2", "app": "db"},
           "uid-w2": {"version": "v2"}}
    v2 = Subset("v2", labels({"version": "v2"}))
    assert [w.name for w in members(ws, v2, lambda u: lbl.get(u, {}))] == ["w1", "w2"]
    both = Subset("x", labels({"version": "v2", "app": "db"}))
    assert [w.name for w in members(ws, both, lambda u: lbl.get(u, {}))] == ["w1"]
    assert len(members(ws, Subset("all"), lambda u: {})) == 4  # no labels: everyone
    assert len(members(ws, None, lambda u: {})) == 4
    assert selects((), {}) and not selects((("a", "b"),), {})
