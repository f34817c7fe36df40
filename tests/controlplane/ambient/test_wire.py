"""The converted model survives the wire: every workload, service and policy converted from
Kubernetes objects goes through core/mesh/topb.py to protobuf bytes and back through
core/mesh/frompb.py (what the node agent runs) unchanged."""

from __future__ import annotations

from core.mesh import topb
from core.mesh.frompb import Converter
from core.mesh.model import Service, Workload
from meshpb.istio import workload_pb2 as wl
from tests.controlplane.ambient.kube import (
    authorization_policy,
    convert,
    endpoint_slice,
    namespace,
    node,
    peer_authentication,
    pod,
    service,
    service_entry,
    workload_entry,
)
from tests.controlplane.ambient.test_policies import FULL_RULES, GROUP_RULES

A = {"app": "a"}


def test_converted_model_round_trips_through_protobuf() -> None:
    state = convert(
        namespace("istio-system", {"topology.istio.io/network": "net1"}),
        namespace("ns", {"istio.io/dataplane-mode": "ambient"},
                  {"networking.istio.io/traffic-distribution": "PreferClose"}),
        node("n1", {"topology.kubernetes.io/region": "r", "topology.kubernetes.io/zone": "z",
                    "topology.istio.io/subzone": "s"}),
        pod("p", labels={**A, "version": "v2"}, node="n1", ports={"http": 8080},
            spec={"serviceAccountName": "sa"},
            status={"podIPs": [{"ip": "10.0.0.1"}, {"ip": "fd00::1"}]}),
        pod("host", ip="10.0.0.2", labels=A, spec={"hostNetwork": True}, ready=False),
        service("svc", selector=A, clusterIPs=["10.96.0.1", "fd00::96"],
                ipFamilies=["IPv4", "IPv6"], publishNotReadyAddresses=True,
                ports=[{"name": "http", "port": 80, "targetPort": "http"},
                       {"name": "grpc", "port": 90, "targetPort": 9090}]),
        service("local", internalTrafficPolicy="Local"),
        service_entry("ext", hosts=["ext.example.com", "*.wild.example.com"],
                      addresses=["240.0.0.0/16"], resolution="NONE",
                      subjectAltNames=["spiffe://td/ns/ns/sa/ext"],
                      ports=[{"number": 443, "name": "tls", "protocol": "TLS"}],
                      endpoints=[{"address": "10.8.0.1", "weight": 5, "locality": "r/z"},
                                 {"address": "vm.example.com", "network": "remote"}]),
        workload_entry("vm", labels=A, address="10.9.0.1", serviceAccount="vm",
                       ports={"http": 8081}),
        service("manual", cluster_ip="10.96.0.7",
                ports=[{"name": "web", "port": 8000}]),
        endpoint_slice("manual-1", service="manual", endpoints=[
            {"addresses": ["10.7.0.1"], "conditions": {"ready": False}}],
            ports=[{"name": "web", "port": 8001, "protocol": "TCP"}]),
        authorization_policy("full", "ns", rules=FULL_RULES),
        authorization_policy("deny", "ns", action="DENY", rules=GROUP_RULES,
                             selector={"matchLabels": A},
                             annotations={"istio.io/dry-run": "true"}),
        authorization_policy("global", "istio-system", rules=[{}]),
        peer_authentication("mesh", "istio-system", mode="STRICT"),
        peer_authentication("w", "ns", selector=A, mode="PERMISSIVE",
                            ports={9090: "STRICT", 8080: "DISABLE"}),
    )
    assert not state.errors
    # The scenario covers what it means to (a guard against a silently thinner test).
    assert len(state.workloads) == 6 and len(state.services) == 5 and len(state.policies) == 5
    assert any(w.locality != ("", "", "") for w in state.workloads.values())
    assert any(w.hostname and not w.addresses for w in state.workloads.values())
    assert any(w.network_mode == wl.HOST_NETWORK for w in state.workloads.values())
    assert any(v.length for s in state.services.values() for v in s.vips)
    assert any(p.dry_run for p in state.policies.values())

    conv = Converter()
    for uid, w in state.workloads.items():
        raw = topb.address(w).SerializeToString(deterministic=True)
        back = conv.address(uid, "", raw)
        assert isinstance(back, Workload) and back == w, uid
    for key, s in state.services.items():
        raw = topb.address(s).SerializeToString(deterministic=True)
        got = conv.address(key, "", raw)
        assert isinstance(got, Service) and got == s, key
    for key, p in state.policies.items():
        raw = topb.policy(p).SerializeToString(deterministic=True)
        assert conv.policy(key, "", raw) == p, key
