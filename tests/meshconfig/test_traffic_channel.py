"""Traffic management records on the agent -> proxy mesh config channel: every field round
trips, snapshot and deltas over a real unix socket (removals filed by kind), a bad record is
refused whole with the last good rules kept, and the proxy's MeshTable as the router's
MeshView (which connections take the router, which Sidecar applies). No root needed."""

from __future__ import annotations

import dataclasses
import ipaddress
import json
from pathlib import Path
from typing import Any

import pytest

from agent.identity.manager import IdentityManager
from agent.meshconfig.server import MeshConfigServer, delta, snapshot
from agent.xds.state import Change, XdsState
from core.mesh.channel import (
    decode_egress,
    decode_labels,
    decode_traffic,
    encode_egress,
    encode_labels,
    encode_service,
    encode_traffic,
)
from core.mesh.model import Port, Service, Vip, Workload
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
    labels,
)
from proxy.meshconfig.runtime import ProxyMesh
from proxy.meshconfig.table import MeshTable
from proxy.traffic.routes import Connection
from tests.meshconfig.test_channel import NoCa
from tests.xds.helpers import run, until

KEY = "default/echo.default.svc.cluster.local"
FULL_POLICY = TrafficPolicy(
    LoadBalancer(SimpleLb.RANDOM, ConsistentHash(True, 2048)),
    ConnectionPool(7, 0.25),
    OutlierDetection(3, 2, 0.5, 1.5, 50, 10),
    (PortTrafficPolicy(80, LoadBalancer(SimpleLb.ROUND_ROBIN)),
     PortTrafficPolicy(81, connection_pool=ConnectionPool(2, 1.0))))
FULL = ServiceTraffic(
    KEY,
    (L4Route(RouteKind.TLS,
             (RouteDestination(KEY, "v1", 443, 90), RouteDestination("other/x.example", "", 0, 10)),
             (L4Match(443, (ipaddress.ip_network("198.19.0.0/16"),), labels({"app": "a"}),
                      "default", ("*.example.com", "a.example.org")),),
             "default/echo/tls/0"),
     L4Route(RouteKind.TCP, (RouteDestination(KEY, "v2"),))),
    (Subset("v1", labels({"version": "v1"}), FULL_POLICY), Subset("v2", labels({"version": "v2"}))),
    TrafficPolicy(connection_pool=ConnectionPool(100, 3.0)),
    "default/echo-vs", "default/echo-dr")
EGRESS = EgressPolicy("default", "sc", OutboundMode.REGISTRY_ONLY,
                      (EgressListener((EgressHost(".", "*"), EgressHost("istio-system", "*"))),
                       EgressListener((EgressHost("*", "api.example.com"),), 443)),
                      labels({"app": "sleep"}))


@pytest.mark.parametrize("rec,enc,dec", [
    (FULL, encode_traffic, decode_traffic),
    (ServiceTraffic(KEY), encode_traffic, decode_traffic),
    (EGRESS, encode_egress, decode_egress),
    (EgressPolicy(""), encode_egress, decode_egress),
    (WorkloadLabels("uid-1", labels({"app": "a", "version": "v1"})), encode_labels,
     decode_labels),
], ids=["traffic-every-field", "traffic-empty", "egress", "mesh-default", "labels"])
def test_round_trip(rec: Any, enc: Any, dec: Any) -> None:
    wire = json.loads(json.dumps(enc(rec)))  # through real JSON text
    assert dec(wire) == rec
    assert enc(dec(wire)) == wire


def test_unset_policy_parts_stay_unset() -> None:
    """`None` means "not set" for merging (proxy/traffic/policy.py): it must not come back
    as a default value."""
    t = ServiceTraffic(KEY, subsets=(Subset("v1", (), TrafficPolicy(
        connection_pool=ConnectionPool(5))),))
    wire = encode_traffic(t)
    assert wire["subsets"][0]["tp"] == {"cp": {"max": 5, "ct": 10.0}}
    got = decode_traffic(wire).subsets[0].traffic_policy
    assert got is not None and got.load_balancer is None and got.outlier_detection is None


@pytest.mark.parametrize("mutate,error", [
    (lambda w: w["routes"][0].update(d=[[KEY, "", 0, 0], [KEY, "", 0, 0]]),
     "traffic default/echo.default.svc.cluster.local: ValueError: total destination weight = 0"),
    (lambda w: w["routes"][0].update(k=7),
     "traffic default/echo.default.svc.cluster.local: ValueError: 7 is not a valid RouteKind"),
    (lambda w: w["subsets"][0]["tp"]["cp"].update(max=0),
     "traffic default/echo.default.svc.cluster.local: ValueError: max_connections 0 < 1"),
    (lambda w: w["routes"][0].pop("d"),
     "traffic default/echo.default.svc.cluster.local: KeyError: 'd'"),
], ids=["zero-weights", "route-kind", "max-connections", "no-destinations"])
def test_a_bad_record_names_the_service(mutate: Any, error: str) -> None:
    wire = encode_traffic(FULL)
    mutate(wire)
    with pytest.raises(ValueError) as exc:
        decode_traffic(wire)
    assert str(exc.value).startswith(error), str(exc.value)


def test_a_bad_egress_host_names_the_sidecar() -> None:
    wire = encode_egress(EGRESS)
    wire["ls"][0]["hosts"] = ["no-slash"]
    with pytest.raises(ValueError, match=r"^egress default/sc: ValueError: 'no-slash' is not "
                                         r"namespace/dnsName$"):
        decode_egress(wire)


def test_delta_files_each_removal_by_its_kind() -> None:
    """A removed traffic record used to be sent as a removed policy of the same key."""
    changes = [Change("traffic", KEY, FULL, None), Change("egress", "default/sc", EGRESS, None),
               Change("labels", "uid-1", WorkloadLabels("uid-1"), None),
               Change("policy", "default/deny", None, None),
               Change("traffic", KEY, None, FULL)]
    msg = delta(changes)
    assert msg["removed_traffic"] == [KEY] and msg["removed_egress"] == ["default/sc"]
    assert msg["removed_labels"] == ["uid-1"] and msg["removed_policies"] == ["default/deny"]
    assert msg["traffic"] == [encode_traffic(FULL)]


def echo(vip: str = "198.19.0.10") -> Service:
    return Service(name="echo", namespace="default", hostname="echo.default.svc.cluster.local",
                   vips=(Vip("", vip),), ports=(Port(80, 8080),))


def test_snapshot_then_deltas_reach_the_table(tmp_path: Path) -> None:
    async def go() -> None:
        state = XdsState("node1")
        state.apply([echo(), FULL, EGRESS, WorkloadLabels("uid-1", labels({"app": "sleep"}))])
        assert snapshot(state)["traffic"] == [encode_traffic(FULL)]
        server = MeshConfigServer(str(tmp_path / "mesh.sock"), state, IdentityManager(NoCa()))
        await server.start()
        mesh = ProxyMesh(str(tmp_path / "mesh.sock"))
        mesh.start()
        try:
            t = mesh.table
            await until(mesh.ready, what="snapshot")
            assert t.traffic(KEY) == FULL and t.egress == {"default/sc": EGRESS}
            assert t.labels("uid-1") == {"app": "sleep"}
            # An update, then removals of each kind, one response each.
            half = ServiceTraffic(KEY, FULL.routes[1:], FULL.subsets)
            state.apply([half])
            await until(lambda: t.traffic(KEY) == half, what="updated rules")
            state.apply(removed_traffic=[("traffic", KEY), ("egress", "default/sc"),
                                         ("labels", "uid-1")])
            await until(lambda: t.traffic(KEY) is None, what="removed rules")
            assert t.egress == {} and t.labels("uid-1") == {}
            assert t.services  # a traffic removal never touches anything else
            # A bad record: the message is refused whole, the last good rules stay.
            state.apply([FULL])
            await until(lambda: t.traffic(KEY) == FULL, what="rules back")
            errors = mesh.client.errors
            bad = encode_traffic(FULL)
            bad["routes"][0]["d"] = [[KEY, "", 0, 0], [KEY, "", 0, 0]]
            gone = Service(name="gone", namespace="default", hostname="gone.example",
                           vips=(Vip("", "198.19.0.99"),))
            mesh.client._apply({"t": "delta", "traffic": [bad], "removed_services": [KEY],
                                "services": [encode_service(gone)]})
            assert mesh.client.errors == errors + 1 and t.traffic(KEY) == FULL
            assert KEY in t.services and gone.key not in t.services  # nothing applied
        finally:
            await mesh.close()
            await server.close()

    run(go())


def _wl(name: str, ip: str, svc: Service, hostname: str = "") -> Workload:
    return Workload(uid=f"uid-{name}", name=name, namespace="default",
                    addresses=(ip,) if ip else (), hostname=hostname,
                    services=((svc.key, (Port(80, 8080),)),))


def _table(*recs: Any) -> MeshTable:
    from core.mesh.channel import encode_workload

    msg: dict[str, Any] = {"t": "snapshot", "workloads": [], "services": [], "traffic": [],
                           "egress": [], "labels": []}
    for r in recs:
        if isinstance(r, Service):
            msg["services"].append(encode_service(r))
        elif isinstance(r, Workload):
            msg["workloads"].append(encode_workload(r))
        elif isinstance(r, ServiceTraffic):
            msg["traffic"].append(encode_traffic(r))
        elif isinstance(r, EgressPolicy):
            msg["egress"].append(encode_egress(r))
        else:
            msg["labels"].append(encode_labels(r))
    t = MeshTable()
    t.apply(json.loads(json.dumps(msg)))
    return t


def test_table_routes_only_services_with_rules_through_the_router() -> None:
    svc, other = echo(), Service(name="x", namespace="default", hostname="x.example",
                                 vips=(Vip("", "198.19.0.11"),), ports=(Port(80, 80),))
    t = _table(svc, other, _wl("e1", "198.18.1.1", svc), ServiceTraffic(svc.key))
    assert t.routed_service(("198.19.0.10", 80)) == svc
    assert t.routed_service(("198.19.0.11", 80)) is None   # no rules: MeshTable.route
    assert t.routed_service(("198.18.1.1", 8080)) is None  # a pod
    assert _table(svc, other).routed_service(("198.19.0.10", 80)) is None


def test_a_host_name_endpoint_is_routed_and_resolved_later() -> None:
    """A DNS ServiceEntry's workload has a host name and no IP: only the router path can
    reach it; its pick says which name to resolve."""
    se = Service(name="ext", namespace="default", hostname="api.example.com",
                 vips=(Vip("", "240.240.0.1"),), ports=(Port(80, 8080),))
    t = _table(se, _wl("api", "", se, hostname="api.example.com"))
    assert t.routed_service(("240.240.0.1", 80)) == se
    d = t.router.decide(se, Connection("240.240.0.1", 80))
    e = t.router.pick(d, Connection("240.240.0.1", 80))
    assert e.addr == ("", 8080) and e.host == "api.example.com"


def test_the_sidecar_that_applies() -> None:
    """By workloadSelector in the workload's namespace, else the namespace's selector-less
    one, else the mesh default; none at all: None (ALLOW_ANY, nothing to check)."""
    sel = EgressPolicy("default", "by-label", OutboundMode.REGISTRY_ONLY,
                       selector=labels({"app": "sleep"}))
    ns = EgressPolicy("default", "ns-wide", OutboundMode.ALLOW_ANY)
    mesh = EgressPolicy("", mode=OutboundMode.REGISTRY_ONLY)
    svc = echo()
    sleep, other = _wl("sleep", "198.18.1.5", svc), _wl("other", "198.18.1.6", svc)
    t = _table(svc, sleep, other, sel, ns, mesh,
               WorkloadLabels(sleep.uid, labels({"app": "sleep"})))
    assert t.egress_policy(t.workloads[sleep.uid], "default") == sel
    assert t.egress_policy(t.workloads[other.uid], "default") == ns
    # The mesh default, read for a workload of "prod": its "." means "prod" (Istio's root
    # namespace Sidecar), so "./*" imports the workload's own namespace.
    assert t.egress_policy(None, "prod") == dataclasses.replace(mesh, namespace="prod")
    assert _table(svc).egress_policy(None, "default") is None


def test_the_mesh_defaults_dot_is_the_workloads_namespace() -> None:
    from proxy.traffic.egress import imported
    mesh = EgressPolicy("", mode=OutboundMode.REGISTRY_ONLY,
                        listeners=(EgressListener((EgressHost.parse("./*"),)),))
    svc = echo()  # in "default"
    t = _table(svc, mesh)
    own, other = t.egress_policy(None, svc.namespace), t.egress_policy(None, "prod")
    assert own is not None and other is not None
    assert imported(own, svc, 80)
    assert not imported(other, svc, 80)
