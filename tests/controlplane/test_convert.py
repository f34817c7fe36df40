"""Mesh -> Istio protos: field values, wire bytes, and stable per-resource versions."""

from __future__ import annotations

import ipaddress

from controlplane import convert, mesh
from controlplane.resources import ADDRESS_TYPE, AUTHORIZATION_TYPE, diff
from meshpb.istio import authorization_pb2 as authz
from meshpb.istio import workload_pb2 as wl
from tests.controlplane.harness import EXAMPLE

SVC = "default/echo.default.svc.cluster.local"


def example() -> mesh.Mesh:
    return mesh.load(EXAMPLE)


def test_workload_and_service_protos() -> None:
    snap = convert.snapshot(example(), "example.org")
    addresses = snap[ADDRESS_TYPE]
    assert sorted(addresses) == sorted([
        "Kubernetes//Pod/default/sleep", "Kubernetes//Pod/default/echo-1",
        "Kubernetes//Pod/default/echo-2", SVC])
    entry = addresses["Kubernetes//Pod/default/echo-1"]
    assert entry.body.type_url == "type.googleapis.com/istio.workload.Address"
    assert entry.aliases == ("/10.1.2.2",)
    addr = wl.Address.FromString(entry.body.value)
    w = addr.workload
    assert addr.WhichOneof("type") == "workload"
    assert (w.uid, w.name, w.namespace, w.service_account, w.node, w.trust_domain) == (
        "Kubernetes//Pod/default/echo-1", "echo-1", "default", "echo", "node2", "example.org")
    assert list(w.addresses) == [ipaddress.ip_address("10.1.2.2").packed]
    assert w.tunnel_protocol == wl.HBONE and w.status == wl.HEALTHY
    assert [(p.service_port, p.target_port) for p in w.services[SVC].ports] == [(80, 8080)]
    assert list(w.authorization_policies) == ["default/echo-from-sleep"]
    svc = wl.Address.FromString(addresses[SVC].body.value).service
    assert (svc.name, svc.namespace, svc.hostname) == ("echo", "default",
                                                       "echo.default.svc.cluster.local")
    assert [a.address for a in svc.addresses] == [bytes([10, 96, 0, 10])]
    assert [(p.service_port, p.target_port, p.app_protocol) for p in svc.ports] == [
        (80, 8080, wl.TCP)]
    assert not svc.HasField("load_balancing")  # default mode: left out, as istiod does


def test_locality_cluster_and_load_balancing_reach_the_protos() -> None:
    m = mesh.parse(
        "cluster_id: east\n"
        "services:\n"
        "  - name: echo\n"
        "    ports: [{port: 80}]\n"
        "    load_balancing:\n"
        "      mode: strict\n"
        "      routing_preference: [node, zone]\n"
        "      health_policy: allow_all\n"
        "workloads:\n"
        "  - {name: a, ips: [10.0.0.1], node: n1,\n"
        "     locality: {region: r1, zone: z1, subzone: s1}}\n"
        "  - {name: b, ips: [10.0.0.2], node: n2, cluster: west}\n", "m.yaml")
    services = {s.key: s for s in m.services}
    a, b = (convert.workload_proto(w, services, m.cluster_id, "td") for w in m.workloads)
    assert (a.locality.region, a.locality.zone, a.locality.subzone) == ("r1", "z1", "s1")
    assert a.cluster_id == "east"
    assert not b.HasField("locality") and b.cluster_id == "west"
    lb = convert.service_proto(m.services[0]).load_balancing
    assert lb.mode == wl.LoadBalancing.STRICT
    assert list(lb.routing_preference) == [wl.LoadBalancing.NODE, wl.LoadBalancing.ZONE]
    assert lb.health_policy == wl.LoadBalancing.ALLOW_ALL


def test_wire_field_numbers_match_istio() -> None:
    # Hand-encoded: Address.workload (1) { uid (20) = "u", node (9) = "n" }. A field-number
    # slip in our .proto would put these bytes in the wrong fields.
    inner = b"\xa2\x01\x01u" + b"\x4a\x01n"
    addr = wl.Address.FromString(b"\x0a" + bytes([len(inner)]) + inner)
    assert (addr.workload.uid, addr.workload.node) == ("u", "n")
    # Authorization: action (4) = DENY (1), groups (5) { rules (1) { matches (2) { ports (9) }}}
    match = b"\x4a\x01\x50"                   # destination_ports packed [80]
    rules = b"\x12" + bytes([len(match)]) + match
    group = b"\x0a" + bytes([len(rules)]) + rules
    pol = authz.Authorization.FromString(b"\x20\x01" + b"\x2a" + bytes([len(group)]) + group)
    assert pol.action == authz.DENY
    assert list(pol.groups[0].rules[0].matches[0].destination_ports) == [80]


def test_policy_proto_structure() -> None:
    m = mesh.parse("""
policies:
  - name: p
    namespace: ns
    scope: global
    action: deny
    rules:
      - from:
          - principals: ["spiffe://td/ns/a/sa/b", "td/ns/c/*"]
          - namespaces: ["*"]
            ips: [10.0.0.0/8]
        to:
          - ports: [80, 443]
""", "m.yaml")
    entry = convert.snapshot(m, "td")[AUTHORIZATION_TYPE]["ns/p"]
    assert entry.body.type_url == "type.googleapis.com/istio.security.Authorization"
    pol = authz.Authorization.FromString(entry.body.value)
    assert (pol.name, pol.namespace, pol.scope, pol.action) == ("p", "ns", authz.GLOBAL,
                                                                authz.DENY)
    (group,) = pol.groups
    sources, dests = group.rules   # AND-ed
    first, second = sources.matches  # OR-ed
    assert [m.WhichOneof("match_type") for m in first.principals] == ["exact", "prefix"]
    assert first.principals[0].exact == "td/ns/a/sa/b"
    assert first.principals[1].prefix == "td/ns/c/"
    assert second.namespaces[0].HasField("presence")
    assert (second.source_ips[0].address, second.source_ips[0].length) == (bytes([10, 0, 0, 0]),
                                                                           8)
    assert list(dests.matches[0].destination_ports) == [80, 443]


def test_string_match_patterns() -> None:
    assert convert.string_match("*").HasField("presence")
    assert convert.string_match("a*").prefix == "a"
    assert convert.string_match("*a").suffix == "a"
    assert convert.string_match("a").exact == "a"


def test_versions_are_stable_and_change_only_with_content() -> None:
    a = convert.snapshot(example(), "cluster.local")
    b = convert.snapshot(example(), "cluster.local")
    for t in (ADDRESS_TYPE, AUTHORIZATION_TYPE):
        assert not diff(a[t], b[t])
    changed = example()
    changed.workloads[0].node = "node2"          # sleep moves
    del changed.workloads[2]                      # echo-2 goes
    c = convert.snapshot(changed, "cluster.local")
    d = diff(a[ADDRESS_TYPE], c[ADDRESS_TYPE])
    assert d.updated == ["Kubernetes//Pod/default/sleep"]
    assert d.removed == ["Kubernetes//Pod/default/echo-2"]
    assert not diff(a[AUTHORIZATION_TYPE], c[AUTHORIZATION_TYPE])


def test_malformed_hook_serves_undecodable_bytes() -> None:
    m = mesh.parse("debug:\n  malformed_resources:\n    - {type: address, name: bad-1}\n",
                   "m.yaml")
    entry = convert.snapshot(m, "td")[ADDRESS_TYPE]["bad-1"]
    assert entry.body.type_url == ADDRESS_TYPE
    try:
        wl.Address.FromString(entry.body.value)
    except Exception:
        return
    raise AssertionError("the malformed resource decoded")
