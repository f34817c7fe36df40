"""AuthorizationPolicy -> istio.security.Authorization, as istiod converts it for ztunnel
(istio/istio pilot/pkg/serviceregistry/ambient/authorization.go: convertAuthorizationPolicy,
handleRule; testdata allow-full, allow-groups, deny-groups).

- scope: GLOBAL without a selector in the root namespace, NAMESPACE without one elsewhere,
  WORKLOAD_SELECTOR with one (then the selected workloads list it by key `ns/name`);
- action ALLOW (the default) or DENY; CUSTOM and AUDIT are not converted (ztunnel has no such
  action), nor policies with `targetRef(s)` (those are for waypoints);
- each rule is one Group whose Rules (AND-ed) are, in this order: the `to` operations (one
  Match each, ports and notPorts), the `from` sources (one Match each: principals,
  namespaces, serviceAccounts, ipBlocks and their not-forms), then one Rules per `when`
  condition with an L4 key (source.ip/namespace/principal, destination.ip/port);
- HTTP-only attributes (hosts, methods, paths, requestPrincipals, remoteIpBlocks, and `when`
  keys other than the five L4 ones): in an ALLOW policy the whole rule is dropped, so it
  allows nothing (more restrictive than written); in a DENY policy only those attributes are
  dropped, so the rule denies more; a Match left with no field is kept but matches nothing
  (ztunnel, and proxy/authz.py, skip an empty Match), so a DENY rule whose only condition was
  HTTP-only has no effect. Each case is reported as a warning, as istiod reports it in the
  policy's status;
- a value that does not convert (a port that is not a number, an IP or CIDR that is not one)
  is reported as an error and the policy is still served, never less restrictive than
  written: in an ALLOW policy the rule holding it is omitted (it allows nothing); in a DENY
  policy it is read as "any" (its field no longer narrows the match; a `not` field only loses
  that value), and a Match left with no field then matches every connection (sources
  0.0.0.0/0 and ::/0) instead of none. istiod drops such a value silently, which turns
  `ipBlocks: [<typo>]` into a DENY that denies nothing; skipping the policy would too.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from controlplane.ambient import read
from controlplane.ambient.options import Options
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

DRY_RUN = "istio.io/dry-run"
L4_WHEN_KEYS = ("source.ip", "source.namespace", "source.principal", "destination.ip",
                "destination.port")
_HTTP_OPERATION = ("hosts", "notHosts", "methods", "notMethods", "paths", "notPaths")
_HTTP_SOURCE = ("remoteIpBlocks", "notRemoteIpBlocks", "requestPrincipals",
                "notRequestPrincipals")
T = TypeVar("T")
# Every source address: what a DENY Match reads as when its only conditions were bad values.
ANY_SOURCE = (ipaddress.ip_network("0.0.0.0/0"), ipaddress.ip_network("::/0"))


@dataclass(frozen=True, slots=True)
class AuthzInfo:
    """A converted policy and the labels it selects (None: it selects no workload by
    labels; istiod attaches only policies whose selector has matchLabels)."""

    policy: Policy
    selector: tuple[tuple[str, str], ...] | None


def pattern(text: str) -> StringMatch:
    """Istio's string syntax as istiod reads it (stringToMatch): `*` any non-empty value,
    `*x` suffix, `x*` prefix, else exact."""
    if text == "*":
        return StringMatch(StringKind.PRESENCE)
    if text.startswith("*"):
        return StringMatch(StringKind.SUFFIX, text[1:])
    if text.endswith("*"):
        return StringMatch(StringKind.PREFIX, text[:-1])
    return StringMatch(StringKind.EXACT, text)


def _parse_bool(text: str) -> bool | None:
    """Go's strconv.ParseBool."""
    if text in ("1", "t", "T", "TRUE", "true", "True"):
        return True
    if text in ("0", "f", "F", "FALSE", "false", "False"):
        return False
    return None


def _each(d: dict[str, Any], key: str, field: str, conv: Callable[[Any, str], T]) -> tuple[T, ...]:
    return tuple(conv(x, f"{field}.{key}[{i}]")
                 for i, x in enumerate(read.items(d.get(key), f"{field}.{key}")))


class _Values:
    """Reads the values of one rule. A value that does not convert is left out and its error
    kept in `bad`; `positive` reads such a field as "any" (nothing), `negative` keeps the
    values that did convert. `widened`: a positive field of the Match being read was."""

    def __init__(self) -> None:
        self.bad: list[str] = []
        self.widened = False

    def _each(self, d: dict[str, Any], key: str, field: str,
              conv: Callable[[Any, str], T]) -> tuple[tuple[T, ...], bool]:
        out: list[T] = []
        ok = True
        for i, x in enumerate(read.items(d.get(key), f"{field}.{key}")):
            try:
                out.append(conv(x, f"{field}.{key}[{i}]"))
            except read.Bad as e:
                self.bad.append(str(e))
                ok = False
        return tuple(out), ok

    def positive(self, d: dict[str, Any], key: str, field: str,
                 conv: Callable[[Any, str], T]) -> tuple[T, ...]:
        values, ok = self._each(d, key, field, conv)
        if not ok:
            self.widened = True
            return ()
        return values

    def negative(self, d: dict[str, Any], key: str, field: str,
                 conv: Callable[[Any, str], T]) -> tuple[T, ...]:
        return self._each(d, key, field, conv)[0]

    def match(self, m: Match) -> Match:
        """`m`, read as every connection if only bad values narrowed it (then resets)."""
        widened, self.widened = self.widened, False
        return Match(source_ips=ANY_SOURCE) if widened and m.is_empty() else m


def _string_match(v: Any, field: str) -> StringMatch:
    return pattern(read.string(v, field))


def _service_account(namespace: str) -> Callable[[Any, str], ServiceAccountMatch]:
    def conv(v: Any, field: str) -> ServiceAccountMatch:
        ns, sep, sa = read.string(v, field).partition("/")
        return ServiceAccountMatch(ns, sa) if sep else ServiceAccountMatch(namespace, ns)
    return conv


def _rule(raw: Any, field: str, namespace: str, allow: bool, http: set[str],
          errors: list[str]) -> tuple[Rule, ...] | None:
    """One AuthorizationPolicy rule -> the Rules of its Group, or None when an ALLOW rule uses
    HTTP attributes or holds a bad value (it is dropped). HTTP attributes found are added to
    `http`, bad values (with what was done instead) to `errors`."""
    r = read.mapping(raw, field)
    found: set[str] = set()
    v = _Values()
    to_matches, from_matches = [], []
    for i, t in enumerate(read.items(r.get("to"), f"{field}.to")):
        f = f"{field}.to[{i}].operation"
        op = read.mapping(read.mapping(t, f"{field}.to[{i}]").get("operation"), f)
        found.update(k for k in _HTTP_OPERATION if read.items(op.get(k), f"{f}.{k}"))
        to_matches.append(v.match(Match(
            destination_ports=v.positive(op, "ports", f, read.port_text),
            not_destination_ports=v.negative(op, "notPorts", f, read.port_text))))
    for i, s in enumerate(read.items(r.get("from"), f"{field}.from")):
        f = f"{field}.from[{i}].source"
        src = read.mapping(read.mapping(s, f"{field}.from[{i}]").get("source"), f)
        found.update(k for k in _HTTP_SOURCE if read.items(src.get(k), f"{f}.{k}"))
        from_matches.append(v.match(Match(
            source_ips=v.positive(src, "ipBlocks", f, read.cidr),
            not_source_ips=v.negative(src, "notIpBlocks", f, read.cidr),
            namespaces=_each(src, "namespaces", f, _string_match),
            not_namespaces=_each(src, "notNamespaces", f, _string_match),
            service_accounts=_each(src, "serviceAccounts", f, _service_account(namespace)),
            not_service_accounts=_each(src, "notServiceAccounts", f,
                                       _service_account(namespace)),
            principals=_each(src, "principals", f, _string_match),
            not_principals=_each(src, "notPrincipals", f, _string_match))))
    rules = []
    if to_matches:
        rules.append(Rule(tuple(to_matches)))
    if from_matches:
        rules.append(Rule(tuple(from_matches)))
    for i, w in enumerate(read.items(r.get("when"), f"{field}.when")):
        f = f"{field}.when[{i}]"
        w = read.mapping(w, f)
        key = read.string(w.get("key"), f"{f}.key")
        if not key:
            raise read.Bad(f"{f}.key", "missing")
        if key not in L4_WHEN_KEYS:
            found.add(key)
        rules.append(Rule((v.match(_when(key, w, f, v)),)))
    http.update(found)
    how = ("the rule is omitted (it allows nothing)" if allow
           else "read as any value (the rule denies more)")
    errors.extend(f"{b}; {how}" for b in v.bad)
    if allow and (found or v.bad):
        return None
    return tuple(rules)


def _when(key: str, w: dict[str, Any], f: str, v: _Values) -> Match:
    """The Match of one `when` condition: its values in the positive field for the key, its
    notValues in the negative one (nothing for an HTTP-only key: an empty Match)."""
    if key in ("source.namespace", "source.principal"):
        pos, neg = (_each(w, k, f, _string_match) for k in ("values", "notValues"))
        if key == "source.namespace":
            return Match(namespaces=pos, not_namespaces=neg)
        return Match(principals=pos, not_principals=neg)
    if key in ("source.ip", "destination.ip"):
        pos_ip = v.positive(w, "values", f, read.cidr)
        neg_ip = v.negative(w, "notValues", f, read.cidr)
        if key == "source.ip":
            return Match(source_ips=pos_ip, not_source_ips=neg_ip)
        return Match(destination_ips=pos_ip, not_destination_ips=neg_ip)
    if key == "destination.port":
        return Match(destination_ports=v.positive(w, "values", f, read.port_text),
                     not_destination_ports=v.negative(w, "notValues", f, read.port_text))
    return Match()


def selector_of(spec: dict[str, Any]) -> tuple[tuple[str, str], ...] | None:
    """`spec.selector.matchLabels` as sorted pairs; None without a selector or with an empty
    one (istiod attaches such a policy to no workload)."""
    sel = spec.get("selector")
    if sel is None:
        return None
    labels = read.string_map(read.mapping(sel, "spec.selector").get("matchLabels"),
                             "spec.selector.matchLabels")
    return tuple(sorted(labels.items())) or None


def authorization_policy(obj: dict[str, Any], opts: Options, warnings: list[str],
                         errors: list[str] | None = None) -> AuthzInfo | None:
    """The converted policy, or None when ztunnel has no use for it (CUSTOM/AUDIT action,
    targetRefs, dry-run with Options.dry_run_policies off); why goes to `warnings`. Values
    that do not convert go to `errors` (the policy is served without them, see above); a
    malformed policy (a wrong type, an unknown action) raises read.Bad."""
    errors = [] if errors is None else errors
    name = read.name(obj)
    ns = read.namespace(obj)
    spec = read.spec(obj)
    dry_run = False
    text = read.annotations_of(obj).get(DRY_RUN, "")
    if text:
        parsed = _parse_bool(text)
        if parsed is None:
            warnings.append(f"metadata.annotations.{DRY_RUN}: {text!r} is not a boolean; "
                            "the policy is enforced")
        dry_run = bool(parsed)
    if dry_run and not opts.dry_run_policies:
        warnings.append("dry-run policies are not converted (Options.dry_run_policies off)")
        return None
    if spec.get("targetRef") or spec.get("targetRefs"):
        return None  # for waypoints, not for the node proxy
    selector = selector_of(spec)
    if "selector" in spec and spec["selector"] is not None:
        scope = PolicyScope.WORKLOAD_SELECTOR
    elif ns == opts.root_namespace:
        scope = PolicyScope.GLOBAL
    else:
        scope = PolicyScope.NAMESPACE
    action_text = read.string(spec.get("action"), "spec.action", "ALLOW")
    if action_text in ("CUSTOM", "AUDIT"):
        warnings.append(f"spec.action: the node proxy does not support the {action_text} "
                        "action; not converted")
        return None
    if action_text not in ("ALLOW", "DENY"):
        raise read.Bad("spec.action", f"{action_text!r} is not ALLOW, DENY, AUDIT or CUSTOM")
    action = PolicyAction.ALLOW if action_text == "ALLOW" else PolicyAction.DENY
    http: set[str] = set()
    groups = []
    for i, raw in enumerate(read.items(spec.get("rules"), "spec.rules")):
        rules = _rule(raw, f"spec.rules[{i}]", ns, action == PolicyAction.ALLOW, http,
                      errors)
        if rules is not None:
            groups.append(Group(rules))
    if http:
        if action == PolicyAction.ALLOW:
            how = "within an ALLOW policy, rules matching HTTP attributes are omitted"
        else:
            how = "the DENY policy is enforced without the HTTP attributes"
        warnings.append(f"the node proxy does not support HTTP attributes (found: "
                        f"{', '.join(sorted(http))}); {how}. A waypoint enforces HTTP rules.")
    policy = Policy(name=name, namespace=ns, scope=scope, action=action, groups=tuple(groups),
                    dry_run=dry_run)
    return AuthzInfo(policy, selector if scope == PolicyScope.WORKLOAD_SELECTOR else None)


def workload_policies(namespace: str, labels: dict[str, str], candidates: list[AuthzInfo],
                      opts: Options) -> list[str]:
    """The keys of the selector policies that apply to a workload (its namespace's and the
    root namespace's whose matchLabels its labels include), sorted (istiod's
    buildWorkloadPolicies)."""
    return sorted(i.policy.key for i in candidates
                  if i.selector is not None
                  and i.policy.namespace in (namespace, opts.root_namespace)
                  and read.selects(i.selector, labels))
