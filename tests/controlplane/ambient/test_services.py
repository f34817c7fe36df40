"""Service and ServiceEntry -> Service, and one served service per hostname.

Facts from istio/istio pilot/pkg/serviceregistry/ambient/services_test.go (TestServiceServices,
TestServiceEntryServices, TestSelectWorkloadServices), ambientindex_test.go
(TestAmbientIndex_ServiceOverlap, TestEmptyVIPsExcluded) and pkg/config/kube/conversion.go's
protocol rules. Inputs and expected records are written here, in our model.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest

from controlplane.ambient import Index, Options
from controlplane.kube.objects import SERVICE_ENTRY
from core.mesh.model import HealthPolicy, LbMode, LbScope, Port, Service, Vip
from meshpb.istio import workload_pb2 as wl
from tests.controlplane.ambient.kube import (
    convert,
    namespace,
    put,
    service,
    service_entry,
    store_of,
)

OPTS = Options(cluster_id="cluster0", domain_suffix="domain.suffix")
NW = "testnetwork"
NETWORK = [namespace("istio-system", {"topology.istio.io/network": NW})]
HOST = "name.ns.svc.domain.suffix"
SIMPLE = Service(name="name", namespace="ns", hostname=HOST, vips=(Vip(NW, "1.2.3.4"),),
                 ports=(Port(80, 0, wl.HTTP11),), canonical=True)
ZONE = (LbMode.FAILOVER, (LbScope.NETWORK, LbScope.REGION, LbScope.ZONE))
NODE = (LbMode.FAILOVER, (LbScope.NETWORK, LbScope.REGION, LbScope.ZONE, LbScope.SUBZONE,
                          LbScope.NODE))
TD = "networking.istio.io/traffic-distribution"


def svc(ns_annotations: dict[str, str] | None = None, **kw: Any) -> dict[str, Any]:
    return service("name", cluster_ip="1.2.3.4", ports=[{"name": "http", "port": 80}], **kw)


def lb(mode_pref: tuple[int, tuple[int, ...]]) -> dict[str, Any]:
    return {"lb_mode": mode_pref[0], "lb_routing_preference": mode_pref[1]}


SERVICE_CASES: list[tuple[str, list[dict[str, Any]], Service | None]] = [
    ("simple", [svc()], SIMPLE),
    ("ExternalName is not served", [svc(type="ExternalName", externalName="example.com")],
     None),
    ("target ports: numeric kept, named is 0 (resolved per workload)",
     [service("name", cluster_ip="1.2.3.4", ports=[
         {"name": "http", "port": 80, "targetPort": 81},
         {"name": "http-alt", "port": 8080, "targetPort": "something"}])],
     replace(SIMPLE, ports=(Port(80, 81, wl.HTTP11), Port(8080, 0, wl.HTTP11)))),
    ("headless: no VIPs", [service("name", cluster_ip="None",
                                   ports=[{"name": "http", "port": 80}])],
     replace(SIMPLE, vips=())),
    ("no cluster IP: no VIPs", [service("name", cluster_ip=None,
                                        ports=[{"name": "http", "port": 80}])],
     replace(SIMPLE, vips=())),
    ("dual stack clusterIPs win over clusterIP",
     [svc(clusterIPs=["1.2.3.4", "fd00::10"], ipFamilies=["IPv4", "IPv6"])],
     replace(SIMPLE, vips=(Vip(NW, "1.2.3.4"), Vip(NW, "fd00::10")), ip_families=wl.DUAL)),
    ("single family", [svc(ipFamilies=["IPv6"])], replace(SIMPLE, ip_families=wl.IPV6_ONLY)),
    ("trafficDistribution PreferClose", [svc(trafficDistribution="PreferClose")],
     replace(SIMPLE, **lb(ZONE))),
    ("trafficDistribution PreferSameZone", [svc(trafficDistribution="PreferSameZone")],
     replace(SIMPLE, **lb(ZONE))),
    ("trafficDistribution PreferSameNode", [svc(trafficDistribution="PreferSameNode")],
     replace(SIMPLE, **lb(NODE))),
    ("internalTrafficPolicy Local: this node only, over trafficDistribution",
     [svc(internalTrafficPolicy="Local", trafficDistribution="PreferClose")],
     replace(SIMPLE, lb_mode=LbMode.STRICT, lb_routing_preference=(LbScope.NODE,))),
    ("publishNotReadyAddresses: all endpoints", [svc(publishNotReadyAddresses=True)],
     replace(SIMPLE, lb_health_policy=HealthPolicy.ALLOW_ALL)),
    ("the namespace's traffic-distribution annotation is inherited",
     [namespace("ns", annotations={TD: "PreferSameNode"}), svc()],
     replace(SIMPLE, **lb(NODE))),
    ("the service's annotation wins over the namespace's",
     [namespace("ns", annotations={TD: "PreferSameNode"}), svc(annotations={TD: "PreferClose"})],
     replace(SIMPLE, **lb(ZONE))),
    ("an unknown annotation value means no preference (not the namespace's)",
     [namespace("ns", annotations={TD: "PreferSameNode"}), svc(annotations={TD: "Nearby"})],
     SIMPLE),
]


@pytest.mark.parametrize("objs,want", [(o, w) for _, o, w in SERVICE_CASES],
                         ids=[c[0] for c in SERVICE_CASES])
def test_service(objs: list[dict[str, Any]], want: Service | None) -> None:
    state = convert(*NETWORK, *objs, options=OPTS)
    assert not state.errors
    assert state.services.get(f"ns/{HOST}") == want


@pytest.mark.parametrize("port,want", [
    ({"name": "http", "port": 80}, wl.HTTP11),
    ({"name": "http-web", "port": 80}, wl.HTTP11),
    ({"name": "HTTP2-x", "port": 80}, wl.HTTP2),
    ({"name": "grpc", "port": 80}, wl.GRPC),
    ({"name": "grpc-web", "port": 80}, wl.UNKNOWN),
    ({"name": "https", "port": 443}, wl.TLS),
    ({"name": "tls", "port": 443}, wl.TLS),
    ({"name": "tcp-db", "port": 5432}, wl.TCP),
    ({"name": "mongo", "port": 27017}, wl.UNKNOWN),
    ({"name": "db", "port": 3306}, wl.TCP),        # well-known port, unnamed protocol
    ({"name": "web", "port": 8080}, wl.UNKNOWN),
    ({"name": "http", "port": 80, "protocol": "UDP"}, wl.UNKNOWN),
    ({"name": "tcp", "port": 80, "appProtocol": "http"}, wl.HTTP11),
    ({"name": "x", "port": 80, "appProtocol": "kubernetes.io/h2c"}, wl.HTTP2),
    ({"name": "x", "port": 80, "appProtocol": "kubernetes.io/wss"}, wl.TLS),
])
def test_app_protocol(port: dict[str, Any], want: int) -> None:
    state = convert(service("name", ports=[port]), options=OPTS)
    assert state.services[f"ns/{HOST}"].ports[0].app_protocol == want


SE = Service(name="name", namespace="ns", hostname="a.example.com",
             vips=(Vip(NW, "1.2.3.4"),), ports=(Port(80, 80, wl.HTTP11),))
HTTP = [{"number": 80, "name": "http", "protocol": "HTTP"}]
# Opted out of auto-allocated VIPs (tests/controlplane/ambient/test_autoallocate.py).
NO_AUTO = {"networking.istio.io/enable-autoallocate-ip": "false"}
PASSTHROUGH: dict[str, Any] = {"lb_mode": LbMode.PASSTHROUGH,
                               "lb_health_policy": HealthPolicy.ALLOW_ALL}

ENTRY_CASES: list[tuple[str, dict[str, Any], list[Service]]] = [
    ("DNS entry with an address: one service per host",
     service_entry("name", hosts=["a.example.com", "b.example.com"], addresses=["1.2.3.4"],
                   ports=HTTP, subjectAltNames=["san1"], resolution="DNS"),
     [replace(SE, subject_alt_names=("san1",), canonical=True),
      replace(SE, hostname="b.example.com", subject_alt_names=("san1",), canonical=True)]),
    ("CIDR address, resolution NONE: passthrough",
     service_entry("cidr-se", hosts=["cidr.example.com"], addresses=["10.0.0.0/24"],
                   ports=HTTP, resolution="NONE"),
     [replace(SE, name="cidr-se", hostname="cidr.example.com",
              vips=(Vip(NW, "10.0.0.0", 24),), canonical=True, **PASSTHROUGH)]),
    ("non-canonical CIDR is normalized",
     service_entry("n", hosts=["n.example.com"], addresses=["10.0.0.5/24"], ports=HTTP),
     [replace(SE, name="n", hostname="n.example.com", vips=(Vip(NW, "10.0.0.0", 24),),
              canonical=True, **PASSTHROUGH)]),
    ("single-IP CIDR has no length",
     service_entry("s", hosts=["s.example.com"], addresses=["1.2.3.4/32"], ports=HTTP,
                   resolution="DNS"),
     [replace(SE, name="s", hostname="s.example.com", canonical=True)]),
    ("targetPort kept; protocol from the protocol field only",
     service_entry("t", hosts=["t.example.com"], resolution="STATIC", labels=NO_AUTO, ports=[
         {"number": 80, "name": "http", "targetPort": 8080},
         {"number": 443, "name": "https-x", "protocol": "TLS"},
         {"number": 81, "name": "http-y"}]),
     [replace(SE, name="t", hostname="t.example.com", vips=(), canonical=True, ports=(
         Port(80, 8080, wl.UNKNOWN), Port(443, 443, wl.TLS), Port(81, 81, wl.UNKNOWN)))]),
    ("traffic distribution annotation",
     service_entry("d", hosts=["d.example.com"], resolution="DNS", ports=HTTP,
                   annotations={TD: "PreferSameNode"}, labels=NO_AUTO),
     [replace(SE, name="d", hostname="d.example.com", vips=(), canonical=True, **lb(NODE))]),
]


@pytest.mark.parametrize("obj,want", [(o, w) for _, o, w in ENTRY_CASES],
                         ids=[c[0] for c in ENTRY_CASES])
def test_service_entry(obj: dict[str, Any], want: list[Service]) -> None:
    state = convert(*NETWORK, obj, options=OPTS)
    assert not state.errors
    assert sorted(state.services.values(), key=lambda s: s.hostname) == want


def entry(name: str, ns: str, created: str, host: str = "foo.com") -> dict[str, Any]:
    return service_entry(name, ns, hosts=[host], created=created, resolution="STATIC",
                         ports=[{"number": 80, "name": "http"}])


def canonical(services: dict[str, Service], host: str) -> list[str]:
    return [s.name for s in services.values() if s.hostname == host and s.canonical]


def test_same_hostname_in_one_namespace_oldest_entry_wins() -> None:
    state = convert(entry("newer", "ns", "2024-01-02T00:00:00Z"),
                    entry("older", "ns", "2024-01-01T00:00:00Z"))
    assert [s.name for s in state.services.values()] == ["older"]
    assert canonical(state.services, "foo.com") == ["older"]


def test_kubernetes_service_wins_and_is_canonical_over_older_entries() -> None:
    host = "svc.team-a.svc.cluster.local"
    state = convert(service("svc", "team-a", created="2024-01-02T00:00:00Z"),
                    entry("camp", "team-a", "2020-01-01T00:00:00Z", host),
                    entry("camp", "team-b", "2020-01-01T00:00:00Z", host))
    assert {k: s.name for k, s in state.services.items()} == {
        f"team-a/{host}": "svc", f"team-b/{host}": "camp"}
    assert canonical(state.services, host) == ["svc"]


def test_overlapping_entries_across_namespaces_as_changes_come() -> None:
    """istiod's TestAmbientIndex_ServiceOverlap, as a sequence of changes and deltas."""
    store = store_of(entry("se-11", "original", "2024-01-01T00:00:00Z"))
    index = Index(store)
    index.take()
    assert canonical(index.services, "foo.com") == ["se-11"]
    put(store, entry("se-1", "ns", "2024-01-02T00:00:00Z"))
    d = index.take()
    assert set(d.services) == {"ns/foo.com"} and not d.services["ns/foo.com"].canonical
    put(store, entry("se-2", "ns", "2024-01-03T00:00:00Z"))  # overlaps se-1: not served
    assert not index.take()
    assert index.services["ns/foo.com"].name == "se-1"
    store.delete(SERVICE_ENTRY, "original", "se-11")
    d = index.take()
    assert d.removed_services == {"original/foo.com"}
    assert d.services["ns/foo.com"].canonical  # se-1 became canonical
    store.delete(SERVICE_ENTRY, "ns", "se-1")
    d = index.take()
    assert d.services["ns/foo.com"].name == "se-2"
    assert canonical(index.services, "foo.com") == ["se-2"]
