"""core/mesh/trafficpb.py: traffic records <-> meshnode.traffic.v1 protobufs.

Any valid record round-trips exactly (hypothesis), and what the agent cannot hold is a
ConvertError naming the field (the agent NACKs the resource with it)."""

from __future__ import annotations

import dataclasses
import ipaddress

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from core.mesh import trafficpb
from core.mesh.frompb import ConvertError
from core.mesh.traffic import (
    ConnectionPool,
    ConsistentHash,
    EgressHost,
    EgressListener,
    EgressPolicy,
    L4Match,
    L4Route,
    LoadBalancer,
    OutboundMode,
    OutlierDetection,
    PortTrafficPolicy,
    RouteDestination,
    RouteKind,
    ServiceTraffic,
    SimpleLb,
    Subset,
    TrafficPolicy,
    WorkloadLabels,
)
from meshpb.meshnode import traffic_pb2 as pb

names = st.text("abcxyz-.", min_size=1, max_size=8)
label_maps = st.dictionaries(names, st.text("abc12", max_size=4), max_size=3).map(
    lambda d: tuple(sorted(d.items())))
ports = st.integers(0, 65535)
seconds = st.floats(0.001, 1e6, allow_nan=False, allow_infinity=False)
u32 = st.integers(0, 2**32 - 1)

lbs = st.builds(LoadBalancer, st.sampled_from(SimpleLb), st.none() | st.builds(
    ConsistentHash, st.booleans(), st.integers(1, 2**32 - 1)))
pools = st.builds(ConnectionPool, st.integers(1, 2**32 - 1), seconds)
outliers = st.builds(OutlierDetection, u32, u32, seconds, seconds, st.integers(0, 100),
                     st.integers(0, 100))
policies = st.builds(
    TrafficPolicy, st.none() | lbs, st.none() | pools, st.none() | outliers,
    st.lists(st.builds(PortTrafficPolicy, st.integers(1, 65535), st.none() | lbs,
                       st.none() | pools, st.none() | outliers), max_size=2).map(tuple))
subnets = st.builds(lambda a, n: ipaddress.ip_network(f"{ipaddress.IPv4Address(a)}/{n}",
                                                      strict=False),
                    st.integers(0, 2**32 - 1), st.integers(0, 32))
dests = st.builds(RouteDestination, names.map(lambda n: f"ns/{n}"), st.just("") | names,
                  ports, st.integers(1, 2**32 - 1))


@st.composite
def routes(draw: st.DrawFn) -> L4Route:
    kind = draw(st.sampled_from(RouteKind))
    sni = st.lists(names, min_size=1, max_size=2) if kind == RouteKind.TLS else st.just([])
    matches = draw(st.lists(st.builds(L4Match, ports, st.lists(subnets, max_size=2).map(tuple),
                                      label_maps, st.just("") | names, sni.map(tuple)),
                            min_size=1 if kind == RouteKind.TLS else 0, max_size=2))
    return L4Route(kind, tuple(draw(st.lists(dests, min_size=1, max_size=3))), tuple(matches),
                   draw(st.just("") | names))


traffic = st.builds(
    ServiceTraffic, names.map(lambda n: f"ns/{n}"), st.lists(routes(), max_size=3).map(tuple),
    st.lists(st.builds(Subset, names, label_maps, st.none() | policies), max_size=3).map(tuple),
    st.none() | policies, st.just("") | names, st.just("") | names)
egress = st.builds(
    EgressPolicy, names, st.just("") | names, st.sampled_from(OutboundMode),
    st.lists(st.builds(EgressListener, st.lists(st.builds(
        EgressHost, st.sampled_from(["*", ".", "~", "ns"]), names), max_size=3).map(tuple),
        ports), max_size=3).map(tuple), label_maps)
wl_labels = st.builds(WorkloadLabels, names, label_maps)


@settings(max_examples=300, deadline=None)
@given(st.one_of(traffic, egress, wl_labels), st.text("0123456789abcdef", max_size=16))
def test_records_round_trip(rec: trafficpb.TrafficRecord, version: str) -> None:
    name = trafficpb.resource_name(rec)
    type_url = {ServiceTraffic: trafficpb.SERVICE_TRAFFIC_TYPE,
                EgressPolicy: trafficpb.EGRESS_POLICY_TYPE,
                WorkloadLabels: trafficpb.WORKLOAD_LABELS_TYPE}[type(rec)]
    raw = trafficpb.serialize(rec)
    back = trafficpb.DECODERS[type_url](name, version, raw)
    assert back == dataclasses.replace(rec, version=version)
    assert trafficpb.serialize(back) == raw  # deterministic bytes: a content hash versions


def test_type_urls_are_the_documented_names() -> None:
    assert trafficpb.TRAFFIC_TYPES == (
        "type.googleapis.com/meshnode.traffic.v1.ServiceTraffic",
        "type.googleapis.com/meshnode.traffic.v1.EgressPolicy",
        "type.googleapis.com/meshnode.traffic.v1.WorkloadLabels")


def test_unset_policy_parts_stay_unset() -> None:
    # "not set" and "set to the default" differ when a subset's policy merges with the rule's
    rec = ServiceTraffic("ns/a", subsets=(Subset("v1", (("version", "v1"),),
                                                 TrafficPolicy(load_balancer=None)),))
    back = trafficpb.service_traffic_from("ns/a", "", trafficpb.serialize(rec))
    assert back.subsets[0].traffic_policy == TrafficPolicy()
    assert back.subsets[0].traffic_policy.connection_pool is None
    assert back.traffic_policy is None


def _raw(msg: object) -> bytes:
    data: bytes = msg.SerializeToString()  # type: ignore[attr-defined]
    return data


@pytest.mark.parametrize(("msg", "name", "error"), [
    (pb.ServiceTraffic(service="ns/a"), "ns/b", "differs from the resource name"),
    (pb.ServiceTraffic(service="ns/a", routes=[pb.L4Route(
        kind=pb.L4Route.TLS, destinations=[pb.RouteDestination(service="ns/a")])]), "ns/a",
     "routes[0]: a TLS route needs matches"),
    (pb.ServiceTraffic(service="ns/a", routes=[pb.L4Route(kind=7,  # type: ignore[arg-type]
                                                          destinations=[
        pb.RouteDestination(service="ns/a")])]), "ns/a", "routes[0].kind: unknown value 7"),
    (pb.ServiceTraffic(service="ns/a", routes=[pb.L4Route(destinations=[
        pb.RouteDestination(service="ns/a", port=70000)])]), "ns/a",
     "routes[0].destinations[0]: port 70000 out of range"),
    (pb.ServiceTraffic(service="ns/a", routes=[pb.L4Route(destinations=[
        pb.RouteDestination(service="ns/a"), pb.RouteDestination(service="ns/b")])]),
     "ns/a", "total destination weight = 0"),
    (pb.ServiceTraffic(service="ns/a", routes=[pb.L4Route(
        destinations=[pb.RouteDestination(service="ns/a")],
        matches=[pb.L4Match(destination_subnets=["10.0.0.300/8"])])]), "ns/a",
     "routes[0].matches[0].destination_subnets[0]: '10.0.0.300/8' is not a CIDR"),
    (pb.ServiceTraffic(service="ns/a", traffic_policy=pb.TrafficPolicy(
        connection_pool=pb.ConnectionPool(max_connections=0, connect_timeout_seconds=1))),
     "ns/a", "traffic_policy.connection_pool: max_connections 0 < 1"),
    (pb.ServiceTraffic(service="ns/a", subsets=[pb.Subset()]), "ns/a",
     "subsets[0]: a subset needs a name"),
    (pb.EgressPolicy(namespace="ns", name="s", mode=5),  # type: ignore[arg-type]
     "ns/s", "mode: unknown value 5"),
    (pb.EgressPolicy(namespace="ns", name="s", listeners=[pb.EgressListener(
        hosts=["nohost"])]), "ns/s", "listeners[0].hosts[0]: 'nohost' is not namespace/"),
    (pb.EgressPolicy(namespace="ns"), "ns/s", "'mesh default' differs"),
    (pb.WorkloadLabels(uid=""), "", "differs from the resource name"),
])
def test_bad_resources_are_refused_naming_the_field(msg: object, name: str,
                                                    error: str) -> None:
    type_url = trafficpb.PREFIX + msg.DESCRIPTOR.full_name  # type: ignore[attr-defined]
    with pytest.raises(ConvertError) as got:
        trafficpb.DECODERS[type_url](name, "v", _raw(msg))
    assert error in str(got.value)


def test_garbage_bytes_are_a_decode_error() -> None:
    with pytest.raises(ConvertError, match=r"cannot decode meshnode\.traffic\.v1\.ServiceTraffic"):
        trafficpb.service_traffic_from("ns/a", "", b"\xff\xff\xff")
