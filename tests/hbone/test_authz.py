"""L4 authorization: ztunnel's semantics, as examples and as properties."""

from __future__ import annotations

import ipaddress

import pytest
from hypothesis import given
from hypothesis import strategies as st

from core.mesh.model import (
    Group,
    Match,
    Policy,
    Rule,
    ServiceAccountMatch,
    StringKind,
    StringMatch,
)
from core.mesh.model import PolicyAction as Action
from core.mesh.model import PolicyScope as Scope
from core.spiffe import SpiffeId
from proxy.authz import (
    Connection,
    Workload,
    evaluate,
    match_matches,
    policy_matches,
)

SLEEP = SpiffeId("cluster.local", "default", "sleep")
WL = Workload("app", ("app/by-selector",))


def conn(ident: SpiffeId | None = SLEEP, src: str = "10.0.0.5", dst: str = "10.0.1.7",
         port: int = 8080) -> Connection:
    return Connection(ident, ipaddress.ip_address(src), ipaddress.ip_address(dst), port)


def pol(action: Action, *matches: Match, name: str = "p", ns: str = "app",
        scope: Scope = Scope.NAMESPACE, dry_run: bool = False) -> Policy:
    groups = (Group((Rule(matches),)),) if matches else ()
    return Policy(name, ns, scope, action, groups, dry_run)


def exact(s: str) -> StringMatch:
    return StringMatch(StringKind.EXACT, s)


def test_no_policies_allow() -> None:
    d = evaluate([], WL, conn())
    assert d.allowed and d.reason == "no_allow_policies"


def test_deny_wins_over_allow() -> None:
    allow = pol(Action.ALLOW, Match(namespaces=(exact("default"),)), name="allow")
    deny = pol(Action.DENY, Match(destination_ports=(8080,)), name="deny")
    d = evaluate([allow, deny], WL, conn())
    assert not d.allowed and d.policy == "app/deny"
    assert evaluate([allow, deny], WL, conn(port=9090)).policy == "app/allow"


def test_allow_must_match_once_any_applies() -> None:
    allow = pol(Action.ALLOW, Match(principals=(exact("cluster.local/ns/other/sa/x"),)))
    d = evaluate([allow], WL, conn())
    assert not d.allowed and d.reason == "not_allowed"


def test_allow_with_no_rules_denies_everything() -> None:
    assert not evaluate([pol(Action.ALLOW)], WL, conn()).allowed
    assert evaluate([pol(Action.DENY)], WL, conn()).allowed  # and a DENY with none denies nothing


def test_scope_selects_policies() -> None:
    deny_all_ports = Match(not_destination_ports=(1,))
    other_ns = pol(Action.DENY, deny_all_ports, ns="elsewhere")
    assert evaluate([other_ns], WL, conn()).allowed
    glob = pol(Action.DENY, deny_all_ports, ns="istio-system", scope=Scope.GLOBAL)
    assert not evaluate([glob], WL, conn()).allowed
    sel = pol(Action.DENY, deny_all_ports, name="by-selector", scope=Scope.WORKLOAD_SELECTOR)
    assert not evaluate([sel], WL, conn()).allowed
    assert evaluate([sel], Workload("app"), conn()).allowed  # not selected


def test_principals_compare_without_scheme() -> None:
    m = Match(principals=(exact("cluster.local/ns/default/sa/sleep"),))
    assert match_matches(m, conn())
    assert not match_matches(Match(principals=(exact(str(SLEEP)),)), conn())
    assert match_matches(Match(principals=(StringMatch(StringKind.SUFFIX, "/sa/sleep"),)),
                         conn())
    assert match_matches(Match(principals=(StringMatch(StringKind.PREFIX, "cluster.local/"),)),
                         conn())


def test_no_identity_fails_identity_fields_but_passes_their_negations() -> None:
    anon = conn(ident=None)
    assert not match_matches(Match(principals=(StringMatch(StringKind.PRESENCE),)), anon)
    assert match_matches(Match(not_principals=(StringMatch(StringKind.PRESENCE),)), anon)
    assert not match_matches(Match(service_accounts=(ServiceAccountMatch("default", "sleep"),)),
                             anon)


def test_namespace_and_service_account_fields() -> None:
    assert match_matches(Match(namespaces=(exact("default"),)), conn())
    assert not match_matches(Match(not_namespaces=(exact("default"),)), conn())
    assert match_matches(Match(service_accounts=(ServiceAccountMatch("default", "sleep"),)),
                         conn())
    assert not match_matches(Match(service_accounts=(ServiceAccountMatch("other", "sleep"),)),
                             conn())


def test_cidrs_and_v4_mapped_sources() -> None:
    m = Match(source_ips=(ipaddress.ip_network("10.0.0.0/24"),))
    assert match_matches(m, conn(src="10.0.0.5"))
    assert match_matches(m, conn(src="::ffff:10.0.0.5"))
    assert not match_matches(m, conn(src="10.0.9.5"))
    assert not match_matches(m, conn(src="fd00::5"))
    assert match_matches(Match(not_destination_ips=(ipaddress.ip_network("fd00::/8"),)), conn())


def test_fields_are_anded_values_ored() -> None:
    m = Match(namespaces=(exact("nope"), exact("default")), destination_ports=(80, 8080))
    assert match_matches(m, conn())
    assert not match_matches(m, conn(port=9090))


def test_group_structure() -> None:
    a, b = Match(destination_ports=(8080,)), Match(namespaces=(exact("nope"),))
    both_rules = Policy("p", "app", Scope.NAMESPACE, Action.DENY,
                        (Group((Rule((a,)), Rule((b,)))),))
    assert not policy_matches(both_rules, conn())  # rules AND-ed
    either_group = Policy("p", "app", Scope.NAMESPACE, Action.DENY,
                          (Group((Rule((b,)),)), Group((Rule((a,)),))))
    assert policy_matches(either_group, conn())  # groups OR-ed
    assert policy_matches(Policy("p", "app", Scope.NAMESPACE, Action.DENY,
                                 (Group((Rule(()), Rule((a,)))),)), conn())  # empty rule: match
    assert not match_matches(Match(), conn())  # an empty match matches nothing


def test_dry_run_is_reported_not_enforced() -> None:
    d = evaluate([pol(Action.DENY, Match(destination_ports=(8080,)), dry_run=True)], WL, conn())
    assert d.allowed and d.dry_run_denied == ("app/p",)


# -- properties ------------------------------------------------------------------------

idents = st.one_of(st.none(), st.builds(SpiffeId, st.just("cluster.local"),
                                        st.sampled_from(["default", "app", "x"]),
                                        st.sampled_from(["sleep", "web", "db"])))
ips = st.one_of(st.ip_addresses(v=4), st.ip_addresses(v=6))
ports = st.integers(1, 65535)
conns = st.builds(Connection, idents, ips, ips, ports)
strings = st.builds(StringMatch, st.sampled_from(list(StringKind)),
                    st.sampled_from(["", "default", "app", "cluster.local/", "/sa/web"]))
nets = st.builds(lambda ip, n: ipaddress.ip_network(f"{ip}/{min(n, ip.max_prefixlen)}",
                                                    strict=False), ips, st.integers(0, 128))
small = {"max_size": 2}
matches = st.builds(
    Match,
    namespaces=st.tuples() | st.lists(strings, **small).map(tuple),
    principals=st.tuples() | st.lists(strings, **small).map(tuple),
    not_principals=st.tuples() | st.lists(strings, **small).map(tuple),
    source_ips=st.tuples() | st.lists(nets, **small).map(tuple),
    not_destination_ips=st.tuples() | st.lists(nets, **small).map(tuple),
    destination_ports=st.tuples() | st.lists(ports, **small).map(tuple),
    not_destination_ports=st.tuples() | st.lists(ports, **small).map(tuple),
)
policies = st.builds(
    Policy, st.sampled_from(["p1", "p2", "p3"]), st.sampled_from(["app", "other"]),
    st.sampled_from(list(Scope)), st.sampled_from(list(Action)),
    st.lists(st.builds(Group, st.lists(st.builds(Rule, st.lists(matches, max_size=2)
                                                 .map(tuple)), max_size=2).map(tuple)),
             max_size=2).map(tuple),
    st.booleans())


@given(st.lists(policies, max_size=5), conns)
def test_decision_matches_the_definition(ps: list[Policy], c: Connection) -> None:
    """An independent restatement of the rule, checked on random policy sets."""
    sel = set(WL.policies)
    mine = [p for p in ps if not p.dry_run and (
        p.scope is Scope.GLOBAL or (p.scope is Scope.NAMESPACE and p.namespace == WL.namespace)
        or (p.scope is Scope.WORKLOAD_SELECTOR and p.key in sel))]
    denied = any(p.action is Action.DENY and policy_matches(p, c) for p in mine)
    allows = [p for p in mine if p.action is Action.ALLOW]
    want = not denied and (not allows or any(policy_matches(p, c) for p in allows))
    assert evaluate(ps, WL, c).allowed is want


@given(st.lists(policies, max_size=4), conns)
def test_a_matching_deny_always_wins(ps: list[Policy], c: Connection) -> None:
    deny_everything = Policy("deny", "app", Scope.NAMESPACE, Action.DENY,
                             (Group((Rule(()),)),))
    d = evaluate([*ps, deny_everything], WL, c)
    assert not d.allowed and d.reason == "denied_by_policy"


@given(st.lists(policies, max_size=4), conns)
def test_other_namespaces_policies_never_matter(ps: list[Policy], c: Connection) -> None:
    unrelated = [p for p in ps if p.scope is Scope.NAMESPACE and p.namespace != WL.namespace]
    rest = [p for p in ps if p not in unrelated]
    assert evaluate(ps, WL, c).allowed == evaluate(rest, WL, c).allowed


@given(conns, st.lists(ports, min_size=1, max_size=3), st.lists(nets, min_size=1, max_size=3))
def test_not_fields_are_complements(c: Connection, ps: list[int],
                                    ns: list[ipaddress.IPv4Network | ipaddress.IPv6Network]
                                    ) -> None:
    assert match_matches(Match(destination_ports=tuple(ps)), c) != \
        match_matches(Match(not_destination_ports=tuple(ps)), c)
    assert match_matches(Match(source_ips=tuple(ns)), c) != \
        match_matches(Match(not_source_ips=tuple(ns)), c)


@pytest.mark.parametrize("action", list(Action))
def test_frozen(action: Action) -> None:
    p = pol(action)
    with pytest.raises(AttributeError):
        p.name = "x"  # type: ignore[misc]
