"""The incremental index equals a full conversion after any sequence of store changes, and the
deltas it reports, applied to where it started, give where it ended.

Objects are drawn from a small universe (3 namespaces incl. the root one, 2 nodes, a few
names per kind, shared hostnames, IPs and labels, some malformed) so that changes interact:
services select pods, entries claim a Service's hostname, slices point at pods, policies
select workloads, namespace labels enroll pods, the system namespace's network label moves.
"""

from __future__ import annotations

from typing import Any

from hypothesis import event, given, settings
from hypothesis import strategies as st

from controlplane.ambient import Delta, Index, MeshState, build
from controlplane.kube.objects import (
    AUTHORIZATION_POLICY,
    ENDPOINT_SLICE,
    NAMESPACE,
    NODE,
    PEER_AUTHENTICATION,
    POD,
    SERVICE,
    SERVICE_ENTRY,
    WORKLOAD_ENTRY,
    Kind,
    ObjectStore,
    key_of,
)

APPS = ["x", "y"]
IPS = ["10.0.0.1", "10.0.0.2", "fd00::1", "bad-ip"]
TIMES = [None, "2024-01-01T00:00:00Z", "2024-01-02T00:00:00Z"]
HOSTS = ["a.example.com", "b.example.com", "s1.a.svc.cluster.local"]


def meta(name: str, ns: str | None, labels: dict[str, Any] | None = None,
         annotations: dict[str, str] | None = None, created: str | None = None,
         **extra: Any) -> dict[str, Any]:
    m: dict[str, Any] = {"name": name, **extra}
    if ns is not None:
        m["namespace"] = ns
    if labels is not None:
        m["labels"] = labels
    if annotations:
        m["annotations"] = annotations
    if created:
        m["creationTimestamp"] = created
    return m


def operations(ns_: st.SearchStrategy[str]) -> st.SearchStrategy[tuple[Any, ...]]:
    """A store change (put or delete) over the universe, namespaces drawn from ns_."""
    namespaces = st.builds(
        lambda name, mode, net, td: {"metadata": meta(
            name, None, {k: v for k, v in (("istio.io/dataplane-mode", mode),
                                           ("topology.istio.io/network", net)) if v},
            {"networking.istio.io/traffic-distribution": td} if td else None)},
        ns_, st.sampled_from([None, "ambient", "none"]), st.sampled_from([None, "net1", "net2"]),
        st.sampled_from([None, "PreferClose", "PreferSameNode"]))

    nodes = st.builds(
        lambda name, region, zone: {"metadata": meta(name, None, {
            k: v for k, v in (("topology.kubernetes.io/region", region),
                              ("topology.kubernetes.io/zone", zone)) if v})},
        st.sampled_from(["n1", "n2"]), st.sampled_from([None, "r1", "r2"]),
        st.sampled_from([None, "z1"]))

    labels_ = st.sampled_from([
        {"app": "x"}, {"app": "y"}, {"app": "x", "istio.io/dataplane-mode": "ambient"},
        {"app": "y", "istio.io/dataplane-mode": "none"},
        {"app": ["not", "a", "string"]}])  # malformed

    pods = st.builds(
        lambda name, ns, labels, node, ip, ready, phase, host, port, uid, ann, deleting: {
            "metadata": meta(name, ns, labels, ann, uid=uid,
                             **({"deletionTimestamp": "2024-01-03T00:00:00Z"} if deleting else {})),
            "spec": {"nodeName": node, "hostNetwork": host, "serviceAccountName": "sa",
                     "containers": [{"ports": [{"name": port, "containerPort": 9090}]}]},
            "status": {"phase": phase, **({"podIP": ip} if ip else {}),
                       "conditions": [{"type": "Ready", "status": "True" if ready else "False"}]}},
        st.sampled_from(["p1", "p2"]), ns_, labels_, st.sampled_from(["n1", "n2"]),
        st.sampled_from([*IPS, "10.0.0.1", None]), st.booleans(),
        st.sampled_from(["Running", "Running", "Succeeded"]),
        st.booleans(), st.sampled_from(["http", "grpc"]), st.sampled_from(["u1", "u1", "u2"]),
        st.sampled_from([None, {"ambient.istio.io/redirection": "enabled"},
                         {"meshnode.io/redirection": "pending"}]), st.booleans())

    services = st.builds(
        lambda name, ns, sel, target, ip, itp, created: {
            "metadata": meta(name, ns, created=created),
            "spec": {**({"selector": {"app": sel}} if sel else {}),
                     "ports": [{"name": "http", "port": 80, "targetPort": target}],
                     **({"clusterIP": ip} if ip else {}),
                     **({"internalTrafficPolicy": "Local"} if itp else {})}},
        st.sampled_from(["s1", "s1", "s2"]), ns_, st.sampled_from([None, *APPS]),
        st.sampled_from([8080, 8080, "http", "http", "grpc", -1]), st.sampled_from([None, *IPS]),
        st.booleans(), st.sampled_from(TIMES))

    service_entries = st.builds(
        lambda name, ns, hosts, res, sel, eps, created, addr: {
            "metadata": meta(name, ns, {"app": "x"}, created=created),
            "spec": {"hosts": hosts, "resolution": res,
                     "ports": [{"number": 80, "name": "http"}],
                     **({"addresses": [addr]} if addr else {}),
                     **({"workloadSelector": {"labels": {"app": sel}}} if sel else {}),
                     **({"endpoints": [{"address": e, "ports": {"http": 8080}} for e in eps]}
                        if eps else {})}},
        st.sampled_from(["e1", "e2"]), ns_, st.lists(st.sampled_from(HOSTS), max_size=2),
        st.sampled_from(["STATIC", "STATIC", "DNS", "DNS", "NONE", "NONE", "BOGUS"]),
        st.sampled_from([None, *APPS]),
        st.lists(st.sampled_from(["10.1.0.1", "10.1.0.2", "vm.example.com"]), max_size=2),
        st.sampled_from(TIMES),
        st.sampled_from([None, None, "240.0.0.1", "240.0.0.1", "10.9.0.0/16", "nope"]))

    workload_entries = st.builds(
        lambda name, ns, labels, addr, net: {
            "metadata": meta(name, ns, labels),
            "spec": {"address": addr, "ports": {"http": 8443},
                     **({"network": net} if net else {})}},
        st.sampled_from(["w1"]), ns_, labels_,
        st.sampled_from(["10.2.0.1", "vm.example.com", ""]), st.sampled_from([None, "net9"]))

    slices = st.builds(
        lambda name, ns, svc, target, addr, ready: {
            "metadata": meta(name, ns, {"kubernetes.io/service-name": svc} if svc else {}),
            "addressType": "IPv4",
            "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
            "endpoints": [{"addresses": [addr], "conditions": {"ready": ready},
                           **({"targetRef": {"kind": "Pod", "namespace": ns, "name": target,
                                             "uid": "u1"}} if target else {})}]},
        st.sampled_from(["es1"]), ns_, st.sampled_from([None, "s1", "s1", "s2"]),
        st.sampled_from([None, "p1", "p2"]), st.sampled_from(["10.3.0.1", "10.0.0.1", "x"]),
        st.booleans())

    rules = st.lists(st.fixed_dictionaries({}, optional={
        "from": st.just([{"source": {"principals": ["cluster.local/ns/a/sa/sa"]}}]),
        "to": st.sampled_from([[{"operation": {"ports": ["80"]}}],
                               [{"operation": {"ports": ["9090"]}}],
                               [{"operation": {"methods": ["GET"]}}],
                               [{"operation": {"ports": ["eighty"]}}]]),
    }), max_size=2)

    authz = st.builds(
        lambda name, ns, sel, action, rs: {
            "metadata": meta(name, ns),
            "spec": {**({"selector": {"matchLabels": {"app": sel}}} if sel else {}),
                     **({"action": action} if action else {}), "rules": rs}},
        st.sampled_from(["ap1"]), ns_, st.sampled_from([None, *APPS]),
        st.sampled_from([None, "DENY", "CUSTOM"]), rules)

    modes = st.sampled_from([None, "UNSET", "STRICT", "PERMISSIVE", "DISABLE", "BOGUS"])
    peer_auths = st.builds(
        lambda name, ns, sel, mode, ports, created: {
            "metadata": meta(name, ns, created=created),
            "spec": {**({"selector": {"matchLabels": {"app": sel}}} if sel else {}),
                     **({"mtls": {"mode": mode}} if mode else {}),
                     **({"portLevelMtls": ports} if ports else {})}},
        st.sampled_from(["pa1", "pa2"]), ns_, st.sampled_from([None, *APPS]), modes,
        st.dictionaries(st.sampled_from([8080, 9090]),
                        st.builds(lambda m: {"mode": m},
                                  st.sampled_from(["STRICT", "PERMISSIVE", "DISABLE"])),
                        max_size=2),
        st.sampled_from(TIMES))

    KINDS: list[tuple[Kind, st.SearchStrategy[dict[str, Any]]]] = [
        (NAMESPACE, namespaces), (NODE, nodes), (POD, pods), (SERVICE, services),
        (SERVICE_ENTRY, service_entries), (WORKLOAD_ENTRY, workload_entries),
        (ENDPOINT_SLICE, slices), (AUTHORIZATION_POLICY, authz), (PEER_AUTHENTICATION, peer_auths)]

    puts = st.one_of(*[st.tuples(st.just("put"), st.just(k), objs) for k, objs in KINDS])
    deletes = st.tuples(st.just("delete"), st.sampled_from([k for k, _ in KINDS]),
                        st.tuples(ns_, st.sampled_from(
                            ["a", "istio-system", "n1", "p1", "s1", "e1", "w1", "es1", "ap1", "pa1",
                             "pa2"])))
    return st.one_of(puts, puts, puts, deletes)



def apply(store: ObjectStore, op: tuple[Any, ...]) -> None:
    if op[0] == "put":
        store.put(op[1], op[2])
    else:
        kind, (ns, name) = op[1], op[2]
        store.delete(kind, ns if kind.namespaced else "", name)


def replay(start: MeshState, delta: Delta) -> tuple[dict[str, Any], ...]:
    out = []
    for table, changed, removed in ((start.workloads, delta.workloads,
                                     delta.removed_workloads),
                                    (start.services, delta.services, delta.removed_services),
                                    (start.policies, delta.policies, delta.removed_policies)):
        t = dict(table)
        for k in removed:
            t.pop(k, None)
        t.update(changed)
        out.append(t)
    return tuple(out)


def check(initial: list[Any], changes: list[Any]) -> MeshState:
    """Apply `initial`, start an index, apply `changes` one by one: after each the index equals
    a full conversion and the delta it reported turns the previous state into the new one."""
    store = ObjectStore()
    for op in initial:
        apply(store, op)
    index = Index(store)
    start = index.state()
    assert start == build(store)
    index.take()
    heard: list[Delta] = []
    index.subscribe(heard.append)
    for op in changes:
        before = index.state()
        apply(store, op)
        now = index.state()
        assert now == build(store), op
        if heard:  # each reported delta turns the previous state into the new one
            assert replay(before, heard[-1]) == (now.workloads, now.services, now.policies)
            heard.clear()
        else:
            assert (before.workloads, before.services, before.policies) == \
                (now.workloads, now.services, now.policies), op
    end = index.state()
    assert replay(start, index.take()) == (end.workloads, end.services, end.policies)
    return end


def note(end: MeshState) -> None:
    """What the drawn scenarios reach (pytest --hypothesis-show-statistics)."""
    ws = end.workloads.values()
    for what, seen in (("a workload", bool(ws)),
                       ("a workload joins a service", any(w.services for w in ws)),
                       ("a workload lists a policy", any(w.authorization_policies for w in ws)),
                       ("a workload has a locality", any(any(w.locality) for w in ws)),
                       ("a converted PeerAuthentication", any(
                           "converted_peer" in k for k in end.policies)),
                       ("an error", bool(end.errors))):
        if seen:
            event(what)


# Three namespaces (the root one too): changes in one namespace must not leak into another.
WIDE = operations(st.sampled_from(["a", "a", "a", "istio-system", "b"]))
# One namespace and the root: nearly every change meets the objects it can affect.
DENSE = operations(st.sampled_from(["a", "a", "a", "a", "istio-system"]))


@settings(max_examples=300, deadline=None)
@given(initial=st.lists(WIDE, min_size=5, max_size=40),
       changes=st.lists(WIDE, min_size=1, max_size=40))
def test_incremental_equals_full_rebuild(initial: list[Any], changes: list[Any]) -> None:
    note(check(initial, changes))


@settings(max_examples=300, deadline=None)
@given(initial=st.lists(DENSE, min_size=5, max_size=40),
       changes=st.lists(DENSE, min_size=1, max_size=40))
def test_incremental_equals_full_rebuild_dense(initial: list[Any],
                                               changes: list[Any]) -> None:
    note(check(initial, changes))


def test_the_universe_exercises_the_interesting_joins() -> None:
    """A guard against a property test that never sees a service join a pod or a converted
    PeerAuthentication: one fixed scenario drawn from the same universe."""
    store = ObjectStore()
    index = Index(store)
    store.put(NAMESPACE, {"metadata": meta("a", None, {"istio.io/dataplane-mode": "ambient"})})
    store.put(POD, {"metadata": meta("p1", "a", {"app": "x"}, uid="u1"),
                    "spec": {"nodeName": "n1", "containers": [
                        {"ports": [{"name": "http", "containerPort": 9090}]}]},
                    "status": {"podIP": "10.0.0.1", "conditions": [
                        {"type": "Ready", "status": "True"}]}})
    store.put(SERVICE, {"metadata": meta("s1", "a"), "spec": {
        "selector": {"app": "x"}, "ports": [{"name": "http", "port": 80,
                                             "targetPort": "http"}]}})
    store.put(PEER_AUTHENTICATION, {"metadata": meta("pa1", "a"), "spec": {
        "selector": {"matchLabels": {"app": "x"}}, "mtls": {"mode": "PERMISSIVE"},
        "portLevelMtls": {9090: {"mode": "STRICT"}}}})
    w = index.workloads["Kubernetes//Pod/a/p1"]
    assert w.services[0][0] == "a/s1.a.svc.cluster.local"
    assert w.services[0][1][0].target_port == 9090
    assert w.authorization_policies == ("a/converted_peer_authentication_pa1",)
    assert "a/converted_peer_authentication_pa1" in index.policies
    assert key_of(store.get(POD, "a", "p1") or {}) == ("a", "p1")
    assert index.state() == build(store)
