"""PeerAuthentication -> the static STRICT policy and the converted per-workload DENY policies.

Facts from istio/istio pilot/pkg/serviceregistry/ambient/testdata/peer-authn-*.yaml (the
converted policy for each combination of mesh, namespace and workload modes and port-level
modes, as TestRBACConvert checks them), ambientindex_test.go (TestAmbientIndex_Policy and
TestAmbientIndex_PeerAuthenticationNamespacePolicyChange: which keys a workload lists as the
policies change) and architecture/ambient/peer-authentication.md. The last tests run the
result through the node proxy's authorization (proxy/authz.py) to show what it enforces on
plaintext inbound.
"""

from __future__ import annotations

import ipaddress
from typing import Any

import pytest

from controlplane.ambient import Index
from controlplane.kube.objects import AUTHORIZATION_POLICY, PEER_AUTHENTICATION
from core.mesh.model import (
    Group,
    Match,
    Policy,
    PolicyAction,
    PolicyScope,
    Rule,
    StringKind,
    StringMatch,
)
from core.spiffe import SpiffeId
from proxy import authz
from tests.controlplane.ambient.kube import (
    authorization_policy,
    convert,
    peer_authentication,
    pod,
    put,
    store_of,
)

NO_ID = (StringMatch(StringKind.PRESENCE),)
DENY_NO_ID = Match(not_principals=NO_ID)
STATIC = "istio-system/istio_converted_static_strict"
A = {"app": "a"}
T1, T2, T3 = "2024-01-01T00:00:00Z", "2024-01-02T00:00:00Z", "2024-01-03T00:00:00Z"


def strict_port(port: int) -> Group:
    return Group((Rule((Match(not_principals=NO_ID, destination_ports=(port,)),)),))


def rules(*matches: Match) -> Group:
    return Group(tuple(Rule((m,)) for m in matches))


def except_port(port: int) -> Match:
    return Match(not_destination_ports=(port,))


def root(mode: str) -> dict[str, Any]:
    return peer_authentication("default-mesh", "istio-system", mode=mode, created=T1)


def nsp(mode: str) -> dict[str, Any]:
    return peer_authentication("default-foo", "foo", mode=mode, created=T1)


def workload(mode: str | None, ports: dict[int, str] | None = None) -> dict[str, Any]:
    return peer_authentication("workload", "foo", selector=A, mode=mode, ports=ports,
                               created=T2)


# (name, PeerAuthentications, the groups of foo/converted_peer_authentication_workload or None)
CASES: list[tuple[str, list[dict[str, Any]], tuple[Group, ...] | None]] = [
    ("disable (namespace-wide)", [nsp("DISABLE")], None),
    ("permissive (namespace-wide)", [nsp("PERMISSIVE")], None),
    ("strict (namespace-wide)", [nsp("STRICT")], None),
    ("strict workload, no ports", [workload("STRICT")], None),
    ("disable, port strict", [workload("DISABLE", {9090: "STRICT"})], (strict_port(9090),)),
    ("permissive, port strict", [workload("PERMISSIVE", {9090: "STRICT"})],
     (strict_port(9090),)),
    ("permissive, ports strict and permissive",
     [workload("PERMISSIVE", {9090: "STRICT", 8080: "PERMISSIVE"})], (strict_port(9090),)),
    ("strict, port disable", [workload("STRICT", {9090: "DISABLE"})],
     (rules(DENY_NO_ID, except_port(9090)),)),
    ("strict, port permissive", [workload("STRICT", {9090: "PERMISSIVE"})],
     (rules(DENY_NO_ID, except_port(9090)),)),
    ("strict, port strict", [workload("STRICT", {8080: "STRICT"})], None),
    ("strict, ports strict and permissive",
     [workload("STRICT", {9090: "STRICT", 8080: "PERMISSIVE"})],
     (rules(DENY_NO_ID, except_port(8080)),)),
    ("unset, port strict", [workload("UNSET", {8080: "STRICT"})], (strict_port(8080),)),
    ("mesh permissive, namespace permissive, workload ports strict",
     [root("PERMISSIVE"), nsp("PERMISSIVE"), workload(None, {9090: "STRICT", 8080: "STRICT"})],
     (strict_port(8080), strict_port(9090))),
    ("mesh permissive, workload port permissive",
     [root("PERMISSIVE"), workload(None, {9090: "PERMISSIVE"})], None),
    ("mesh permissive, namespace strict, workload port permissive",
     [root("PERMISSIVE"), nsp("STRICT"), workload(None, {9090: "PERMISSIVE"})],
     (rules(except_port(9090), DENY_NO_ID),)),
    ("mesh permissive, namespace unset, workload ports mixed",
     [root("PERMISSIVE"), nsp("UNSET"), workload(None, {9090: "STRICT", 8080: "PERMISSIVE"})],
     (strict_port(9090),)),
    ("mesh strict, namespace permissive, workload port strict",
     [root("STRICT"), nsp("PERMISSIVE"), workload(None, {9090: "STRICT"})],
     (strict_port(9090),)),
    ("mesh strict, workload port permissive",
     [root("STRICT"), workload(None, {9090: "PERMISSIVE"})],
     (rules(except_port(9090), DENY_NO_ID),)),
    ("mesh strict, workload ports permissive and strict",
     [root("STRICT"), workload(None, {9090: "PERMISSIVE", 8080: "STRICT"})],
     (rules(except_port(9090), DENY_NO_ID),)),
    # The two places where we take istiod's commented intent over its code (peerauth.py):
    ("mesh strict, permissive workload, port strict (istiod: no policy)",
     [root("STRICT"), workload("PERMISSIVE", {9090: "STRICT"})], (strict_port(9090),)),
    ("mesh strict, namespace unset, workload port permissive (istiod: no policy)",
     [root("STRICT"), nsp("UNSET"), workload(None, {9090: "PERMISSIVE"})],
     (rules(except_port(9090), DENY_NO_ID),)),
]


@pytest.mark.parametrize("pas,groups", [(p, g) for _, p, g in CASES],
                         ids=[c[0] for c in CASES])
def test_converted_policy(pas: list[dict[str, Any]], groups: tuple[Group, ...] | None) -> None:
    for pa in pas:
        pa["metadata"].setdefault("namespace", "foo")
    state = convert(*pas)
    assert not state.errors
    converted = {k: p for k, p in state.policies.items() if k != STATIC}
    assert STATIC in state.policies  # served while any PeerAuthentication exists
    if groups is None:
        assert converted == {}
    else:
        assert converted == {"foo/converted_peer_authentication_workload": Policy(
            name="converted_peer_authentication_workload", namespace="foo",
            scope=PolicyScope.WORKLOAD_SELECTOR, action=PolicyAction.DENY, groups=groups)}


def test_static_strict_policy() -> None:
    assert convert().policies == {}
    state = convert(peer_authentication("any", "ns", mode="PERMISSIVE"))
    assert state.policies == {STATIC: Policy(
        name="istio_converted_static_strict", namespace="istio-system",
        scope=PolicyScope.WORKLOAD_SELECTOR, action=PolicyAction.DENY,
        groups=(Group((Rule((DENY_NO_ID,)),)),))}


def keys(index: Index, name: str = "pod1") -> tuple[str, ...]:
    return index.workloads[f"Kubernetes//Pod/ns1/{name}"].authorization_policies


def test_workload_keys_follow_the_policies() -> None:
    """istiod's TestAmbientIndex_Policy, step by step."""
    store = store_of(pod("pod1", "ns1", labels=A))
    index = Index(store)
    sel = "ns1/converted_peer_authentication_selector"

    def pa(name: str, ns: str, selector: dict[str, str] | None, mode: str | None,
           ports: dict[int, str] | None = None) -> None:
        put(store, peer_authentication(name, ns, selector=selector, mode=mode, ports=ports))

    pa("global", "istio-system", None, "PERMISSIVE")
    assert STATIC in index.policies and keys(index) == ()
    pa("namespace", "ns1", None, "STRICT")
    assert keys(index) == (STATIC,)
    pa("selector", "ns1", A, "STRICT")
    assert keys(index) == (STATIC,)
    pa("selector", "ns1", A, "PERMISSIVE")
    assert keys(index) == ()
    pa("selector", "ns1", A, "PERMISSIVE", {9090: "STRICT"})
    assert keys(index) == (sel,) and sel in index.policies
    put(store, pod("pod2", "ns1", ip="1.2.3.5", labels={"app": "not-a"}))
    assert keys(index, "pod2") == (STATIC,)
    put(store, pod("pod2", "ns1", ip="1.2.3.5", labels=A))
    assert keys(index, "pod2") == (sel,)
    pa("global-selector", "istio-system", A, "STRICT")  # mesh-wide selectors do nothing
    assert keys(index) == (sel,)
    store.delete(PEER_AUTHENTICATION, "istio-system", "global-selector")
    pa("selector", "ns1", A, "PERMISSIVE", {9090: "PERMISSIVE"})
    assert keys(index) == () and keys(index, "pod2") == () and sel not in index.policies
    pa("namespace", "ns1", None, "PERMISSIVE")
    assert keys(index) == ()
    pa("selector", "ns1", A, "STRICT")
    assert keys(index) == (STATIC,)
    pa("selector", "ns1", A, "STRICT", {9090: "PERMISSIVE"})
    assert keys(index) == (sel,)
    pa("selector", "ns1", A, None, {9090: "STRICT"})  # under a permissive namespace
    assert keys(index) == (sel,)
    pa("namespace", "ns1", None, "STRICT")
    assert keys(index) == (STATIC,)
    pa("selector", "ns1", A, None, {9090: "PERMISSIVE"})  # the STRICT part is inline
    assert keys(index) == (sel,)
    store.delete(PEER_AUTHENTICATION, "ns1", "selector")
    assert keys(index) == (STATIC,)
    store.delete(PEER_AUTHENTICATION, "ns1", "namespace")
    store.delete(PEER_AUTHENTICATION, "istio-system", "global")
    assert keys(index) == () and index.policies == {}

    # With AuthorizationPolicies: selector ones first (sorted), then the converted ones.
    put(store, authorization_policy("selector", "ns1", selector={"matchLabels": A}))
    assert keys(index) == ("ns1/selector",)
    pa("strict", "istio-system", None, "STRICT")
    assert keys(index) == ("ns1/selector", STATIC)
    pa("selector-strict", "ns1", A, "PERMISSIVE")
    assert keys(index) == ("ns1/selector",)
    pa("selector-strict", "ns1", A, "STRICT", {9090: "PERMISSIVE"})
    assert keys(index) == ("ns1/selector", "ns1/converted_peer_authentication_selector-strict")
    store.delete(AUTHORIZATION_POLICY, "ns1", "selector")
    store.delete(PEER_AUTHENTICATION, "ns1", "selector-strict")
    assert keys(index) == (STATIC,)


def test_namespace_relaxed_removes_the_exception() -> None:
    """TestAmbientIndex_PeerAuthenticationNamespacePolicyChange."""
    store = store_of(pod("pod1", "ns1", labels=A),
                     peer_authentication("namespace", "ns1", mode="STRICT"),
                     peer_authentication("selector", "ns1", selector=A, ports={9090: "PERMISSIVE"}))
    index = Index(store)
    sel = "ns1/converted_peer_authentication_selector"
    assert keys(index) == (sel,) and sel in index.policies
    put(store, peer_authentication("namespace", "ns1", mode="PERMISSIVE"))
    assert keys(index) == () and sel not in index.policies


def test_oldest_policy_of_a_level_wins() -> None:
    state = convert(pod("pod1", "ns1"),
                    peer_authentication("newer", "ns1", mode="PERMISSIVE", created=T3),
                    peer_authentication("older", "ns1", mode="STRICT", created=T1))
    assert state.workloads["Kubernetes//Pod/ns1/pod1"].authorization_policies == (STATIC,)


def test_malformed() -> None:
    state = convert(pod("pod1", "ns1"),
                    peer_authentication("bad", "ns1", mode="MAYBE"),
                    peer_authentication("bad-port", "ns1", selector=A, ports={0: "STRICT"}))
    assert state.errors == (
        "PeerAuthentication ns1/bad-port: spec.portLevelMtls.0: 0 is out of range 1-65535",
        "PeerAuthentication ns1/bad: spec.mtls.mode: 'MAYBE' is not one of "
        "UNSET, DISABLE, PERMISSIVE, STRICT")
    assert state.policies == {}


# ---- what the node proxy enforces with them -------------------------------------------------

POD_IP = ipaddress.ip_address("10.0.0.1")
PEER = SpiffeId("cluster.local", "other", "client")


def decide(pas: list[dict[str, Any]], port: int, identity: SpiffeId | None) -> bool:
    state = convert(pod("pod1", "ns1", ip=str(POD_IP), labels=A), *pas)
    w = state.workloads["Kubernetes//Pod/ns1/pod1"]
    conn = authz.Connection(identity, ipaddress.ip_address("10.9.9.9"), POD_IP, port)
    return authz.evaluate(state.policies.values(),
                          authz.Workload(w.namespace, w.authorization_policies), conn).allowed


@pytest.mark.parametrize("pas,allowed", [
    ([], {8080: True, 9090: True}),
    ([peer_authentication("m", "istio-system", mode="STRICT")], {8080: False, 9090: False}),
    ([peer_authentication("m", "istio-system", mode="PERMISSIVE")], {8080: True, 9090: True}),
    ([peer_authentication("n", "ns1", mode="STRICT"),
      peer_authentication("w", "ns1", selector=A, ports={9090: "PERMISSIVE"})],
     {8080: False, 9090: True}),
    ([peer_authentication("w", "ns1", selector=A, mode="STRICT", ports={9090: "DISABLE"})],
     {8080: False, 9090: True}),
    ([peer_authentication("w", "ns1", selector=A, mode="PERMISSIVE", ports={9090: "STRICT"})],
     {8080: True, 9090: False}),
    ([peer_authentication("m", "istio-system", mode="STRICT"),
      peer_authentication("w", "ns1", selector=A, mode="PERMISSIVE", ports={9090: "STRICT"})],
     {8080: True, 9090: False}),
], ids=["none", "mesh-strict", "mesh-permissive", "ns-strict-port-permissive",
        "strict-port-disable", "permissive-port-strict", "mesh-strict-permissive-port-strict"])
def test_enforced_on_plaintext(pas: list[dict[str, Any]], allowed: dict[int, bool]) -> None:
    """Plaintext inbound (no peer identity) is refused where the effective mode is STRICT;
    mTLS (an identity) is always let through by these policies."""
    for port, ok in allowed.items():
        assert decide(pas, port, None) is ok, port
        assert decide(pas, port, PEER) is True, port
