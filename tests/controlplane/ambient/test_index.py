"""The incremental index: each kind of change recomputes only what it can affect and reports
exactly what changed; bad objects are skipped with a reason and never stop the index.

(Behaviour of our index; the conversion facts are in the other modules. That the index equals
a full conversion after any sequence of changes is test_incremental.py.)
"""

from __future__ import annotations

from typing import Any

import pytest

from controlplane.ambient import Delta, Index, build, workloads
from controlplane.kube.objects import ENDPOINT_SLICE, KINDS, POD, SERVICE_ENTRY, ObjectStore
from core.mesh.model import Port, TunnelProtocol
from tests.controlplane.ambient.kube import (
    authorization_policy,
    endpoint_slice,
    namespace,
    node,
    peer_authentication,
    pod,
    put,
    service,
    service_entry,
    store_of,
    workload_entry,
)

A, B = {"app": "a"}, {"app": "b"}


def uid(name: str, ns: str = "ns") -> str:
    return f"Kubernetes//Pod/{ns}/{name}"


def mesh(pods_per_ns: int = 5) -> ObjectStore:
    """Two namespaces with pods labelled a and b, services for each label, nodes."""
    objs: list[dict[str, Any]] = [node("n1"), node("n2"), namespace("ns"), namespace("other")]
    for ns in ("ns", "other"):
        for i in range(pods_per_ns):
            objs.append(pod(f"p{i}", ns, ip=f"10.{int(ns == 'ns')}.0.{i + 1}",
                            labels=A if i % 2 else B, node="n1" if i < 2 else "n2"))
        objs += [service("sa", ns, selector=A, cluster_ip=None),
                 service("sb", ns, selector=B, cluster_ip=None)]
    return store_of(*objs)


def changed(index: Index) -> Delta:
    return index.take()


def test_pod_change_recomputes_that_workload() -> None:
    store = mesh()
    index = Index(store)
    index.take()
    put(store, pod("p1", "ns", ip="10.1.0.99", labels=A, node="n1"))
    d = changed(index)
    assert set(d.workloads) == {uid("p1")} and d.workloads[uid("p1")].addresses == ("10.1.0.99",)
    assert index.recomputed == {"hostnames": 0, "policies": 0, "workload_sources": 1}
    store.delete(POD, "ns", "p1")
    d = changed(index)
    assert d.removed_workloads == {uid("p1")} and not d.workloads
    put(store, pod("p1", "ns", ip="10.1.0.99", labels=A, node="n1"))
    put(store, pod("p1", "ns", ip="10.1.0.99", labels=A, node="n1"))  # no change: no event
    assert set(changed(index).workloads) == {uid("p1")}


def test_service_change_recomputes_the_workloads_it_selects() -> None:
    store = mesh()
    index = Index(store)
    index.take()
    put(store, service("sa", "ns", selector=B, cluster_ip=None))  # a -> b
    d = changed(index)
    assert set(d.services) == set()  # the record itself is unchanged (no selector in it)
    # p1, p3 leave sa; p0, p2, p4 join it; nothing in namespace `other`
    assert set(d.workloads) == {uid(f"p{i}") for i in range(5)}
    assert index.recomputed["workload_sources"] == 5
    assert "ns/sa.ns.svc.cluster.local" in dict(index.workloads[uid("p0")].services)
    put(store, service("sa", "ns", selector=B, cluster_ip="10.96.0.9"))
    d = changed(index)
    assert set(d.services) == {"ns/sa.ns.svc.cluster.local"} and not d.workloads


def test_namespace_label_recomputes_its_pods_only() -> None:
    store = mesh()
    index = Index(store)
    index.take()
    put(store, namespace("ns", {"istio.io/dataplane-mode": "ambient"}))
    d = changed(index)
    assert set(d.workloads) == {uid(f"p{i}") for i in range(5)}
    assert all(w.tunnel_protocol == TunnelProtocol.HBONE for w in d.workloads.values())
    assert index.recomputed == {"hostnames": 0, "policies": 0, "workload_sources": 5}
    put(store, namespace("ns", {"istio.io/dataplane-mode": "ambient"},
                         {"unrelated": "annotation"}))
    assert not changed(index) and index.recomputed["workload_sources"] == 0


def test_namespace_traffic_distribution_recomputes_its_services_only() -> None:
    store = mesh()
    index = Index(store)
    index.take()
    put(store, namespace("other", annotations={
        "networking.istio.io/traffic-distribution": "PreferClose"}))
    d = changed(index)
    assert set(d.services) == {"other/sa.other.svc.cluster.local",
                               "other/sb.other.svc.cluster.local"}
    assert not d.workloads  # their ports did not change


def test_node_change_recomputes_its_pods() -> None:
    store = mesh()
    index = Index(store)
    index.take()
    put(store, node("n1", {"topology.kubernetes.io/region": "r1"}))
    d = changed(index)
    assert set(d.workloads) == {uid("p0"), uid("p1"), uid("p0", "other"), uid("p1", "other")}
    assert index.recomputed["workload_sources"] == 4
    assert index.workloads[uid("p0")].locality == ("r1", "", "")
    put(store, node("n1", {"topology.kubernetes.io/region": "r1", "other": "label"}))
    assert not changed(index) and index.recomputed["workload_sources"] == 0


def test_policy_change_recomputes_the_workloads_it_selects() -> None:
    store = mesh()
    index = Index(store)
    index.take()
    put(store, authorization_policy("ap", "ns", selector={"matchLabels": A}))
    d = changed(index)
    assert set(d.policies) == {"ns/ap"}
    assert set(d.workloads) == {uid("p1"), uid("p3")}
    assert index.recomputed["workload_sources"] == 2
    put(store, authorization_policy("ap", "ns", selector={"matchLabels": A}, action="DENY"))
    d = changed(index)  # the policy changed, the workloads' lists did not
    assert set(d.policies) == {"ns/ap"} and not d.workloads
    put(store, authorization_policy("root", "istio-system", selector={"matchLabels": B}))
    d = changed(index)  # a root-namespace selector policy reaches every namespace
    assert set(d.workloads) == {uid(f"p{i}", ns) for ns in ("ns", "other") for i in (0, 2, 4)}
    put(store, authorization_policy("wide", "ns"))  # NAMESPACE scope: listed by nobody
    d = changed(index)
    assert set(d.policies) == {"ns/wide"} and not d.workloads


def test_peer_authentication_scopes() -> None:
    store = mesh()
    index = Index(store)
    index.take()
    put(store, peer_authentication("w", "ns", selector=A, mode="STRICT"))
    d = changed(index)
    assert set(d.workloads) == {uid("p1"), uid("p3")}
    assert set(d.policies) == {"istio-system/istio_converted_static_strict"}
    put(store, peer_authentication("n", "other", mode="STRICT"))
    assert set(changed(index).workloads) == {uid(f"p{i}", "other") for i in range(5)}
    put(store, peer_authentication("m", "istio-system", mode="STRICT"))
    d = changed(index)  # mesh-wide: every workload not already STRICT
    assert set(d.workloads) == {uid(f"p{i}") for i in (0, 2, 4)}


def test_endpoint_slice_joins_and_leaves_a_pod() -> None:
    store = store_of(pod("p", "ns", labels=A), service("manual", "ns", cluster_ip=None))
    index = Index(store)
    index.take()
    ref = {"kind": "Pod", "namespace": "ns", "name": "p"}
    put(store, endpoint_slice("manual-1", "ns", service="manual", endpoints=[
        {"addresses": ["1.2.3.4"], "targetRef": ref}]))
    d = changed(index)
    assert set(d.workloads) == {uid("p")}
    assert dict(d.workloads[uid("p")].services) == {
        "ns/manual.ns.svc.cluster.local": (Port(80, 0),)}
    store.delete(ENDPOINT_SLICE, "ns", "manual-1")
    assert changed(index).workloads[uid("p")].services == ()


def test_service_entry_change() -> None:
    store = store_of(workload_entry("vm", "ns", labels=A, address="10.5.0.1"))
    index = Index(store)
    index.take()
    se = service_entry("ext", "ns", hosts=["ext.example.com"], resolution="STATIC",
                       ports=[{"number": 443, "name": "tls"}],
                       workloadSelector={"labels": A},
                       endpoints=[])
    put(store, se)
    d = changed(index)
    assert set(d.services) == {"ns/ext.example.com"}
    wl = "Kubernetes/networking.istio.io/WorkloadEntry/ns/vm"
    assert set(d.workloads) == {wl}
    assert dict(d.workloads[wl].services) == {"ns/ext.example.com": (Port(443, 443),)}
    store.delete(SERVICE_ENTRY, "ns", "ext")
    d = changed(index)
    assert d.removed_services == {"ns/ext.example.com"} and d.workloads[wl].services == ()


def test_system_namespace_network_relabels_everything() -> None:
    store = mesh(2)
    index = Index(store)
    index.take()
    put(store, namespace("istio-system", {"topology.istio.io/network": "net1"}))
    d = changed(index)
    assert len(d.workloads) == 4 and all(w.network == "net1" for w in d.workloads.values())
    put(store, namespace("istio-system", {"topology.istio.io/network": "net1", "x": "y"}))
    assert not changed(index)


def test_bad_objects_are_skipped_with_a_reason_and_the_rest_converted() -> None:
    store = store_of(
        pod("ok", "ns", ip="10.0.0.1"),
        pod("bad-ip", "ns", ip="10.0.0.300"),
        pod("bad-labels", "ns", labels={"app": ["x"]}),
        service("bad-port", "ns", ports=[{"name": "http", "port": "eighty"}]),
        service("bad-vip", "ns", cluster_ip="10.96.0.256"),
        {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "no-ns"}, "spec": []},
        service_entry("bad-res", "ns", hosts=["x.example.com"], resolution="MAYBE"),
        workload_entry("bad-port", "ns", address="10.0.0.9", ports={"http": 0}),
        endpoint_slice("half", "ns", service="good", endpoints=[
            {"addresses": ["10.7.0.1"]}, {"addresses": ["nope"]}]),
        service("good", "ns"),
        node("bad-node", {"topology.kubernetes.io/zone": 7}),  # type: ignore[dict-item]
    )
    index = Index(store)
    assert index.errors == (
        "EndpointSlice ns/half: endpoints[1].addresses[0]: 'nope' is not an IP address",
        "Node bad-node: metadata.labels.topology.kubernetes.io/zone: want a string, "
        "got an integer",
        "Pod ns/bad-ip: status.podIP: '10.0.0.300' is not an IP address",
        "Pod ns/bad-labels: metadata.labels.app: want a string, got a list",
        "Service /no-ns: metadata.namespace: missing",
        "Service ns/bad-port: spec.ports[0].port: want an integer, got a string",
        "Service ns/bad-vip: spec.clusterIP: '10.96.0.256' is not an IP address",
        "ServiceEntry ns/bad-res: spec.resolution: 'MAYBE' is not one of NONE, STATIC, DNS, "
        "DNS_ROUND_ROBIN, DYNAMIC_DNS",
        "WorkloadEntry ns/bad-port: spec.ports.http: 0 is out of range 1-65535",
    )
    assert set(index.workloads) == {
        uid("ok"), "Kubernetes/discovery.k8s.io/EndpointSlice/ns/half/10.7.0.1"}
    assert set(index.services) == {"ns/good.ns.svc.cluster.local"}
    # Fixing an object clears its error and converts it.
    put(store, pod("bad-ip", "ns", ip="10.0.0.3"))
    assert uid("bad-ip") in changed(index).workloads
    assert not any(e.startswith("Pod ns/bad-ip") for e in index.errors)
    # Deleting one clears its error too.
    store.delete(POD, "ns", "bad-labels")
    assert not any("bad-labels" in e for e in index.errors)
    assert index.state() == build(store)


def test_a_bug_in_one_conversion_does_not_escape(monkeypatch: pytest.MonkeyPatch) -> None:
    store = store_of(pod("a", "ns", ip="10.0.0.1"))
    index = Index(store)
    index.take()

    def boom(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("boom")

    monkeypatch.setattr(workloads, "pod_workload", boom)
    put(store, pod("b", "ns", ip="10.0.0.2"))  # no exception reaches the store
    assert index.errors == ("Pod ns/b: cannot convert: RuntimeError('boom')",)
    assert set(index.workloads) == {uid("a")}


def test_a_failed_update_falls_back_to_a_full_conversion(
        monkeypatch: pytest.MonkeyPatch) -> None:
    store = store_of(pod("a", "ns", ip="10.0.0.1"))
    index = Index(store)
    index.take()
    heard: list[Delta] = []
    index.subscribe(heard.append)

    def broken(*args: Any, **kwargs: Any) -> None:
        raise RuntimeError("index bug")

    monkeypatch.setattr(index, "_apply", broken)
    put(store, pod("b", "ns", ip="10.0.0.2"))
    assert set(heard[-1].workloads) == {uid("b")}
    assert index.state() == build(store)


def test_take_accumulates_and_subscribers_hear_each_change() -> None:
    store = ObjectStore()
    index = Index(store)
    heard: list[Delta] = []
    index.subscribe(heard.append)
    put(store, pod("a", "ns", ip="10.0.0.1"))
    put(store, pod("b", "ns", ip="10.0.0.2"))
    store.delete(POD, "ns", "a")
    assert [set(d.workloads) | d.removed_workloads for d in heard] == [
        {uid("a")}, {uid("b")}, {uid("a")}]
    total = index.take()
    assert set(total.workloads) == {uid("b")} and total.removed_workloads == {uid("a")}
    assert not index.take()


def test_a_pod_that_moved_node_follows_the_new_node_only() -> None:
    store = store_of(pod("p", "ns", node="n1"), node("n1"), node("n2"))
    index = Index(store)
    put(store, pod("p", "ns", node="n2"))
    index.take()
    put(store, node("n1", {"topology.kubernetes.io/zone": "z1"}))
    assert not index.take() and index.recomputed["workload_sources"] == 0
    put(store, node("n2", {"topology.kubernetes.io/zone": "z2"}))
    assert index.take().workloads[uid("p")].locality == ("", "z2", "")


def test_a_service_created_after_its_slice_joins_the_pods_it_lists() -> None:
    ref = {"kind": "Pod", "namespace": "ns", "name": "p"}
    store = store_of(pod("p", "ns"), endpoint_slice("manual-1", "ns", service="manual",
                                                    endpoints=[{"addresses": ["1.2.3.4"],
                                                                "targetRef": ref}]))
    index = Index(store)
    index.take()
    put(store, service("manual", "ns", cluster_ip=None))
    d = index.take()
    assert set(d.services) == {"ns/manual.ns.svc.cluster.local"}
    assert dict(d.workloads[uid("p")].services) == {
        "ns/manual.ns.svc.cluster.local": (Port(80, 0),)}


def test_a_mesh_wide_peer_authentication_reconverts_the_workload_ones_below_it() -> None:
    store = store_of(pod("p", "ns", labels=A),
                     peer_authentication("w", "ns", selector=A, ports={9090: "PERMISSIVE"}))
    index = Index(store)
    converted = "ns/converted_peer_authentication_w"
    assert converted not in index.policies  # nothing STRICT above it: no exception needed
    index.take()
    put(store, peer_authentication("mesh", "istio-system", mode="STRICT"))
    d = index.take()
    assert converted in d.policies
    assert d.workloads[uid("p")].authorization_policies == (converted,)
    put(store, peer_authentication("mesh", "istio-system", mode="PERMISSIVE"))
    d = index.take()
    assert converted in d.removed_policies
    assert d.workloads[uid("p")].authorization_policies == ()


def test_deleting_everything_leaves_nothing_behind() -> None:
    """No per-object bookkeeping outlives its object (a long-running control plane sees
    namespaces, pods and services come and go)."""
    store = mesh()
    put(store, endpoint_slice("sa-1", "ns", service="sa", endpoints=[
        {"addresses": ["10.1.0.2"], "targetRef": {"kind": "Pod", "namespace": "ns",
                                                   "name": "p1"}}]),
        authorization_policy("ap", "ns", selector={"matchLabels": A}),
        peer_authentication("pa", "ns", selector=A, ports={80: "STRICT"}),
        service_entry("se", "ns", hosts=["x.example.com"], endpoints=[{"address": "1.1.1.1"}]),
        workload_entry("we", "ns", address="10.5.0.1"))
    index = Index(store)
    put(store, namespace("lonely", {"istio.io/dataplane-mode": "ambient"},
                         {"networking.istio.io/traffic-distribution": "PreferClose"}))
    for kind in KINDS:
        for key in store.keys(kind):
            store.delete(kind, *key)
    assert index.state() == build(store)
    assert not index.workloads and not index.services and not index.policies
    kept = {name: v for name, v in vars(index).items()
            if name.startswith("_") and name not in ("_listeners", "_delta", "_network")}
    names = kept.pop("_names")  # kind -> namespace -> names: the kinds may stay
    assert {k: v for k, v in names.items() if v} == {}
    assert {name: v for name, v in kept.items() if v} == {}
