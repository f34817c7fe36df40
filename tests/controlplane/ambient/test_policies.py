"""AuthorizationPolicy -> Policy.

Facts from istio/istio pilot/pkg/serviceregistry/ambient/authorization_test.go
(TestConvertAuthorizationPolicyStatus), its testdata allow-full / allow-groups / deny-groups
(ztunnel's view of every AuthorizationPolicy field) and ambientindex_test.go
(TestAmbientIndex_Policy: scopes, targetRef policies not sent). Inputs and expected records
are written here, in our model.
"""

from __future__ import annotations

import ipaddress
from typing import Any

import pytest
from structlog.testing import capture_logs

from controlplane.ambient import Options
from controlplane.ambient.index import Index
from controlplane.ambient.policies import pattern
from controlplane.kube.objects import AUTHORIZATION_POLICY, POD
from core.mesh.model import (
    Group,
    Match,
    Policy,
    PolicyAction,
    PolicyScope,
    Rule,
    ServiceAccountMatch,
    StringKind,
    StringMatch,
)
from tests.controlplane.ambient.kube import authorization_policy, convert, store_of

ALLOW, DENY = PolicyAction.ALLOW, PolicyAction.DENY
P, S, X, E = (StringKind.PRESENCE, StringKind.SUFFIX, StringKind.PREFIX, StringKind.EXACT)


def sm(*texts: str) -> tuple[StringMatch, ...]:
    return tuple(pattern(t) for t in texts)


def nets(*texts: str) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
    return tuple(ipaddress.ip_network(t, strict=False) for t in texts)


def g(*rules: tuple[Match, ...]) -> Group:
    return Group(tuple(Rule(ms) for ms in rules))


def one_policy(obj: dict[str, Any], options: Options | None = None) -> Policy | None:
    state = convert(obj, options=options)
    assert not state.errors, state.errors
    ns, name = obj["metadata"]["namespace"], obj["metadata"]["name"]
    return state.policies.get(f"{ns}/{name}")


def test_patterns() -> None:
    assert pattern("*") == StringMatch(P)
    assert pattern("*-suffix") == StringMatch(S, "-suffix")
    assert pattern("prefix-*") == StringMatch(X, "prefix-")
    assert pattern("exact") == StringMatch(E, "exact")
    assert pattern("*mid*") == StringMatch(S, "mid*")  # istiod tests the leading * first


FULL_RULES: list[dict[str, Any]] = [
    {"from": [{"source": {
        "principals": ["principal", "principal-prefix-*", "*-suffix-principal", "*"],
        "notPrincipals": ["not-principal", "not-principal-prefix-*",
                          "*-suffix-not-principal", "*"]}}]},
    {"from": [{"source": {"serviceAccounts": ["ns/sa", "sa-only"],
                          "notServiceAccounts": ["ns/sa-not", "sa-not-only"]}}]},
    {"from": [{"source": {"requestPrincipals": ["rp"], "notRequestPrincipals": ["nrp"]}}]},
    {"from": [{"source": {"namespaces": ["ns", "ns-prefix-*", "*-ns-suffix", "*"],
                          "notNamespaces": ["not-ns", "not-ns-prefix-*", "*-not-ns-suffix",
                                            "*"]}}]},
    {"from": [{"source": {"ipBlocks": ["1.2.3.4", "5.6.0.0/16"],
                          "notIpBlocks": ["2.2.3.4", "6.6.0.0/16"]}}]},
    {"from": [{"source": {"remoteIpBlocks": ["1.2.3.4"], "notRemoteIpBlocks": ["2.2.3.4"]}}]},
    {"to": [{"operation": {"methods": ["GET"], "notMethods": ["POST"]}}]},
    {"to": [{"operation": {"hosts": ["exact.com"], "notHosts": ["*.not.com"]}}]},
    {"to": [{"operation": {"ports": ["80", "90"], "notPorts": ["800", "900"]}}]},
    {"to": [{"operation": {"paths": ["/exact"], "notPaths": ["/not"]}}]},
    {"when": [{"key": "request.headers[X-header]", "values": ["header"]}]},
    {"when": [{"key": "source.ip", "values": ["10.10.10.10", "192.168.10.0/24"],
               "notValues": ["90.10.10.10", "90.168.10.0/24"]}]},
    {"when": [{"key": "remote.ip", "values": ["10.10.10.10"]}]},
    {"when": [{"key": "source.namespace", "values": ["ns", "ns-prefix-*"],
               "notValues": ["not-ns", "*"]}]},
    {"when": [{"key": "source.principal", "values": ["principal", "*"],
               "notValues": ["not-principal"]}]},
    {"when": [{"key": "request.auth.principal", "values": ["rp"]}]},
    {"when": [{"key": "request.auth.claims[iss]", "values": ["iss"]}]},
    {"when": [{"key": "destination.ip", "values": ["10.10.10.10", "192.168.10.0/24"],
               "notValues": ["90.10.10.10", "90.168.10.0/24"]}]},
    {"when": [{"key": "destination.port", "values": ["91", "92"],
               "notValues": ["9001", "9002"]}]},
    {"when": [{"key": "connection.sni", "values": ["exact.com"]}]},
    {"when": [{"key": "experimental.envoy.filters.a.b[c]", "values": ["exact"]}]},
]


def test_allow_full() -> None:
    """Every field: the rules with HTTP-only attributes are dropped from an ALLOW policy; the
    others become one Group each (allow-full.yaml)."""
    pol = one_policy(authorization_policy("allow", "cfg", action="ALLOW", rules=FULL_RULES))
    assert pol == Policy(name="allow", namespace="cfg", scope=PolicyScope.NAMESPACE,
                         action=ALLOW, groups=(
        g((Match(principals=sm("principal", "principal-prefix-*", "*-suffix-principal", "*"),
                 not_principals=sm("not-principal", "not-principal-prefix-*",
                                   "*-suffix-not-principal", "*")),)),
        g((Match(service_accounts=(ServiceAccountMatch("ns", "sa"),
                                   ServiceAccountMatch("cfg", "sa-only")),
                 not_service_accounts=(ServiceAccountMatch("ns", "sa-not"),
                                       ServiceAccountMatch("cfg", "sa-not-only"))),)),
        g((Match(namespaces=sm("ns", "ns-prefix-*", "*-ns-suffix", "*"),
                 not_namespaces=sm("not-ns", "not-ns-prefix-*", "*-not-ns-suffix", "*")),)),
        g((Match(source_ips=nets("1.2.3.4", "5.6.0.0/16"),
                 not_source_ips=nets("2.2.3.4", "6.6.0.0/16")),)),
        g((Match(destination_ports=(80, 90), not_destination_ports=(800, 900)),)),
        g((Match(source_ips=nets("10.10.10.10", "192.168.10.0/24"),
                 not_source_ips=nets("90.10.10.10", "90.168.10.0/24")),)),
        g((Match(namespaces=sm("ns", "ns-prefix-*"), not_namespaces=sm("not-ns", "*")),)),
        g((Match(principals=sm("principal", "*"), not_principals=sm("not-principal")),)),
        g((Match(destination_ips=nets("10.10.10.10", "192.168.10.0/24"),
                 not_destination_ips=nets("90.10.10.10", "90.168.10.0/24")),)),
        g((Match(destination_ports=(91, 92), not_destination_ports=(9001, 9002)),)),
    ))


GROUP_RULES: list[dict[str, Any]] = [
    # L4 and L7 mixed in `from`
    {"from": [{"source": {"principals": ["from-mix-principal"],
                          "requestPrincipals": ["from-mix-requestPrincipals"],
                          "namespaces": ["from-mix-ns"]}}],
     "to": [{"operation": {"ports": ["80"]}}]},
    # L4 and L7 mixed in `to`
    {"from": [{"source": {"principals": ["to-mix-principal"], "namespaces": ["to-mix-ns"]}}],
     "to": [{"operation": {"ports": ["80"], "methods": ["to-mix-method"]}}]},
    # only L4
    {"from": [{"source": {"principals": ["only-l4-principals"],
                          "namespaces": ["only-l4-ns"]}}],
     "to": [{"operation": {"ports": ["80"]}}]},
    # only L7
    {"from": [{"source": {"requestPrincipals": ["l7-principal"]}}],
     "to": [{"operation": {"paths": ["/l7-foo"], "methods": ["l7-method"]}}]},
    # L4 and L7 `when`
    {"when": [{"key": "source.namespace", "values": ["when-l4-l7-ns"]},
              {"key": "connection.sni", "values": ["when-l4-l7-sni"]}]},
    # only L4 `when`
    {"when": [{"key": "source.namespace", "values": ["when-l4-ns"]},
              {"key": "source.ip", "values": ["10.10.10.10"]}]},
    # only L7 `when`
    {"when": [{"key": "connection.sni", "values": ["when-l7-sni"]},
              {"key": "request.headers[X-header]", "values": ["when-l7-header"]}]},
]
PORT80 = (Match(destination_ports=(80,)),)


def test_allow_groups() -> None:
    """ALLOW: a rule with any HTTP attribute is dropped whole (allow-groups.yaml)."""
    pol = one_policy(authorization_policy("groups", "ns", rules=GROUP_RULES))
    assert pol is not None
    assert pol.action == ALLOW and pol.scope == PolicyScope.NAMESPACE
    assert pol.groups == (
        g(PORT80, (Match(principals=sm("only-l4-principals"), namespaces=sm("only-l4-ns")),)),
        g((Match(namespaces=sm("when-l4-ns")),), (Match(source_ips=nets("10.10.10.10")),)),
    )


def test_deny_groups() -> None:
    """DENY: only the HTTP attributes are dropped (it denies more); a Match left empty stays
    and matches nothing, so a rule whose only condition was HTTP has no effect
    (deny-groups.yaml)."""
    rules = [dict(r) for r in GROUP_RULES]
    rules[5] = {"when": [{"key": "source.namespace", "values": ["when-l4-ns"]},
                         {"key": "source.ip", "values": ["10.10.10.10"],
                          "notValues": ["20.20.20.20"]}]}
    pol = one_policy(authorization_policy("groups-deny", "ns", action="DENY", rules=rules))
    assert pol is not None
    empty = (Match(),)
    assert pol.groups == (
        g(PORT80, (Match(principals=sm("from-mix-principal"), namespaces=sm("from-mix-ns")),)),
        g(PORT80, (Match(principals=sm("to-mix-principal"), namespaces=sm("to-mix-ns")),)),
        g(PORT80, (Match(principals=sm("only-l4-principals"), namespaces=sm("only-l4-ns")),)),
        g(empty, empty),
        g((Match(namespaces=sm("when-l4-l7-ns")),), empty),
        g((Match(namespaces=sm("when-l4-ns")),),
          (Match(source_ips=nets("10.10.10.10"), not_source_ips=nets("20.20.20.20")),)),
        g(empty, empty),
    )


def test_http_attributes_are_reported() -> None:
    state = convert(authorization_policy("groups", "ns", rules=GROUP_RULES))
    assert len(state.warnings) == 1
    w = state.warnings[0]
    assert w.startswith("AuthorizationPolicy ns/groups: the node proxy does not support HTTP "
                        "attributes (found: connection.sni, methods, paths, "
                        "request.headers[X-header], requestPrincipals)")
    assert "rules matching HTTP attributes are omitted" in w


def test_http_attributes_are_logged_once_when_they_appear() -> None:
    """The operator who applied the policy learns it at once, in the log; converting the
    same object again does not repeat it."""
    store = store_of()
    with capture_logs() as logs:
        index = Index(store, watch=True)
        store.put(AUTHORIZATION_POLICY, authorization_policy("groups", "ns", rules=GROUP_RULES))
        store.put(POD, {"apiVersion": "v1", "kind": "Pod",
                        "metadata": {"name": "p", "namespace": "ns"}})
    warned = [e for e in logs if e["event"] == "object_converted_with_warning"]
    assert [e["detail"] for e in warned] == list(index.warnings)
    assert warned[0]["detail"].startswith("AuthorizationPolicy ns/groups: ")


@pytest.mark.parametrize("ns,spec,want", [
    ("istio-system", {}, PolicyScope.GLOBAL),
    ("ns", {}, PolicyScope.NAMESPACE),
    ("ns", {"selector": {"matchLabels": {"app": "a"}}}, PolicyScope.WORKLOAD_SELECTOR),
    ("istio-system", {"selector": {"matchLabels": {"app": "a"}}},
     PolicyScope.WORKLOAD_SELECTOR),
])
def test_scope(ns: str, spec: dict[str, Any], want: PolicyScope) -> None:
    pol = one_policy(authorization_policy("p", ns, **spec))
    assert pol is not None and pol.scope == want


def test_root_namespace_is_configurable() -> None:
    pol = one_policy(authorization_policy("p", "mesh-root"), Options(root_namespace="mesh-root"))
    assert pol is not None and pol.scope == PolicyScope.GLOBAL


def test_no_rules_allows_nothing_and_an_empty_rule_everything() -> None:
    nothing = one_policy(authorization_policy("p", "ns"))
    assert nothing is not None and nothing.groups == ()
    everything = one_policy(authorization_policy("p", "ns", rules=[{}]))
    assert everything is not None and everything.groups == (Group(()),)


@pytest.mark.parametrize("obj,warning", [
    (authorization_policy("p", "ns", action="CUSTOM", provider={"name": "ext"}),
     "does not support the CUSTOM action"),
    (authorization_policy("p", "ns", action="AUDIT"), "does not support the AUDIT action"),
    (authorization_policy("p", "ns", targetRefs=[{"kind": "Gateway", "name": "waypoint"}]),
     None),
    (authorization_policy("p", "ns", targetRef={"kind": "Service", "name": "svc"}), None),
])
def test_not_converted(obj: dict[str, Any], warning: str | None) -> None:
    state = convert(obj)
    assert state.policies == {} and not state.errors
    if warning is None:
        assert state.warnings == ()
    else:
        assert len(state.warnings) == 1 and warning in state.warnings[0]


def test_dry_run() -> None:
    obj = authorization_policy("p", "ns", annotations={"istio.io/dry-run": "true"},
                               action="DENY", rules=[{}])
    pol = one_policy(obj)
    assert pol is not None and pol.dry_run
    state = convert(obj, options=Options(dry_run_policies=False))  # istiod's default
    assert state.policies == {} and "dry-run" in state.warnings[0]


@pytest.mark.parametrize("spec,error", [
    ({"action": "REJECT"}, "spec.action: 'REJECT' is not ALLOW, DENY, AUDIT or CUSTOM"),
    ({"rules": {"from": []}}, "spec.rules: want a list, got a mapping"),
    ({"selector": {"matchLabels": {"app": 1}}}, "spec.selector.matchLabels.app: want a "
                                                "string, got an integer"),
])
def test_malformed(spec: dict[str, Any], error: str) -> None:
    """A malformed policy (a wrong type, an unknown action) is skipped, named with the field
    and why; its neighbours are not."""
    state = convert(authorization_policy("bad", "ns", **spec),
                    authorization_policy("good", "ns", rules=[{}]))
    assert state.errors == (f"AuthorizationPolicy ns/bad: {error}",)
    assert set(state.policies) == {"ns/good"}


ANY = nets("0.0.0.0/0", "::/0")
BAD_VALUES = [
    # (the rule, the error, the DENY rule's Rules as served)
    ({"to": [{"operation": {"ports": ["eighty"]}}]},
     "spec.rules[0].to[0].operation.ports[0]: 'eighty' is not a port number",
     (Rule((Match(source_ips=ANY),)),)),
    ({"to": [{"operation": {"ports": ["70000", "8080"]}}]},
     "spec.rules[0].to[0].operation.ports[0]: 70000 is out of range 1-65535",
     (Rule((Match(source_ips=ANY),)),)),
    ({"from": [{"source": {"ipBlocks": ["10.0.0.0/33"], "principals": ["cluster.local/*"]}}]},
     "spec.rules[0].from[0].source.ipBlocks[0]: '10.0.0.0/33' is not an IP address or CIDR",
     (Rule((Match(principals=sm("cluster.local/*")),)),)),
    ({"from": [{"source": {"notIpBlocks": ["10.1.0.0/16", "nope"]}}]},
     "spec.rules[0].from[0].source.notIpBlocks[1]: 'nope' is not an IP address or CIDR",
     (Rule((Match(not_source_ips=nets("10.1.0.0/16")),)),)),
    ({"when": [{"key": "destination.ip", "values": ["nope"]}]},
     "spec.rules[0].when[0].values[0]: 'nope' is not an IP address or CIDR",
     (Rule((Match(source_ips=ANY),)),)),
]


@pytest.mark.parametrize("rule,error,deny_rules", BAD_VALUES)
def test_bad_value_never_makes_a_policy_less_restrictive(
        rule: dict[str, Any], error: str, deny_rules: tuple[Rule, ...]) -> None:
    """A value that does not convert is named as an error, and the policy is still served:
    an ALLOW policy without that rule (it allows nothing: the workload stays under an ALLOW
    policy), a DENY policy reading it as any value (it denies more; a `not` field only
    loses the value). Skipping the policy, or dropping the value as istiod does, would turn
    a DENY with a typo into one that denies nothing."""
    allow = convert(authorization_policy("p", "ns", selector={"matchLabels": {"app": "a"}},
                                         rules=[rule, {}]))
    assert allow.errors == (f"AuthorizationPolicy ns/p: {error}; the rule is omitted "
                            "(it allows nothing)",)
    assert allow.policies["ns/p"].groups == (Group(()),)  # only the valid rule `{}` is left
    deny = convert(authorization_policy("p", "ns", action="DENY", rules=[rule]))
    assert deny.errors == (f"AuthorizationPolicy ns/p: {error}; read as any value (the rule "
                           "denies more)",)
    assert deny.policies["ns/p"].groups == (Group(deny_rules),)
