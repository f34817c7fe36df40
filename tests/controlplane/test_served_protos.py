"""What the example manifests are served as (controlplane/ambientstore.py): Istio protos, field
by field, wire field numbers as Istio's, and per-resource versions that change only with the
content. (Every conversion rule: tests/controlplane/ambient/; model <-> protobuf:
tests/mesh_model/.)"""

from __future__ import annotations

import ipaddress

from controlplane.ambient.index import Index
from controlplane.ambient.options import Options
from controlplane.ambientstore import AmbientStore
from controlplane.kube.objects import ObjectStore, kind_of
from controlplane.resources import ADDRESS_TYPE, AUTHORIZATION_TYPE, Entry
from meshpb.istio import authorization_pb2 as authz
from meshpb.istio import workload_pb2 as wl
from testing.mesh_manifests import Obj
from tests.controlplane.harness import example

SVC = "default/echo.default.svc.cluster.local"
SLEEP = "Kubernetes//Pod/default/sleep"
ECHO1 = "Kubernetes//Pod/default/echo-1"
ECHO2 = "Kubernetes//Pod/default/echo-2"


def served(docs: list[Obj], trust_domain: str = "cluster.local") -> AmbientStore:
    objects = ObjectStore()
    for d in docs:
        kind = kind_of(d)
        assert kind is not None, d
        objects.put(kind, d)
    return AmbientStore(Index(objects, Options(trust_domain=trust_domain)), trust_domain)


def changed(old: dict[str, Entry], new: dict[str, Entry]) -> tuple[list[str], list[str]]:
    """(names new or at another version, names gone)."""
    return (sorted(n for n, e in new.items() if n not in old or old[n].version != e.version),
            sorted(n for n in old if n not in new))


def test_workload_service_and_policy_protos() -> None:
    snap = served(example(), "example.org").snapshot
    addresses = snap[ADDRESS_TYPE]
    assert sorted(addresses) == sorted([SLEEP, ECHO1, ECHO2, SVC])
    entry = addresses[ECHO1]
    assert entry.body.type_url == "type.googleapis.com/istio.workload.Address"
    assert "/10.1.2.2" in entry.aliases
    addr = wl.Address.FromString(entry.body.value)
    w = addr.workload
    assert addr.WhichOneof("type") == "workload"
    assert (w.uid, w.name, w.namespace, w.service_account, w.node, w.trust_domain) == (
        ECHO1, "echo-1", "default", "echo", "node2", "example.org")
    assert list(w.addresses) == [ipaddress.ip_address("10.1.2.2").packed]
    assert w.tunnel_protocol == wl.HBONE and w.status == wl.HEALTHY
    assert [(p.service_port, p.target_port) for p in w.services[SVC].ports] == [(80, 8080)]
    assert list(w.authorization_policies) == ["default/echo-from-sleep"]
    svc = wl.Address.FromString(addresses[SVC].body.value).service
    assert (svc.name, svc.namespace, svc.hostname) == ("echo", "default",
                                                       "echo.default.svc.cluster.local")
    assert [a.address for a in svc.addresses] == [bytes([10, 96, 0, 10])]
    assert [(p.service_port, p.target_port) for p in svc.ports] == [(80, 8080)]
    assert not svc.HasField("load_balancing")  # default mode: left out, as istiod does
    entry = snap[AUTHORIZATION_TYPE]["default/echo-from-sleep"]
    assert entry.body.type_url == "type.googleapis.com/istio.security.Authorization"
    pol = authz.Authorization.FromString(entry.body.value)
    assert (pol.name, pol.namespace, pol.scope, pol.action) == (
        "echo-from-sleep", "default", authz.WORKLOAD_SELECTOR, authz.ALLOW)
    matches = [m for g in pol.groups for r in g.rules for m in r.matches]
    assert [p.exact for m in matches for p in m.principals] == [
        "cluster.local/ns/default/sa/sleep"]
    assert [list(m.destination_ports) for m in matches if m.destination_ports] == [[8080]]


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


def test_versions_are_stable_and_change_only_with_content() -> None:
    a = served(example()).snapshot
    b = served(example()).snapshot
    for t in (ADDRESS_TYPE, AUTHORIZATION_TYPE):
        assert a[t] and changed(a[t], b[t]) == ([], [])
    # sleep moves, echo-2 goes
    c = served(example(sleep_node="node2", echo_2=False)).snapshot
    assert changed(a[ADDRESS_TYPE], c[ADDRESS_TYPE]) == ([SLEEP], [ECHO2])
    assert changed(a[AUTHORIZATION_TYPE], c[AUTHORIZATION_TYPE]) == ([], [])
