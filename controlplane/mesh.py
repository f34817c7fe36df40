"""The mesh file: services, workloads and L4 policies the control plane serves.

Format and field meanings: docs/control-plane.md. Every problem raises `MeshError` naming the
line and the field, so an operator can fix the file without guessing.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

from controlplane.yamlview import MeshError, View, compose
from core.mesh.model import DEFAULT_CLUSTER, Match, StringKind, StringMatch

IP = ipaddress.IPv4Address | ipaddress.IPv6Address
CIDR = ipaddress.IPv4Network | ipaddress.IPv6Network

LB_MODES = ["unspecified", "strict", "failover", "passthrough"]
LB_SCOPES = ["region", "zone", "subzone", "node", "cluster", "network"]
LB_HEALTH = ["only_healthy", "allow_all"]
APP_PROTOCOLS = ["unknown", "http11", "http2", "grpc", "tcp", "tls"]
POLICY_SCOPES = ["global", "namespace", "workload"]
ACTIONS = ["allow", "deny"]
MALFORMED_TYPES = ["address", "authorization"]

T = TypeVar("T")

__all__ = ["Mesh", "MeshError", "load", "parse"]


@dataclass(frozen=True)
class PortSpec:
    port: int
    target_port: int
    protocol: str = "unknown"


@dataclass
class ServiceSpec:
    name: str
    namespace: str
    hostname: str
    vips: list[IP]
    ports: list[PortSpec]
    selector: dict[str, str]
    lb_mode: str = "unspecified"
    lb_routing: list[str] = field(default_factory=list)
    lb_health: str = "only_healthy"
    line: int = 0

    @property
    def key(self) -> str:
        """The resource name Istio gives a service: namespace/hostname."""
        return f"{self.namespace}/{self.hostname}"


@dataclass
class WorkloadSpec:
    uid: str
    name: str
    namespace: str
    service_account: str
    ips: list[IP]
    node: str
    labels: dict[str, str]
    services: list[str]          # service keys (namespace/hostname), resolved
    policies: list[str]          # selector-scoped policy keys (namespace/name), resolved
    healthy: bool = True
    hbone: bool = True
    network: str = ""
    cluster: str = ""                                # empty: the mesh's cluster_id
    locality: tuple[str, str, str] | None = None     # region, zone, subzone
    line: int = 0

    def spiffe_id(self, trust_domain: str) -> str:
        return f"spiffe://{trust_domain}/ns/{self.namespace}/sa/{self.service_account}"


@dataclass
class RuleSpec:
    """Matches when one `from` entry and one `to` entry match (an empty side matches all).
    Each entry is a mesh-model `Match`: its fields AND-ed, the values of a field OR-ed."""

    sources: list[Match]
    destinations: list[Match]


@dataclass
class PolicySpec:
    name: str
    namespace: str
    scope: str                  # global | namespace | workload
    selector: dict[str, str]
    action: str                 # allow | deny
    rules: list[RuleSpec]
    dry_run: bool = False
    line: int = 0

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"


@dataclass(frozen=True)
class MalformedSpec:
    """Test hook: a resource served with undecodable bytes, so clients must NACK it."""

    kind: str                   # address | authorization
    name: str


@dataclass
class Mesh:
    cluster_id: str = DEFAULT_CLUSTER
    services: list[ServiceSpec] = field(default_factory=list)
    workloads: list[WorkloadSpec] = field(default_factory=list)
    policies: list[PolicySpec] = field(default_factory=list)
    malformed: list[MalformedSpec] = field(default_factory=list)

    def has_identity_on_node(self, namespace: str, service_account: str, node: str) -> bool:
        return any(w.namespace == namespace and w.service_account == service_account
                   and w.node == node for w in self.workloads)


def load(path: str | Path) -> Mesh:
    p = Path(path)
    try:
        text = p.read_text()
    except OSError as exc:
        raise MeshError(f"{p}: cannot read: {exc.strerror}") from None
    return parse(text, str(p))


def parse(text: str, source: str = "mesh.yaml") -> Mesh:
    root = compose(text, source)
    if root.is_null():
        return Mesh()
    top = root.mapping({"cluster_id", "services", "workloads", "policies", "debug"})
    mesh = Mesh()
    if "cluster_id" in top:
        mesh.cluster_id = top["cluster_id"].name()
    service_views = list(top["services"].items()) if "services" in top else []
    mesh.services = [_service(v) for v in service_views]
    policy_views = list(top["policies"].items()) if "policies" in top else []
    mesh.policies = [_policy(v) for v in policy_views]
    workload_views = list(top["workloads"].items()) if "workloads" in top else []
    mesh.workloads = [_workload(v, mesh) for v in workload_views]
    if "debug" in top:
        mesh.malformed = _debug(top["debug"])
    _check_unique(mesh, service_views, workload_views, policy_views)
    _link(mesh)
    return mesh


def _service(v: View) -> ServiceSpec:
    f = v.mapping({"name", "namespace", "hostname", "vips", "ports", "selector",
                   "load_balancing"}, required=("name", "ports"))
    name = f["name"].name()
    namespace = f["namespace"].name() if "namespace" in f else "default"
    hostname = (f["hostname"].name() if "hostname" in f
                else f"{name}.{namespace}.svc.cluster.local")
    ports = [_port(p) for p in f["ports"].items()]
    if not ports:
        raise f["ports"].error("a service needs at least one port")
    svc = ServiceSpec(name=name, namespace=namespace, hostname=hostname,
                      vips=[x.ip() for x in f["vips"].items()] if "vips" in f else [],
                      ports=ports,
                      selector=f["selector"].string_map() if "selector" in f else {},
                      line=v.line)
    if "load_balancing" in f:
        _load_balancing(f["load_balancing"], svc)
    return svc


def _load_balancing(v: View, svc: ServiceSpec) -> None:
    lb = v.mapping({"mode", "routing_preference", "health_policy"})
    if "mode" in lb:
        svc.lb_mode = lb["mode"].choice(LB_MODES)
    if "routing_preference" in lb:
        for item in lb["routing_preference"].items():
            scope = item.choice(LB_SCOPES)
            if scope in svc.lb_routing:
                raise item.error(f"scope {scope!r} listed twice")
            svc.lb_routing.append(scope)
    if "health_policy" in lb:
        svc.lb_health = lb["health_policy"].choice(LB_HEALTH)
    # As ztunnel: only strict and failover pick by locality; other modes ignore a preference,
    # so a file that pairs them is a mistake worth naming.
    picks = svc.lb_mode in ("strict", "failover")
    if svc.lb_routing and not picks:
        raise lb["routing_preference"].error(
            f"applies only with mode strict or failover, not {svc.lb_mode!r}")
    if picks and not svc.lb_routing:
        raise lb["mode"].error(f"mode {svc.lb_mode!r} needs a routing_preference")


def _port(v: View) -> PortSpec:
    f = v.mapping({"port", "target_port", "protocol"}, required=("port",))
    port = f["port"].integer(1, 65535)
    target = f["target_port"].integer(1, 65535) if "target_port" in f else port
    proto = f["protocol"].choice(APP_PROTOCOLS) if "protocol" in f else "unknown"
    return PortSpec(port, target, proto)


def _workload(v: View, mesh: Mesh) -> WorkloadSpec:
    f = v.mapping({"uid", "name", "namespace", "service_account", "ips", "node", "labels",
                   "services", "status", "tunnel", "network", "cluster", "locality"},
                  required=("name", "ips", "node"))
    name = f["name"].name()
    namespace = f["namespace"].name() if "namespace" in f else "default"
    cluster = f["cluster"].name() if "cluster" in f else ""
    ips = [x.ip() for x in f["ips"].items()]
    if not ips:
        raise f["ips"].error("a workload needs at least one IP")
    wl = WorkloadSpec(
        uid=(f["uid"].string() if "uid" in f
             else f"{cluster or mesh.cluster_id}//Pod/{namespace}/{name}"),
        name=name, namespace=namespace,
        service_account=f["service_account"].name() if "service_account" in f else "default",
        ips=ips, node=f["node"].name(),
        labels=f["labels"].string_map() if "labels" in f else {},
        services=[], policies=[],
        healthy=(f["status"].choice(["healthy", "unhealthy"]) == "healthy"
                 if "status" in f else True),
        hbone=(f["tunnel"].choice(["hbone", "none"]) == "hbone" if "tunnel" in f else True),
        network=f["network"].string() if "network" in f else "",
        cluster=cluster,
        locality=_locality(f["locality"]) if "locality" in f else None,
        line=v.line)
    if not wl.uid:
        raise f["uid"].error("must not be empty")
    for ref in f["services"].items() if "services" in f else []:
        wl.services.append(_resolve_service(ref, namespace, mesh))
    return wl


def _locality(v: View) -> tuple[str, str, str]:
    f = v.mapping({"region", "zone", "subzone"})
    if not f:
        raise v.error("an empty locality; name at least one of region, zone, subzone")
    region, zone, subzone = (f[k].name() if k in f else "" for k in ("region", "zone", "subzone"))
    return (region, zone, subzone)


def _resolve_service(ref: View, namespace: str, mesh: Mesh) -> str:
    """`name` (same namespace), `namespace/name` or `namespace/hostname` -> service key."""
    text = ref.string()
    ns, _, rest = text.rpartition("/")
    ns = ns or namespace
    for svc in mesh.services:
        if svc.namespace == ns and rest in (svc.name, svc.hostname):
            return svc.key
    raise ref.error(f"no service {text!r} in namespace {ns!r}")


def _policy(v: View) -> PolicySpec:
    f = v.mapping({"name", "namespace", "scope", "selector", "action", "rules", "dry_run"},
                  required=("name", "action"))
    pol = PolicySpec(
        name=f["name"].name(),
        namespace=f["namespace"].name() if "namespace" in f else "default",
        scope=f["scope"].choice(POLICY_SCOPES) if "scope" in f else "namespace",
        selector=f["selector"].string_map() if "selector" in f else {},
        action=f["action"].choice(ACTIONS),
        rules=[_rule(r) for r in f["rules"].items()] if "rules" in f else [],
        dry_run=f["dry_run"].boolean() if "dry_run" in f else False,
        line=v.line)
    if pol.scope == "workload" and not pol.selector:
        raise v.error("scope 'workload' needs a 'selector'")
    if pol.scope != "workload" and pol.selector:
        raise f["selector"].error("only a policy with scope 'workload' takes a selector")
    return pol


_SOURCE_FIELDS = {"principals", "not_principals", "namespaces", "not_namespaces",
                  "ips", "not_ips"}
_DEST_FIELDS = {"ports", "not_ports", "ips", "not_ips"}


def _rule(v: View) -> RuleSpec:
    # `{}` is a rule that matches every connection (Istio's "allow all" idiom).
    f = v.mapping({"from", "to"})
    sources = [_source(s) for s in f["from"].items()] if "from" in f else []
    dests = [_dest(d) for d in f["to"].items()] if "to" in f else []
    return RuleSpec(sources, dests)


def _source(v: View) -> Match:
    f = v.mapping(_SOURCE_FIELDS)
    if not f:
        raise v.error("an empty source matches nothing useful; name at least one field")

    def each(key: str, read: Callable[[View], T]) -> tuple[T, ...]:
        return tuple(read(x) for x in f[key].items()) if key in f else ()

    return Match(principals=each("principals", _principal),
                 not_principals=each("not_principals", _principal),
                 namespaces=each("namespaces", _pattern),
                 not_namespaces=each("not_namespaces", _pattern),
                 source_ips=each("ips", View.cidr), not_source_ips=each("not_ips", View.cidr))


def _dest(v: View) -> Match:
    f = v.mapping(_DEST_FIELDS)
    if not f:
        raise v.error("an empty destination matches nothing useful; name at least one field")

    def each(key: str, read: Callable[[View], T]) -> tuple[T, ...]:
        return tuple(read(x) for x in f[key].items()) if key in f else ()

    def port(x: View) -> int:
        return x.integer(1, 65535)

    return Match(destination_ports=each("ports", port),
                 not_destination_ports=each("not_ports", port),
                 destination_ips=each("ips", View.cidr),
                 not_destination_ips=each("not_ips", View.cidr))


def pattern(text: str) -> StringMatch:
    """Istio's pattern syntax: `*` any value, `x*` prefix, `*x` suffix, else exact."""
    if text == "*":
        return StringMatch(StringKind.PRESENCE)
    if text.endswith("*"):
        return StringMatch(StringKind.PREFIX, text[:-1])
    if text.startswith("*"):
        return StringMatch(StringKind.SUFFIX, text[1:])
    return StringMatch(StringKind.EXACT, text)


def _pattern(v: View) -> StringMatch:
    return pattern(v.string())


def _principal(v: View) -> StringMatch:
    """Istio writes principals without the scheme: `td/ns/<ns>/sa/<sa>`; accept both."""
    text = v.string().removeprefix("spiffe://")
    if not text:
        raise v.error("empty principal")
    return pattern(text)


def _debug(v: View) -> list[MalformedSpec]:
    f = v.mapping({"malformed_resources"})
    out = []
    for item in f["malformed_resources"].items() if "malformed_resources" in f else []:
        g = item.mapping({"type", "name"}, required=("type", "name"))
        out.append(MalformedSpec(g["type"].choice(MALFORMED_TYPES), g["name"].string()))
    return out


def _check_unique(mesh: Mesh, service_views: list[View], workload_views: list[View],
                  policy_views: list[View]) -> None:
    seen: dict[str, int] = {}
    vips: dict[IP, str] = {}
    for svc, view in zip(mesh.services, service_views, strict=True):
        if svc.key in seen:
            raise view.error(f"service {svc.key} already defined on line {seen[svc.key]}")
        seen[svc.key] = svc.line
        for vip in svc.vips:
            if vip in vips:
                raise view.error(f"VIP {vip} already used by service {vips[vip]}")
            vips[vip] = svc.key
    uids: dict[str, int] = {}
    ips: dict[tuple[str, IP], str] = {}
    for wl, view in zip(mesh.workloads, workload_views, strict=True):
        if wl.uid in uids:
            raise view.error(f"uid {wl.uid!r} already used on line {uids[wl.uid]}")
        uids[wl.uid] = wl.line
        for ip in wl.ips:
            if (wl.network, ip) in ips:
                raise view.error(f"IP {ip} already used by workload {ips[(wl.network, ip)]}")
            if ip in vips:
                raise view.error(f"IP {ip} is the VIP of service {vips[ip]}")
            ips[(wl.network, ip)] = wl.uid
    keys: dict[str, int] = {}
    for pol, view in zip(mesh.policies, policy_views, strict=True):
        if pol.key in keys:
            raise view.error(f"policy {pol.key} already defined on line {keys[pol.key]}")
        keys[pol.key] = pol.line


def _link(mesh: Mesh) -> None:
    """Selector-based membership: services and workload-scoped policies pick workloads."""
    for wl in mesh.workloads:
        for svc in mesh.services:
            if (svc.selector and svc.namespace == wl.namespace
                    and _selects(svc.selector, wl.labels) and svc.key not in wl.services):
                wl.services.append(svc.key)
        for pol in mesh.policies:
            if (pol.scope == "workload" and pol.namespace == wl.namespace
                    and _selects(pol.selector, wl.labels)):
                wl.policies.append(pol.key)


def _selects(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return all(labels.get(k) == val for k, val in selector.items())
