"""Protos -> mesh model (core/mesh/frompb.py): every field that matters arrives, and every
rejection names its cause (the agent NACKs with it)."""

from __future__ import annotations

import ipaddress

import pytest
from google.protobuf import wrappers_pb2

from core.mesh.frompb import Converter, ConvertError
from core.mesh.intern import Interner
from core.mesh.model import Gateway, LbMode, Port
from meshpb.istio import authorization_pb2 as az
from meshpb.istio import workload_pb2 as wl


def addr_bytes(w: wl.Workload | None = None, s: wl.Service | None = None) -> bytes:
    a = wl.Address(workload=w) if w is not None else wl.Address(service=s)
    return a.SerializeToString()


def full_workload() -> wl.Workload:
    w = wl.Workload(
        uid="c1//Pod/ns/p", name="p", namespace="ns",
        addresses=[b"\x0a\x00\x00\x01", b"\xfd" + b"\x00" * 14 + b"\x01"],
        network="net", hostname="p.example", tunnel_protocol=wl.HBONE, trust_domain="td",
        service_account="sa", node="n1", canonical_name="app", canonical_revision="v2",
        workload_type=wl.POD, workload_name="app-v2", status=wl.UNHEALTHY, cluster_id="c1",
        authorization_policies=["ns/allow"], network_mode=wl.HOST_NETWORK,
        locality=wl.Locality(region="r", zone="z", subzone="s"),
        capacity=wrappers_pb2.UInt32Value(value=3),
        waypoint=wl.GatewayAddress(hostname=wl.NamespacedHostname(namespace="ns",
                                                                   hostname="wp.svc"),
                                   hbone_mtls_port=15008))
    w.services["ns/s.svc"].ports.add(service_port=80, target_port=8080, app_protocol=wl.HTTP2)
    return w


def test_workload_fields() -> None:
    r = Converter().address("c1//Pod/ns/p", "v7", addr_bytes(full_workload()))
    assert r.addresses == ("10.0.0.1", "fd00::1")          # type: ignore[union-attr]
    assert r.services == (("ns/s.svc", (Port(80, 8080, wl.HTTP2),)),)  # type: ignore[union-attr]
    assert r.spiffe_id == "spiffe://td/ns/ns/sa/sa"        # type: ignore[union-attr]
    assert r.waypoint == Gateway(hostname="ns/wp.svc", hbone_mtls_port=15008)  # type: ignore[union-attr]
    assert (r.locality, r.capacity, r.status, r.version) == (  # type: ignore[union-attr]
        ("r", "z", "s"), 3, wl.UNHEALTHY, "v7")
    assert r.uses_hbone and r.authorization_policies == ("ns/allow",)  # type: ignore[union-attr]


def test_spiffe_defaults_when_elided() -> None:
    w = wl.Workload(uid="u", name="p", namespace="ns", addresses=[b"\x01\x02\x03\x04"])
    r = Converter().address("u", "", addr_bytes(w))
    assert r.spiffe_id == "spiffe://cluster.local/ns/ns/sa/default"  # type: ignore[union-attr]
    assert r.capacity == 1  # type: ignore[union-attr]


def test_service_fields() -> None:
    s = wl.Service(name="s", namespace="ns", hostname="s.svc",
                   addresses=[wl.NetworkAddress(network="n", address=b"\x0a\x60\x00\x01"),
                              wl.NetworkAddress(address=b"\x0a\xc8\x00\x00", length=16)],
                   ports=[wl.Port(service_port=80, target_port=8080)],
                   load_balancing=wl.LoadBalancing(mode=wl.LoadBalancing.FAILOVER,
                                                   routing_preference=[wl.LoadBalancing.ZONE]))
    r = Converter().address("ns/s.svc", "1", addr_bytes(s=s))
    assert [(v.network, v.address, v.length) for v in r.vips] == [  # type: ignore[union-attr]
        ("n", "10.96.0.1", None), ("", "10.200.0.0", 16)]
    assert r.lb_mode == LbMode.FAILOVER and r.lb_routing_preference == (2,)  # type: ignore[union-attr]


@pytest.mark.parametrize(("name", "raw", "why"), [
    ("u", b"\xff", "cannot decode"),
    ("u", b"", "neither workload nor service"),
    ("u", addr_bytes(wl.Workload(name="x")), "no uid"),
    ("other", addr_bytes(wl.Workload(uid="u")), "differs from the resource name"),
    ("u", addr_bytes(wl.Workload(uid="u", addresses=[b"\x01"])), "1-byte address"),
    ("ns/h", addr_bytes(s=wl.Service(namespace="ns")), "needs a namespace and a hostname"),
    ("ns/other", addr_bytes(s=wl.Service(namespace="ns", hostname="h")), "differs"),
    ("ns/h", addr_bytes(s=wl.Service(namespace="ns", hostname="h",
                                     ports=[wl.Port(service_port=70000)])), "out of range"),
    ("ns/h", addr_bytes(s=wl.Service(namespace="ns", hostname="h", addresses=[
        wl.NetworkAddress(address=b"\x0a\x00\x00\x00", length=33)])), "bad prefix length"),
])
def test_bad_addresses_say_why(name: str, raw: bytes, why: str) -> None:
    with pytest.raises(ConvertError, match=why):
        Converter().address(name, "1", raw)


def test_policy_shape_and_matches() -> None:
    a = az.Authorization(name="p", namespace="ns", scope=az.WORKLOAD_SELECTOR, action=az.DENY,
                         groups=[az.Group(rules=[az.Rules(matches=[az.Match(
                             namespaces=[az.StringMatch(exact="a")],
                             principals=[az.StringMatch(suffix="/sa/x")],
                             source_ips=[az.Address(address=b"\x0a\x00\x00\x00", length=8)],
                             destination_ports=[80, 443],
                             service_accounts=[az.ServiceAccountMatch(namespace="a",
                                                                      serviceAccount="b")])])])])
    p = Converter().policy("ns/p", "3", a.SerializeToString())
    m = p.groups[0].rules[0].matches[0]
    assert (p.key, p.action, p.scope, p.version) == ("ns/p", 1, 2, "3")
    assert m.destination_ports == (80, 443)
    assert m.source_ips[0] == ipaddress.ip_network("10.0.0.0/8")
    assert m.principals[0].matches("spiffe://td/ns/q/sa/x")
    assert not m.namespaces[0].matches("b") and m.service_accounts[0].service_account == "b"


@pytest.mark.parametrize(("a", "why"), [
    (az.Authorization(namespace="ns"), "no name"),
    (az.Authorization(name="q", namespace="ns"), "differs"),
    (az.Authorization(name="p", namespace="ns", action=7), "unknown action"),  # type: ignore[arg-type]
    (az.Authorization(name="p", namespace="ns", groups=[az.Group(rules=[az.Rules(matches=[
        az.Match(destination_ports=[0])])])]), "port 0 out of range"),
    (az.Authorization(name="p", namespace="ns", groups=[az.Group(rules=[az.Rules(matches=[
        az.Match(principals=[az.StringMatch()])])])]), "empty string match"),
])
def test_bad_policies_say_why(a: az.Authorization, why: str) -> None:
    with pytest.raises(ConvertError, match=why):
        Converter().policy("ns/p", "1", a.SerializeToString())


def test_repeated_values_are_shared_between_records() -> None:
    c = Converter()
    recs = []
    for i in range(3):
        w = wl.Workload(uid=f"u{i}", name=f"p{i}", namespace="shared-ns", service_account="sa",
                        addresses=[bytes([10, 0, 0, i])])
        w.services["shared-ns/s"].ports.add(service_port=80, target_port=80)
        recs.append(c.address(f"u{i}", "1", addr_bytes(w)))
    assert recs[0].namespace is recs[2].namespace  # type: ignore[union-attr]
    assert recs[0].services is recs[1].services is recs[2].services  # type: ignore[union-attr]


def test_interner_is_bounded() -> None:
    share = Interner(limit=3)
    for i in range(10):
        share((i,))
    assert len(share._seen) <= 3
