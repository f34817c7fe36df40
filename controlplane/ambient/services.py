"""Service and ServiceEntry -> workload API services, as istiod's ambient index converts them
(istio/istio pilot/pkg/serviceregistry/ambient/services.go: constructService,
constructServiceEntries, selectWorkloadServices).

A `ServiceInfo` is one converted service plus what workloads need to join it: the selector,
the port names (named targetPorts resolve against each pod's container ports) and where it
came from. Services and ServiceEntries that claim the same hostname are deduplicated per
namespace (`select`): a Kubernetes Service wins in its namespace, else the oldest entry; one
winner across namespaces is `canonical`.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any

from controlplane.ambient import read
from controlplane.ambient.options import Options
from core.mesh.model import HealthPolicy, LbMode, LbScope, Port, Service, Vip
from meshpb.istio import workload_pb2 as wl

SERVICE = "Service"
SERVICE_ENTRY = "ServiceEntry"
TRAFFIC_DISTRIBUTION = "networking.istio.io/traffic-distribution"


@dataclass(frozen=True, slots=True)
class PortName:
    service_port: int
    name: str              # the service port's name
    target_name: str = ""  # a Service's named targetPort ("" if numeric or unset)


@dataclass(frozen=True, slots=True)
class ServiceInfo:
    service: Service
    kind: str                                   # SERVICE | SERVICE_ENTRY
    source: tuple[str, str]                     # (namespace, name) of the object
    selector: tuple[tuple[str, str], ...]       # () selects nothing by labels
    port_names: tuple[PortName, ...]
    created: datetime = datetime.min
    # A ServiceEntry host that gets auto-allocated VIPs (autoallocate.py) when served.
    auto_allocate: bool = False

    @property
    def key(self) -> str:
        return self.service.key

    def port_name(self, service_port: int) -> PortName | None:
        return next((p for p in self.port_names if p.service_port == service_port), None)

    def order(self) -> tuple[datetime, str, str, str]:
        """Oldest first; ties broken by kind, namespace, name so the result is stable."""
        return (self.created, self.kind, *self.source)


def hostname(name: str, namespace: str, opts: Options) -> str:
    return f"{name}.{namespace}.svc.{opts.domain_suffix}"


# ---- app protocol (pkg/config/kube/conversion.go ConvertProtocol; pkg/config/protocol) -------

_PROTOCOLS = {"tcp": "TCP", "udp": "UDP", "grpc": "GRPC", "grpc-web": "GRPC-Web",
              "http": "HTTP", "http_proxy": "HTTP_PROXY", "http2": "HTTP2", "https": "HTTPS",
              "tls": "TLS", "mongo": "Mongo", "redis": "Redis", "mysql": "MySQL"}
_APP_PROTOCOL = {"HTTP": wl.HTTP11, "HTTP2": wl.HTTP2, "GRPC": wl.GRPC, "TLS": wl.TLS,
                 "HTTPS": wl.TLS, "TCP": wl.TCP}
_WELL_KNOWN_TCP = {25, 53, 3306, 27017}


def _protocol(text: str) -> str:
    return _PROTOCOLS.get(text.lower(), "")


def kube_app_protocol(port: int, name: str, protocol: str, app_protocol: str | None) -> int:
    """A Service port's protocol from appProtocol, else the port name's prefix
    (`http-web` -> HTTP); UDP is never HTTP; unknown names on a few well-known ports are TCP."""
    if protocol == "UDP":
        return int(wl.UNKNOWN)
    text = name
    if app_protocol is not None:
        text = app_protocol
        special = {"kubernetes.io/h2c": "HTTP2", "kubernetes.io/ws": "HTTP",
                   "kubernetes.io/wss": "HTTPS"}.get(text)
        if special:
            return int(_APP_PROTOCOL[special])
    if text[:8].lower() == "grpc-web":
        return int(wl.UNKNOWN)
    proto = _protocol(text.split("-", 1)[0])
    if not proto and port in _WELL_KNOWN_TCP:
        proto = "TCP"
    return int(_APP_PROTOCOL.get(proto, wl.UNKNOWN))


# ---- load balancing ----------------------------------------------------------------------

def _same_zone() -> tuple[int, tuple[int, ...]]:
    return LbMode.FAILOVER, (LbScope.NETWORK, LbScope.REGION, LbScope.ZONE)


def _same_node() -> tuple[int, tuple[int, ...]]:
    return LbMode.FAILOVER, (LbScope.NETWORK, LbScope.REGION, LbScope.ZONE, LbScope.SUBZONE,
                             LbScope.NODE)


def _distribution(value: str) -> tuple[int, tuple[int, ...]] | None:
    v = value.lower()
    if v in ("preferclose", "prefersamezone"):
        return _same_zone()
    if v == "prefersamenode":
        return _same_node()
    return None


def traffic_distribution(spec_value: str | None, annotations: dict[str, str],
                         ns_annotations: dict[str, str]) -> tuple[int, tuple[int, ...]] | None:
    """spec.trafficDistribution, else the service's, else the namespace's
    `networking.istio.io/traffic-distribution` annotation (model.GetTrafficDistribution)."""
    if spec_value in ("PreferClose", "PreferSameZone"):
        return _same_zone()
    if spec_value == "PreferSameNode":
        return _same_node()
    for source in (annotations, ns_annotations):
        if source.get(TRAFFIC_DISTRIBUTION):
            return _distribution(source[TRAFFIC_DISTRIBUTION])
    return None


# ---- Service ------------------------------------------------------------------------------

def service_info(obj: dict[str, Any], ns_annotations: dict[str, str], network: str,
                 opts: Options) -> ServiceInfo | None:
    """A Kubernetes Service, or None for an ExternalName one (not served to ztunnel)."""
    name = read.name(obj)
    ns = read.namespace(obj)
    spec = read.spec(obj)
    if read.string(spec.get("type"), "spec.type") == "ExternalName":
        return None
    ports, names = [], []
    for i, p in enumerate(read.items(spec.get("ports"), "spec.ports")):
        f = f"spec.ports[{i}]"
        p = read.mapping(p, f)
        number = read.port(p.get("port"), f"{f}.port")
        pname = read.string(p.get("name"), f"{f}.name")
        tp = p.get("targetPort")
        target, target_name = 0, ""
        if isinstance(tp, str):
            target_name = tp
        elif tp is not None:
            target = read.integer(tp, f"{f}.targetPort", 0, 65535)
        proto = read.string(p.get("protocol"), f"{f}.protocol", "TCP")
        app = p.get("appProtocol")
        app = None if app is None else read.string(app, f"{f}.appProtocol")
        ports.append(Port(number, target, kube_app_protocol(number, pname, proto, app)))
        names.append(PortName(number, pname, target_name))
    ips = read.strings(spec.get("clusterIPs"), "spec.clusterIPs")
    fields = [f"spec.clusterIPs[{i}]" for i in range(len(ips))]
    if not ips:
        ips, fields = [read.string(spec.get("clusterIP"), "spec.clusterIP")], ["spec.clusterIP"]
    vips = tuple(Vip(network, read.ip(ip, f)) for ip, f in zip(ips, fields, strict=True)
                 if ip not in ("", "None"))
    lb: tuple[int, tuple[int, ...]] | None
    itp = read.string(spec.get("internalTrafficPolicy"), "spec.internalTrafficPolicy")
    if itp == "Local":
        lb = (LbMode.STRICT, (LbScope.NODE,))
    else:
        td = spec.get("trafficDistribution")
        lb = traffic_distribution(
            None if td is None else read.string(td, "spec.trafficDistribution"),
            read.annotations_of(obj), ns_annotations)
    health = HealthPolicy.ONLY_HEALTHY
    if read.boolean(spec.get("publishNotReadyAddresses"), "spec.publishNotReadyAddresses"):
        health = HealthPolicy.ALLOW_ALL
    families = read.strings(spec.get("ipFamilies"), "spec.ipFamilies")
    ip_families = (wl.DUAL if len(families) == 2 else
                   wl.IPV4_ONLY if families == ["IPv4"] else
                   wl.IPV6_ONLY if len(families) == 1 else wl.AUTOMATIC)
    mode, pref = lb if lb is not None else (LbMode.UNSPECIFIED_MODE, ())
    svc = Service(name=name, namespace=ns, hostname=hostname(name, ns, opts), vips=vips,
                  ports=tuple(ports), lb_mode=mode, lb_routing_preference=pref,
                  lb_health_policy=health, ip_families=int(ip_families),
                  # A Kubernetes Service is always canonical for its hostname.
                  canonical=True)
    selector = read.string_map(spec.get("selector"), "spec.selector")
    return ServiceInfo(svc, SERVICE, (ns, name), tuple(sorted(selector.items())), tuple(names),
                       read.created(obj))


# ---- ServiceEntry -------------------------------------------------------------------------

RESOLUTIONS = ("NONE", "STATIC", "DNS", "DNS_ROUND_ROBIN", "DYNAMIC_DNS")


def resolution(spec: dict[str, Any]) -> str:
    r = read.string(spec.get("resolution"), "spec.resolution", "NONE")
    if r not in RESOLUTIONS:
        raise read.Bad("spec.resolution", f"{r!r} is not one of {', '.join(RESOLUTIONS)}")
    return r


def _vip(v: Any, field: str, network: str) -> Vip:
    net = read.cidr(v, field)
    single = net.prefixlen == net.max_prefixlen
    return Vip(network, str(net.network_address), None if single else net.prefixlen)


AUTOALLOCATE_LABEL = "networking.istio.io/enable-autoallocate-ip"


def _status_addresses(obj: dict[str, Any], network: str) -> dict[str, tuple[Vip, ...]]:
    """Host -> the addresses istiod's allocator wrote in `status.addresses` (when istiod runs
    in the cluster too); an unreadable one is skipped, as istiod does."""
    status = obj.get("status")
    found = status.get("addresses") if isinstance(status, dict) else None
    out: dict[str, tuple[Vip, ...]] = {}
    for a in found if isinstance(found, list) else ():
        if not isinstance(a, dict) or not isinstance(a.get("host"), str):
            continue
        try:
            ip = read.ip(a.get("value"), "status.addresses")
        except read.Bad:
            continue
        out[a["host"]] = (*out.get(a["host"], ()), Vip(network, ip))
    return out


def auto_allocates(obj: dict[str, Any], spec: dict[str, Any], res: str, host: str) -> bool:
    """Whether a host of this entry gets auto-allocated VIPs (istiod's ShouldV2AutoAllocateIP
    and keepHost): no spec.addresses; resolution not NONE (its connections pass through to
    the address the app dialled, so a VIP would lead nowhere); not opted out with the label;
    not a wildcard host, unless the resolution is DYNAMIC_DNS."""
    if res == "NONE" or spec.get("addresses"):
        return False
    if read.labels_of(obj).get(AUTOALLOCATE_LABEL, "").lower() == "false":
        return False
    return not host.startswith("*") or res == "DYNAMIC_DNS"


def service_entry_infos(obj: dict[str, Any], ns_annotations: dict[str, str], network: str,
                        opts: Options) -> tuple[ServiceInfo, ...]:
    """One service per host. Addresses (IPs or CIDRs) are every host's VIPs; a port's
    targetPort defaults to its number; resolution NONE is PASSTHROUGH (health ALLOW_ALL).
    A host without addresses gets auto-allocated ones (`auto_allocates`): those istiod wrote
    in the entry's status if any, else the index allocates (autoallocate.py)."""
    name = read.name(obj)
    ns = read.namespace(obj)
    spec = read.spec(obj)
    res = resolution(spec)
    vips = tuple(_vip(a, f"spec.addresses[{i}]", network)
                 for i, a in enumerate(read.items(spec.get("addresses"), "spec.addresses")))
    allocated = _status_addresses(obj, network)
    ports, names = [], []
    for i, p in enumerate(read.items(spec.get("ports"), "spec.ports")):
        f = f"spec.ports[{i}]"
        p = read.mapping(p, f)
        number = read.port(p.get("number"), f"{f}.number")
        target = p.get("targetPort")
        target = number if target in (None, 0) else read.port(target, f"{f}.targetPort")
        proto = _protocol(read.string(p.get("protocol"), f"{f}.protocol"))
        ports.append(Port(number, target, int(_APP_PROTOCOL.get(proto, wl.UNKNOWN))))
        names.append(PortName(number, read.string(p.get("name"), f"{f}.name")))
    mode: int
    pref: tuple[int, ...]
    if res == "NONE":
        mode, pref, health = LbMode.PASSTHROUGH, (), HealthPolicy.ALLOW_ALL
    else:
        lb = traffic_distribution(None, read.annotations_of(obj), ns_annotations)
        mode, pref = lb if lb is not None else (LbMode.UNSPECIFIED_MODE, ())
        health = HealthPolicy.ONLY_HEALTHY
    sans = tuple(read.strings(spec.get("subjectAltNames"), "spec.subjectAltNames"))
    selector = read.string_map(read.mapping(spec.get("workloadSelector"),
                                            "spec.workloadSelector").get("labels"),
                               "spec.workloadSelector.labels")
    out = []
    for i, host in enumerate(read.strings(spec.get("hosts"), "spec.hosts")):
        if not host:
            raise read.Bad(f"spec.hosts[{i}]", "empty host")
        auto = auto_allocates(obj, spec, res, host)
        host_vips = allocated.get(host, ()) if auto else vips
        svc = Service(name=name, namespace=ns, hostname=host, vips=host_vips,
                      ports=tuple(ports), subject_alt_names=sans, lb_mode=mode,
                      lb_routing_preference=pref, lb_health_policy=health)
        out.append(ServiceInfo(svc, SERVICE_ENTRY, (ns, name), tuple(sorted(selector.items())),
                               tuple(names), read.created(obj), auto and not host_vips))
    return tuple(out)


# ---- one hostname, many claims ------------------------------------------------------------

def select(infos: Iterable[ServiceInfo]) -> dict[str, ServiceInfo]:
    """The services of one hostname that are served: per namespace a Kubernetes Service, else
    the oldest ServiceEntry; and one of them canonical: a Kubernetes Service, else the oldest
    public entry (istiod's selectWorkloadServices). Namespace -> winner."""
    def better(a: ServiceInfo, b: ServiceInfo) -> bool:
        return a.order() < b.order() and b.kind != SERVICE

    best: dict[str, ServiceInfo] = {}
    for info in sorted(infos, key=ServiceInfo.order):
        ns = info.service.namespace
        cur = best.get(ns)
        if (info.kind == SERVICE or cur is None or better(info, cur)) and \
                (cur is None or cur.kind != SERVICE):
            best[ns] = info
    canonical: ServiceInfo | None = None
    for info in sorted(best.values(), key=ServiceInfo.order):
        if info.kind == SERVICE:
            canonical = info
        elif info.service.visibility == wl.Service.NAMESPACE:
            continue
        elif canonical is None or better(info, canonical):
            canonical = info
    if canonical is not None and not canonical.service.canonical:
        best[canonical.service.namespace] = replace(
            canonical, service=replace(canonical.service, canonical=True))
    return best
