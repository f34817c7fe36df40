"""L4 authorization, as ztunnel evaluates istio.security.Authorization (pure logic), on the
policies of the mesh model (core/mesh/model.py).

Which policies apply to a workload: GLOBAL ones (istiod sends root-namespace policies this
way), NAMESPACE ones of the workload's namespace, and WORKLOAD_SELECTOR ones the workload
names in `authorization_policies` (keys "namespace/name").

Decision, in this order: any applicable DENY policy that matches → deny; no applicable ALLOW
policy → allow; an ALLOW policy that matches → allow; otherwise deny. Dry-run policies are
evaluated and reported but never enforced.

Matching (ztunnel's rbac.rs): a policy matches if ANY group matches; a group if ALL its
rules match (a rule with no matches counts as matching); a rule if ANY of its matches does;
a match if every field it sets matches (each field: ANY value for the positive list, NONE
for the `not_` list). A match that sets no field never matches, and a policy with no groups
matches nothing: an ALLOW policy with no rules denies everything, as in Istio. Principals are
compared without the "spiffe://" prefix (Istio writes "cluster.local/ns/x/sa/y").

A connection with no peer identity (plaintext inbound on 15006, as ztunnel's inbound
passthrough) fails `principals` and `service_accounts` and passes their `not_` forms; its
namespace is the empty string, as in ztunnel, so `namespaces` fails for any value that needs
a character. So an ALLOW by identity never admits it; a DENY by address or port does apply.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass

from core.addr import unmap
from core.mesh.model import (
    IPNetwork,
    Match,
    Policy,
    PolicyAction,
    PolicyScope,
    ServiceAccountMatch,
)
from core.spiffe import SpiffeId

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


@dataclass(frozen=True, slots=True)
class Workload:
    """The destination, as far as policy selection goes."""

    namespace: str
    policies: tuple[str, ...] = ()  # selector-based policy keys "namespace/name"


@dataclass(frozen=True, slots=True)
class Connection:
    src_identity: SpiffeId | None
    src_ip: IPAddress
    dst_ip: IPAddress
    dst_port: int


@dataclass(frozen=True, slots=True)
class Decision:
    allowed: bool
    reason: str  # "allowed", "no_allow_policies", "denied_by_policy", "not_allowed"
    policy: str | None = None  # the policy that decided, "namespace/name"
    dry_run_denied: tuple[str, ...] = ()  # dry-run policies that would have denied


def _in(ip: IPAddress, nets: Iterable[IPNetwork]) -> bool:
    ip = unmap(ip)  # an IPv4 client on a dual-stack listener is v4-mapped; policies say v4
    return any(ip.version == n.version and ip in n for n in nets)


def match_matches(m: Match, c: Connection) -> bool:
    if m.is_empty():
        return False
    ident = c.src_identity
    if m.destination_ports or m.not_destination_ports:
        if m.destination_ports and c.dst_port not in m.destination_ports:
            return False
        if c.dst_port in m.not_destination_ports:
            return False
    if m.destination_ips and not _in(c.dst_ip, m.destination_ips):
        return False
    if m.not_destination_ips and _in(c.dst_ip, m.not_destination_ips):
        return False
    if m.source_ips and not _in(c.src_ip, m.source_ips):
        return False
    if m.not_source_ips and _in(c.src_ip, m.not_source_ips):
        return False
    principal = ident.principal if ident is not None else None
    if m.principals and (principal is None or
                         not any(s.matches(principal) for s in m.principals)):
        return False
    if m.not_principals and principal is not None and \
            any(s.matches(principal) for s in m.not_principals):
        return False
    ns = ident.namespace if ident is not None else ""
    if m.namespaces and not any(s.matches(ns) for s in m.namespaces):
        return False
    if m.not_namespaces and any(s.matches(ns) for s in m.not_namespaces):
        return False

    def sa_hit(sas: tuple[ServiceAccountMatch, ...]) -> bool:
        return ident is not None and any(
            s.namespace == ident.namespace and s.service_account == ident.service_account
            for s in sas)
    if m.service_accounts and not sa_hit(m.service_accounts):
        return False
    return not (m.not_service_accounts and sa_hit(m.not_service_accounts))


def policy_matches(p: Policy, c: Connection) -> bool:
    return any(all(not r.matches or any(match_matches(m, c) for m in r.matches)
                   for r in g.rules)
               for g in p.groups)


def applicable(policies: Iterable[Policy], workload: Workload) -> list[Policy]:
    selected = set(workload.policies)
    return [p for p in policies
            if p.scope == PolicyScope.GLOBAL
            or (p.scope == PolicyScope.NAMESPACE and p.namespace == workload.namespace)
            or (p.scope == PolicyScope.WORKLOAD_SELECTOR and p.key in selected)]


def evaluate(policies: Iterable[Policy], workload: Workload, conn: Connection) -> Decision:
    mine = applicable(policies, workload)
    dry = tuple(p.key for p in mine if p.dry_run and p.action == PolicyAction.DENY
                and policy_matches(p, conn))
    enforced = [p for p in mine if not p.dry_run]
    for p in enforced:
        if p.action == PolicyAction.DENY and policy_matches(p, conn):
            return Decision(False, "denied_by_policy", p.key, dry)
    allows = [p for p in enforced if p.action == PolicyAction.ALLOW]
    if not allows:
        return Decision(True, "no_allow_policies", None, dry)
    for p in allows:
        if policy_matches(p, conn):
            return Decision(True, "allowed", p.key, dry)
    return Decision(False, "not_allowed", None, dry)
