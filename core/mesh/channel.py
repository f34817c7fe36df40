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

Traffic management (core/mesh/traffic.py; issue 16), Istio's numbers for enums, seconds for
durations; a key left out reads as the record's default ("not set" for a policy part):

  traffic   {"svc" (service key), "routes" [route], "subsets" [subset], "tp"? policy,
             "vs"? (VirtualService "ns/name"), "dr"? (DestinationRule "ns/name")}
  route     {"k" (RouteKind: 0 tcp, 1 tls), "d" [[service key, subset, port, weight]],
             "m"? [l4match], "n"? (name)}
  l4match   {"p"? port, "dn"? ["cidr"], "sl"? {label: value}, "sn"? namespace,
             "sni"? [host]}
  subset    {"n", "l"? {label: value}, "tp"? policy}
  policy    {"lb"? lb, "cp"? pool, "od"? outlier, "pl"? [{"port", "lb"?, "cp"?, "od"?}]}
  lb        {"s" (SimpleLb), "ch"? {"ip" (useSourceIp), "ring" (minimum ring size)}}
  pool      {"max" (maxConnections), "ct" (connectTimeout, s)}
  outlier   {"5xx", "gw" (consecutive gateway errors), "int" (interval, s), "base"
             (baseEjectionTime, s), "maxp" (maxEjectionPercent), "minh" (minHealthPercent)}
  egress    {"ns", "name"? (none: the mesh default), "mode" (OutboundMode: 0
             REGISTRY_ONLY, 1 ALLOW_ANY), "ls" [{"port"?, "hosts" ["ns/dnsName"]}],
             "sel"? {label: value} (workloadSelector)}
  labels    {"uid", "l" {label: value}}

A workload of a DNS-resolved ServiceEntry has no IPs and carries its host name, "hn".
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
from core.mesh.traffic import (
    ConnectionPool,
    ConsistentHash,
    EgressHost,
    EgressListener,
    EgressPolicy,
    L4Match,
    L4Route,
    LoadBalancer,
    OutboundMode,
    OutlierDetection,
    PortTrafficPolicy,
    RouteDestination,
    RouteKind,
    ServiceTraffic,
    SimpleLb,
    Subset,
    TrafficPolicy,
    WorkloadLabels,
)
from core.mesh.traffic import labels as label_pairs

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
                       ("cr", w.canonical_revision), ("hn", w.hostname)):
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


# ---- traffic management: model -> JSON -------------------------------------------------------

def _lb(lb: LoadBalancer) -> dict[str, Any]:
    out: dict[str, Any] = {"s": int(lb.simple)}
    if lb.consistent_hash is not None:
        out["ch"] = {"ip": lb.consistent_hash.use_source_ip,
                     "ring": lb.consistent_hash.minimum_ring_size}
    return out


def _pool(p: ConnectionPool) -> dict[str, Any]:
    return {"max": p.max_connections, "ct": p.connect_timeout}


def _outlier(o: OutlierDetection) -> dict[str, Any]:
    return {"5xx": o.consecutive_5xx_errors, "gw": o.consecutive_gateway_errors,
            "int": o.interval, "base": o.base_ejection_time,
            "maxp": o.max_ejection_percent, "minh": o.min_health_percent}


def _parts(lb: LoadBalancer | None, pool: ConnectionPool | None,
           outlier: OutlierDetection | None) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if lb is not None:
        out["lb"] = _lb(lb)
    if pool is not None:
        out["cp"] = _pool(pool)
    if outlier is not None:
        out["od"] = _outlier(outlier)
    return out


def _traffic_policy(tp: TrafficPolicy) -> dict[str, Any]:
    out = _parts(tp.load_balancer, tp.connection_pool, tp.outlier_detection)
    if tp.port_level:
        out["pl"] = [{"port": p.port, **_parts(p.load_balancer, p.connection_pool,
                                               p.outlier_detection)} for p in tp.port_level]
    return out


def _l4match(m: L4Match) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if m.port:
        out["p"] = m.port
    if m.destination_subnets:
        out["dn"] = _cidrs(m.destination_subnets)
    if m.source_labels:
        out["sl"] = dict(m.source_labels)
    if m.source_namespace:
        out["sn"] = m.source_namespace
    if m.sni_hosts:
        out["sni"] = list(m.sni_hosts)
    return out


def _route(r: L4Route) -> dict[str, Any]:
    out: dict[str, Any] = {"k": int(r.kind),
                           "d": [[d.service, d.subset, d.port, d.weight]
                                 for d in r.destinations]}
    if r.matches:
        out["m"] = [_l4match(m) for m in r.matches]
    if r.name:
        out["n"] = r.name
    return out


def _subset(s: Subset) -> dict[str, Any]:
    out: dict[str, Any] = {"n": s.name}
    if s.labels:
        out["l"] = dict(s.labels)
    if s.traffic_policy is not None:
        out["tp"] = _traffic_policy(s.traffic_policy)
    return out


def encode_traffic(t: ServiceTraffic) -> dict[str, Any]:
    out: dict[str, Any] = {"svc": t.service, "routes": [_route(r) for r in t.routes],
                           "subsets": [_subset(s) for s in t.subsets]}
    if t.traffic_policy is not None:
        out["tp"] = _traffic_policy(t.traffic_policy)
    if t.virtual_service:
        out["vs"] = t.virtual_service
    if t.destination_rule:
        out["dr"] = t.destination_rule
    return out


def encode_egress(e: EgressPolicy) -> dict[str, Any]:
    out: dict[str, Any] = {"ns": e.namespace, "mode": int(e.mode),
                           "ls": [{**({"port": ln.port} if ln.port else {}),
                                   "hosts": [str(h) for h in ln.hosts]}
                                  for ln in e.listeners]}
    if e.name:
        out["name"] = e.name
    if e.selector:
        out["sel"] = dict(e.selector)
    return out


def encode_labels(w: WorkloadLabels) -> dict[str, Any]:
    return {"uid": w.uid, "l": dict(w.labels)}


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
            canonical_revision=_s(d.get("cr") or ""), hostname=str(d.get("hn") or ""))

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


# ---- traffic management: JSON -> model -------------------------------------------------------

def _label_map(v: Any, what: str) -> tuple[tuple[str, str], ...]:
    if not isinstance(v, dict):
        raise ValueError(f"{what}: labels must be an object")
    return label_pairs({str(k): str(x) for k, x in v.items()})


def _lb_in(d: dict[str, Any]) -> LoadBalancer:
    ch = d.get("ch")
    return LoadBalancer(SimpleLb(int(d.get("s", 0))),
                        ConsistentHash(bool(ch.get("ip", True)), int(ch["ring"]))
                        if ch is not None else None)


def _pool_in(d: dict[str, Any]) -> ConnectionPool:
    return ConnectionPool(int(d["max"]), float(d["ct"]))


def _outlier_in(d: dict[str, Any]) -> OutlierDetection:
    return OutlierDetection(int(d["5xx"]), int(d["gw"]), float(d["int"]), float(d["base"]),
                            int(d["maxp"]), int(d.get("minh", 0)))


def _parts_in(d: dict[str, Any]) -> tuple[LoadBalancer | None, ConnectionPool | None,
                                          OutlierDetection | None]:
    lb, cp, od = d.get("lb"), d.get("cp"), d.get("od")
    return (_lb_in(lb) if lb is not None else None, _pool_in(cp) if cp is not None else None,
            _outlier_in(od) if od is not None else None)


def _traffic_policy_in(d: dict[str, Any]) -> TrafficPolicy:
    return TrafficPolicy(*_parts_in(d), port_level=tuple(
        PortTrafficPolicy(int(p["port"]), *_parts_in(p)) for p in d.get("pl", ())))


def _l4match_in(d: dict[str, Any]) -> L4Match:
    return L4Match(port=int(d.get("p", 0)), destination_subnets=_nets_in(d.get("dn", ())),
                   source_labels=_label_map(d.get("sl", {}), "route match sourceLabels"),
                   source_namespace=str(d.get("sn", "")),
                   sni_hosts=tuple(str(h) for h in d.get("sni", ())))


def decode_traffic(d: dict[str, Any]) -> ServiceTraffic:
    """Raises ValueError (or KeyError/TypeError for a malformed record) naming the service."""
    key = str(d["svc"])
    try:
        routes = tuple(L4Route(RouteKind(int(r["k"])),
                               tuple(RouteDestination(str(svc), str(sub), int(port), int(w))
                                     for svc, sub, port, w in r["d"]),
                               tuple(_l4match_in(m) for m in r.get("m", ())),
                               str(r.get("n", "")))
                       for r in d.get("routes", ()))
        subsets = tuple(Subset(str(s["n"]), _label_map(s.get("l", {}), "subset labels"),
                               _traffic_policy_in(s["tp"]) if "tp" in s else None)
                        for s in d.get("subsets", ()))
        tp = _traffic_policy_in(d["tp"]) if "tp" in d else None
    except (KeyError, TypeError, ValueError) as exc:
        raise ValueError(f"traffic {key}: {type(exc).__name__}: {exc}") from None
    return ServiceTraffic(key, routes, subsets, tp, str(d.get("vs", "")), str(d.get("dr", "")))


def decode_egress(d: dict[str, Any]) -> EgressPolicy:
    ns, name = str(d["ns"]), str(d.get("name", ""))
    try:
        listeners = tuple(EgressListener(tuple(EgressHost.parse(str(h)) for h in ln["hosts"]),
                                         int(ln.get("port", 0)))
                          for ln in d.get("ls", ()))
        return EgressPolicy(ns, name, OutboundMode(int(d.get("mode", OutboundMode.ALLOW_ANY))),
                            listeners, _label_map(d.get("sel", {}), "workloadSelector"))
    except (KeyError, TypeError, ValueError) as exc:
        raise ValueError(f"egress {ns}/{name or '-'}: {type(exc).__name__}: {exc}") from None


def decode_labels(d: dict[str, Any]) -> WorkloadLabels:
    uid = str(d["uid"])
    return WorkloadLabels(uid, _label_map(d.get("l", {}), f"labels of {uid}"))
