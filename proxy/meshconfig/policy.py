"""The channel's policy JSON (agent/meshconfig/encode.py) → proxy/authz.py's model."""

from __future__ import annotations

import ipaddress
from typing import Any

from proxy.authz import (
    Action,
    Group,
    Match,
    Policy,
    Rule,
    Scope,
    ServiceAccountMatch,
    StringKind,
    StringMatch,
)


def _sm(v: Any) -> tuple[StringMatch, ...]:
    return tuple(StringMatch(StringKind(k), val) for k, val in v)


def _nets(v: Any) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
    return tuple(ipaddress.ip_network(c, strict=False) for c in v)


def _sas(v: Any) -> tuple[ServiceAccountMatch, ...]:
    return tuple(ServiceAccountMatch(ns, sa) for ns, sa in v)


def match(d: dict[str, Any]) -> Match:
    g = d.get
    return Match(
        namespaces=_sm(g("namespaces", ())), not_namespaces=_sm(g("not_namespaces", ())),
        service_accounts=_sas(g("service_accounts", ())),
        not_service_accounts=_sas(g("not_service_accounts", ())),
        principals=_sm(g("principals", ())), not_principals=_sm(g("not_principals", ())),
        source_ips=_nets(g("source_ips", ())), not_source_ips=_nets(g("not_source_ips", ())),
        destination_ips=_nets(g("destination_ips", ())),
        not_destination_ips=_nets(g("not_destination_ips", ())),
        destination_ports=tuple(int(p) for p in g("destination_ports", ())),
        not_destination_ports=tuple(int(p) for p in g("not_destination_ports", ())))


def policy(d: dict[str, Any]) -> Policy:
    groups = tuple(Group(tuple(Rule(tuple(match(m) for m in rule)) for rule in group))
                   for group in d.get("groups", ()))
    return Policy(name=str(d["name"]), namespace=str(d["ns"]), scope=Scope(int(d["scope"])),
                  action=Action(int(d["action"])), groups=groups,
                  dry_run=bool(d.get("dry_run", False)))
