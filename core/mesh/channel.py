"""The mesh model <-> the JSON records of the agent -> proxy mesh config channel, both
directions (the framing and the messages are core/wire/meshconfig.py).

Only what the proxy acts on travels, under short keys: a 100k-workload snapshot goes through
here on every proxy (re)connect, so fields that are usually empty (network, locality, a
non-default cluster, a routing preference) are left out when they are, and a missing key
reads as empty. A record the proxy reads back is a `Workload` / `Service` / `Policy` with
only those fields set; encoding it again gives the same JSON.

  workload  {"uid", "name", "ns", "ips", "node", "id" (SPIFFE ID), "hbone", "healthy",
             "pol" (selector policy keys), "svc" {service key: [[port, target], ...]},
             "net"?, "cl"? (not "Kubernetes"), "loc"? [region, zone, subzone],
             "wn"? (workload_name), "cn"? (canonical_name), "cr"? (canonical_revision):
             the telemetry's workload labels (proxy/metrics.py)}
  service   {"key", "name", "ns", "host", "vips" [[network, ip], ...] (no CIDR VIPs),
             "ports" [[port, target], ...], "lb", "health", "sans", "rp"? [scope, ...]}
  policy    {"key", "name", "ns", "scope", "action", "dry_run", "groups": [[[match]]]}
  match     {"namespaces" [[kind, value]], "principals", "service_accounts" [[ns, sa]],
             "source_ips" ["cidr"], "destination_ips", "destination_ports" [port], and
             their "not_" forms; empty fields left out}
"""

from __future__ import annotations

import ipaddress
import sys
from collections.abc import Callable
from typing import Any, TypeVar

from core.mesh.intern import Interner
from core.mesh.model import (
    DEFAULT_CLUSTER,
    NO_LOCALITY,
    Group,
    IPNetwork,
    Match,
    Policy,
    PolicyAction,
    PolicyScope,
    Port,
    Rule,
    Service,
    ServiceAccountMatch,
    StringKind,
    StringMatch,
    TunnelProtocol,
    Vip,
    Workload,
    WorkloadStatus,
)

_s = sys.intern
T = TypeVar("T")


# ---- model -> JSON (the agent) -------------------------------------------------------------

def _ports(ports: tuple[Port, ...]) -> list[list[int]]:
    return [[p.service_port, p.target_port] for p in ports]


def encode_workload(w: Workload) -> dict[str, Any]:
    out: dict[str, Any] = {
        "uid": w.uid, "name": w.name, "ns": w.namespace, "ips": list(w.addresses),
        "node": w.node, "id": w.spiffe_id, "hbone": w.uses_hbone,
        "healthy": w.healthy, "pol": list(w.authorization_policies),
        "svc": {k: _ports(p) for k, p in w.services}}
    # For locality-aware endpoint picking (proxy/meshconfig/table.py), only when set.
    if w.network:
        out["net"] = w.network
    if w.cluster_id and w.cluster_id != DEFAULT_CLUSTER:
        out["cl"] = w.cluster_id
    if any(w.locality):
        out["loc"] = list(w.locality)  # [region, zone, subzone]
    # For the proxy's istio_tcp_* labels, only when set.
    for key, value in (("wn", w.workload_name), ("cn", w.canonical_name),
                       ("cr", w.canonical_revision)):
        if value:
            out[key] = value
    return out


def encode_service(s: Service) -> dict[str, Any]:
    out: dict[str, Any] = {
        "key": s.key, "name": s.name, "ns": s.namespace, "host": s.hostname,
        "vips": [[v.network, v.address] for v in s.vips if v.length is None],
        "ports": _ports(s.ports), "lb": int(s.lb_mode), "health": int(s.lb_health_policy),
        "sans": list(s.subject_alt_names)}
    if s.lb_routing_preference:
        out["rp"] = [int(x) for x in s.lb_routing_preference]  # LbScope values, in order
    return out


def _sm(ms: tuple[StringMatch, ...]) -> list[list[str]]:
    return [[m.kind.value, m.value] for m in ms]


def _cidrs(cs: tuple[IPNetwork, ...]) -> list[str]:
    return [str(c) for c in cs]


def _sas(ms: tuple[ServiceAccountMatch, ...]) -> list[list[str]]:
    return [[a.namespace, a.service_account] for a in ms]


def encode_match(m: Match) -> dict[str, Any]:
    out: dict[str, Any] = {
        "namespaces": _sm(m.namespaces), "not_namespaces": _sm(m.not_namespaces),
        "principals": _sm(m.principals), "not_principals": _sm(m.not_principals),
        "service_accounts": _sas(m.service_accounts),
        "not_service_accounts": _sas(m.not_service_accounts),
        "source_ips": _cidrs(m.source_ips), "not_source_ips": _cidrs(m.not_source_ips),
        "destination_ips": _cidrs(m.destination_ips),
        "not_destination_ips": _cidrs(m.not_destination_ips),
        "destination_ports": list(m.destination_ports),
        "not_destination_ports": list(m.not_destination_ports)}
    return {k: v for k, v in out.items() if v}


def encode_policy(p: Policy) -> dict[str, Any]:
    return {"key": p.key, "name": p.name, "ns": p.namespace, "scope": int(p.scope),
            "action": int(p.action), "dry_run": p.dry_run,
            "groups": [[[encode_match(m) for m in rule.matches] for rule in group.rules]
                       for group in p.groups]}


# ---- JSON -> model (the proxy) -------------------------------------------------------------

def _ip(text: Any) -> str:
    return str(ipaddress.ip_address(text))


def _identity(uid: str, namespace: str, spiffe_id: str) -> tuple[str, str]:
    """(trust domain, service account) of `spiffe://<td>/ns/<namespace>/sa/<sa>`. The agent
    writes the ID from those two fields; its checks (core/spiffe.py) are made where the ID is
    used, per connection, so one odd workload does not reject a whole snapshot."""
    td, sep, rest = spiffe_id.removeprefix("spiffe://").partition(f"/ns/{namespace}/sa/")
    if not spiffe_id.startswith("spiffe://") or not sep or not td or not rest:
        raise ValueError(f"workload {uid}: identity {spiffe_id!r} is not "
                         f"spiffe://<trust domain>/ns/{namespace}/sa/<service account>")
    return td, rest


class Decoder:
    """JSON records -> model records, sharing equal strings and tuples between them (the
    proxy's table holds one for its lifetime)."""

    def __init__(self) -> None:
        self.share = Interner()
        # Decoded values by their JSON (as plain hashable data), so the many workloads of one
        # deployment decode their identity and service ports once.
        self._decoded: dict[Any, Any] = {}

    def _port_list(self, v: Any) -> tuple[Port, ...]:
        return self.share(tuple(Port(int(sp), int(tp)) for sp, tp in v))

    def _once(self, key: Any, make: Callable[[], T]) -> T:
        got = self._decoded.get(key)
        if got is None:
            if len(self._decoded) >= 100_000:
                self._decoded.clear()
            got = self._decoded[key] = make()
        return got

    def _services(self, svc: dict[str, Any] | None) -> tuple[tuple[str, tuple[Port, ...]], ...]:
        if not svc:
            return ()
        key = ("svc", *((k, *(tuple(p) for p in ports)) for k, ports in svc.items()))
        return self._once(key, lambda: self.share(tuple(sorted(
            (_s(k), self._port_list(ports)) for k, ports in svc.items()))))

    def workload(self, d: dict[str, Any]) -> Workload:
        uid, ns, ident = d["uid"], d["ns"], d["id"]
        td, sa = self._once(("id", ns, ident), lambda: tuple(map(_s, _identity(uid, ns, ident))))
        loc = d.get("loc")
        locality = NO_LOCALITY
        if loc:
            region, zone, subzone = [*loc, "", "", ""][:3]
            locality = self.share((_s(region), _s(zone), _s(subzone)))
        pol = d.get("pol")
        return Workload(
            uid=uid, name=d["name"], namespace=_s(ns),
            addresses=tuple(_ip(i) for i in d["ips"]), node=_s(d.get("node", "")),
            trust_domain=td, service_account=sa,
            tunnel_protocol=TunnelProtocol.HBONE if d["hbone"] else TunnelProtocol.NONE,
            status=(WorkloadStatus.HEALTHY if d.get("healthy", True)
                    else WorkloadStatus.UNHEALTHY),
            authorization_policies=self.share(tuple(map(_s, pol))) if pol else (),
            services=self._services(d.get("svc")),
            network=_s(d.get("net", "")), cluster_id=_s(d.get("cl") or ""), locality=locality,
            workload_name=_s(d.get("wn") or ""), canonical_name=_s(d.get("cn") or ""),
            canonical_revision=_s(d.get("cr") or ""))

    def service(self, d: dict[str, Any]) -> Service:
        s = Service(name=str(d["name"]), namespace=str(d["ns"]), hostname=str(d["host"]),
                    vips=tuple(Vip(str(net), _ip(a)) for net, a in d["vips"]),
                    ports=self._port_list(d["ports"]), lb_mode=int(d.get("lb", 0)),
                    lb_health_policy=int(d.get("health", 0)),
                    subject_alt_names=tuple(str(x) for x in d.get("sans", ())),
                    lb_routing_preference=tuple(int(x) for x in d.get("rp", ())))
        if s.key != d["key"]:
            raise ValueError(f"service {s.key!r} sent as {d['key']!r}")
        return s

    def policy(self, d: dict[str, Any]) -> Policy:
        return decode_policy(d)


def _sm_in(v: Any) -> tuple[StringMatch, ...]:
    return tuple(StringMatch(StringKind(k), str(val)) for k, val in v)


def _nets_in(v: Any) -> tuple[IPNetwork, ...]:
    return tuple(ipaddress.ip_network(c, strict=False) for c in v)


def _sas_in(v: Any) -> tuple[ServiceAccountMatch, ...]:
    return tuple(ServiceAccountMatch(str(ns), str(sa)) for ns, sa in v)


def decode_match(d: dict[str, Any]) -> Match:
    g = d.get
    return Match(
        namespaces=_sm_in(g("namespaces", ())), not_namespaces=_sm_in(g("not_namespaces", ())),
        service_accounts=_sas_in(g("service_accounts", ())),
        not_service_accounts=_sas_in(g("not_service_accounts", ())),
        principals=_sm_in(g("principals", ())), not_principals=_sm_in(g("not_principals", ())),
        source_ips=_nets_in(g("source_ips", ())),
        not_source_ips=_nets_in(g("not_source_ips", ())),
        destination_ips=_nets_in(g("destination_ips", ())),
        not_destination_ips=_nets_in(g("not_destination_ips", ())),
        destination_ports=tuple(int(p) for p in g("destination_ports", ())),
        not_destination_ports=tuple(int(p) for p in g("not_destination_ports", ())))


def decode_policy(d: dict[str, Any]) -> Policy:
    groups = tuple(Group(tuple(Rule(tuple(decode_match(m) for m in rule)) for rule in group))
                   for group in d.get("groups", ()))
    return Policy(name=str(d["name"]), namespace=str(d["ns"]),
                  scope=PolicyScope(int(d["scope"])), action=PolicyAction(int(d["action"])),
                  groups=groups, dry_run=bool(d.get("dry_run", False)))
