"""Model -> protobuf (core/mesh/topb.py) is the inverse of protobuf -> model (frompb.py): every
record survives the trip through the wire bytes unchanged."""

from __future__ import annotations

import ipaddress

from hypothesis import given
from hypothesis import strategies as st

from core.mesh import topb
from core.mesh.frompb import Converter, authorization
from core.mesh.model import (
    Gateway,
    Group,
    HealthPolicy,
    LbMode,
    LbScope,
    Match,
    Policy,
    PolicyAction,
    PolicyScope,
    Port,
    Rule,
    Service,
    ServiceAccountMatch,
    StringKind,
    StringMatch,
    TunnelProtocol,
    Vip,
    Workload,
    WorkloadStatus,
)
from meshpb.istio import authorization_pb2 as az
from meshpb.istio import workload_pb2 as wl

FULL_WORKLOAD = Workload(
    uid="c1//Pod/ns/p", name="p", namespace="ns", addresses=("10.0.0.1", "fd00::1"),
    network="net", hostname="p.example", tunnel_protocol=TunnelProtocol.HBONE,
    trust_domain="td", service_account="sa", node="n1",
    waypoint=Gateway(hostname="ns/wp.svc", hbone_mtls_port=15008),
    network_gateway=Gateway(address="net/10.9.0.1", hbone_mtls_port=15008),
    canonical_name="app", canonical_revision="v2", workload_type=wl.POD,
    workload_name="app-v2", native_tunnel=True,
    services=(("ns/a.svc", (Port(80, 8080, wl.HTTP2), Port(443, 0))),
              ("ns/b.svc", (Port(9000, 9001),))),
    authorization_policies=("ns/allow", "ns/deny"), status=WorkloadStatus.UNHEALTHY,
    cluster_id="c1", locality=("r", "z", "s"), network_mode=wl.HOST_NETWORK, capacity=3,
    version="v7")

FULL_SERVICE = Service(
    name="s", namespace="ns", hostname="s.svc",
    vips=(Vip("n", "10.96.0.1"), Vip("", "10.200.0.0", 16), Vip("", "fd00::10")),
    ports=(Port(80, 8080, wl.TCP), Port(443, 8443)),
    subject_alt_names=("spiffe://td/ns/ns/sa/s",),
    waypoint=Gateway(address="/10.9.0.2", hbone_mtls_port=15008),
    lb_mode=LbMode.FAILOVER, lb_routing_preference=(LbScope.NETWORK, LbScope.ZONE),
    lb_health_policy=HealthPolicy.ALLOW_ALL, ip_families=3, canonical=True, visibility=1,
    version="9")


def exact(s: str) -> StringMatch:
    return StringMatch(StringKind.EXACT, s)


FULL_POLICY = Policy(
    name="p", namespace="ns", scope=PolicyScope.WORKLOAD_SELECTOR, action=PolicyAction.DENY,
    groups=(
        Group((Rule((Match(namespaces=(exact("a"),),
                           not_namespaces=(StringMatch(StringKind.PREFIX, "kube-"),),
                           principals=(StringMatch(StringKind.SUFFIX, "/sa/x"),),
                           not_principals=(StringMatch(StringKind.PRESENCE),),
                           service_accounts=(ServiceAccountMatch("a", "b"),),
                           not_service_accounts=(ServiceAccountMatch("c", "d"),),
                           source_ips=(ipaddress.ip_network("10.0.0.0/8"),),
                           not_source_ips=(ipaddress.ip_network("fd00::/8"),)),
                     Match(principals=(exact("td/ns/q/sa/y"),)))),
               Rule((Match(destination_ips=(ipaddress.ip_network("10.1.2.3/32"),),
                           not_destination_ips=(ipaddress.ip_network("10.1.0.0/16"),),
                           destination_ports=(80, 443), not_destination_ports=(22,)),)))),
        Group(()),             # no rules: matches every connection
        Group((Rule(()),))),   # a rule with no matches counts as matching
    dry_run=True, version="3")


def via_wire_address(rec: Workload | Service) -> Workload | Service:
    raw = topb.address(rec).SerializeToString()
    name = rec.uid if isinstance(rec, Workload) else rec.key
    return Converter().address(name, rec.version, raw)


def test_workload_round_trip() -> None:
    assert via_wire_address(FULL_WORKLOAD) == FULL_WORKLOAD
    bare = Workload(uid="u", name="p", namespace="ns", addresses=("1.2.3.4",))
    assert via_wire_address(bare) == bare


def test_service_round_trip() -> None:
    assert via_wire_address(FULL_SERVICE) == FULL_SERVICE
    bare = Service(name="s", namespace="ns", hostname="h")
    back = via_wire_address(bare)
    assert back == bare
    assert not topb.service(bare).HasField("load_balancing")  # as istiod: default left out


def test_policy_round_trip() -> None:
    raw = topb.policy(FULL_POLICY).SerializeToString()
    assert Converter().policy(FULL_POLICY.key, "3", raw) == FULL_POLICY


def test_defaults_are_left_out_but_capacity() -> None:
    w = topb.workload(Workload(uid="u", name="p", namespace="ns", addresses=()))
    assert not w.HasField("locality") and not w.HasField("waypoint")
    assert w.capacity.value == 1


# -- properties: random policies survive the trip ---------------------------------------

strings = st.builds(lambda k, v: StringMatch(k, "" if k == StringKind.PRESENCE else v),
                    st.sampled_from(list(StringKind)), st.sampled_from(["a", "kube-", "/sa/x"]))
ips = st.one_of(st.ip_addresses(v=4), st.ip_addresses(v=6))
nets = st.builds(lambda ip, n: ipaddress.ip_network(f"{ip}/{min(n, ip.max_prefixlen)}",
                                                    strict=False), ips, st.integers(0, 128))
sas = st.builds(ServiceAccountMatch, st.sampled_from(["a", "b"]), st.sampled_from(["x", "y"]))
ports = st.integers(1, 65535)


def _t(elems: st.SearchStrategy[object]) -> st.SearchStrategy[tuple[object, ...]]:
    return st.lists(elems, max_size=2).map(tuple)


matches = st.builds(Match, _t(strings), _t(strings), _t(sas), _t(sas), _t(strings),
                    _t(strings), _t(nets), _t(nets), _t(nets), _t(nets), _t(ports), _t(ports))
policies = st.builds(
    Policy, st.sampled_from(["p1", "p2"]), st.sampled_from(["ns", "other"]),
    st.sampled_from(list(PolicyScope)), st.sampled_from(list(PolicyAction)),
    st.lists(st.builds(Group, st.lists(st.builds(Rule, _t(matches)), max_size=2).map(tuple)),
             max_size=2).map(tuple),
    st.booleans(), st.sampled_from(["", "v1"]))


@given(policies)
def test_any_policy_round_trips(p: Policy) -> None:
    back = authorization(p.key, p.version, az.Authorization.FromString(
        topb.policy(p).SerializeToString()))
    assert back == p
