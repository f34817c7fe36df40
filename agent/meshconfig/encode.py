"""Discovery records → the channel's JSON, keeping only what the proxy acts on.

Short keys: a 100k-workload snapshot goes through this on every proxy (re)connect, so
fields that are usually empty (network, locality, a non-default cluster, a routing
preference) are left out when they are, and the proxy reads a missing key as empty.
"""

from __future__ import annotations

from typing import Any

from agent.identity.bundle import CertBundle
from agent.xds.records import Cidr, Match, Policy, Port, Service, StringMatch, Workload

# The cluster ztunnel assumes when a workload's cluster_id is empty; the proxy does the same.
DEFAULT_CLUSTER = "Kubernetes"


def _ports(ports: tuple[Port, ...]) -> list[list[int]]:
    return [[p.service_port, p.target_port] for p in ports]


def workload(w: Workload) -> dict[str, Any]:
    out: dict[str, Any] = {
        "uid": w.uid, "name": w.name, "ns": w.namespace, "ips": list(w.addresses),
        "node": w.node, "id": w.spiffe_id, "hbone": w.uses_hbone,
        "healthy": w.status == 0, "pol": list(w.authorization_policies),
        "svc": {k: _ports(p) for k, p in w.services}}
    # For locality-aware endpoint picking (proxy/meshconfig/table.py), only when set.
    if w.network:
        out["net"] = w.network
    if w.cluster_id and w.cluster_id != DEFAULT_CLUSTER:
        out["cl"] = w.cluster_id
    if w.locality is not None and any(w.locality):
        out["loc"] = list(w.locality)  # [region, zone, subzone]
    return out


def service(s: Service) -> dict[str, Any]:
    out: dict[str, Any] = {
        "key": s.key, "name": s.name, "ns": s.namespace, "host": s.hostname,
        "vips": [[v.network, v.address] for v in s.vips if v.length is None],
        "ports": _ports(s.ports), "lb": s.lb_mode, "health": s.lb_health_policy,
        "sans": list(s.subject_alt_names)}
    if s.lb_routing_preference:
        out["rp"] = list(s.lb_routing_preference)  # LoadBalancing.Scope values, in order
    return out


def _sm(ms: tuple[StringMatch, ...]) -> list[list[str]]:
    return [[m.kind, m.value] for m in ms]


def _cidrs(cs: tuple[Cidr, ...]) -> list[str]:
    return [f"{c.address}/{c.length}" for c in cs]


def _match(m: Match) -> dict[str, Any]:
    out: dict[str, Any] = {
        "namespaces": _sm(m.namespaces), "not_namespaces": _sm(m.not_namespaces),
        "principals": _sm(m.principals), "not_principals": _sm(m.not_principals),
        "service_accounts": [[a.namespace, a.service_account] for a in m.service_accounts],
        "not_service_accounts": [[a.namespace, a.service_account]
                                 for a in m.not_service_accounts],
        "source_ips": _cidrs(m.source_ips), "not_source_ips": _cidrs(m.not_source_ips),
        "destination_ips": _cidrs(m.destination_ips),
        "not_destination_ips": _cidrs(m.not_destination_ips),
        "destination_ports": list(m.destination_ports),
        "not_destination_ports": list(m.not_destination_ports)}
    return {k: v for k, v in out.items() if v}


def policy(p: Policy) -> dict[str, Any]:
    return {"key": p.key, "name": p.name, "ns": p.namespace, "scope": p.scope,
            "action": p.action, "dry_run": p.dry_run,
            "groups": [[[_match(m) for m in rule] for rule in group] for group in p.groups]}


def bundle(b: CertBundle) -> dict[str, Any]:
    return {"t": "cert", "identity": b.identity, "key": b.key_pem.decode(),
            "chain": "".join(b.chain_pem), "roots": "".join(b.roots_pem)}
