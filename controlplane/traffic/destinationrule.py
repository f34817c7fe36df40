"""DestinationRule -> the subsets and traffic policy of the services its host stands for.

Validation as Istio's ValidateDestinationRule (pkg/config/validation/validation.go), worded
as there; what an L4 proxy cannot apply is dropped with a warning, never silently:
- `connectionPool.http`, `tls`, `tunnel`, `proxyProtocol`, `loadBalancer.localityLbSetting`,
  `warmup`, outlier detection's local-origin splitting: not applied at L4 (the node proxy's
  upstream TLS is HBONE's, and locality picking is the workload API's `load_balancing`);
- `consistentHash` on an HTTP header, cookie or query parameter cannot be computed at L4: the
  ring is used without a key (records' ConsistentHash(use_source_ip=False));
- `exportTo` is not applied (every rule is visible to every namespace);
- a rule with `workloadSelector` (it applies to some clients only) is skipped with a warning:
  a rule here is per service, for every client.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from controlplane.ambient import read
from controlplane.traffic import fields
from controlplane.traffic.hosts import fqdn
from core.mesh.traffic import (
    DEFAULT_BASE_EJECTION_TIME,
    DEFAULT_CONNECT_TIMEOUT,
    DEFAULT_CONSECUTIVE_5XX,
    DEFAULT_INTERVAL,
    DEFAULT_MAX_EJECTION_PERCENT,
    DEFAULT_MINIMUM_RING_SIZE,
    MAX_CONNECTIONS_UNLIMITED,
    ConnectionPool,
    ConsistentHash,
    LoadBalancer,
    OutlierDetection,
    PortTrafficPolicy,
    SimpleLb,
    Subset,
    TrafficPolicy,
    labels,
)


@dataclass(frozen=True, slots=True)
class Rule:
    host: str                         # resolved against the rule's namespace
    subsets: tuple[Subset, ...]
    traffic_policy: TrafficPolicy | None


def _lb(v: Any, f: str, warnings: list[str]) -> LoadBalancer:
    m = read.mapping(v, f)
    for key in ("localityLbSetting", "zoneAwareLbSetting", "warmup"):
        if key in m:
            warnings.append(f"{f}.{key}: not applied at L4 (ignored)")
    ch = m.get("consistentHash")
    if ch is None:
        simple = read.string(m.get("simple"), f"{f}.simple", "UNSPECIFIED")
        try:
            return LoadBalancer(SimpleLb[simple])
        except KeyError:
            raise read.Bad(f"{f}.simple", f"unknown load balancer {simple!r}") from None
    fc = f"{f}.consistentHash"
    ch = read.mapping(ch, fc)
    ring = DEFAULT_MINIMUM_RING_SIZE
    old = ch.get("minimumRingSize")
    if old is not None:
        if ch.get("ringHash") is not None or ch.get("maglev") is not None:
            raise read.Bad(fc, "only one of MinimumRingSize or Maglev/Ringhash can be specified")
        ring = fields.uint32(old, f"{fc}.minimumRingSize", ring) or ring
    rh = ch.get("ringHash")
    if rh is not None:
        ring = fields.uint32(read.mapping(rh, f"{fc}.ringHash").get("minimumRingSize"),
                             f"{fc}.ringHash.minimumRingSize", ring) or ring
    if ch.get("maglev") is not None:
        warnings.append(f"{fc}.maglev: served as a hash ring (same guarantee: removing an "
                        "endpoint moves only its keys)")
    source_ip = read.boolean(ch.get("useSourceIp"), f"{fc}.useSourceIp")
    if not source_ip:
        keys = [k for k in ("httpHeaderName", "httpCookie", "httpQueryParameterName") if k in ch]
        warnings.append(f"{fc}: {', '.join(keys) or 'no hash key'}: not computable at L4; "
                        "endpoints are picked from the ring at random")
    return LoadBalancer(consistent_hash=ConsistentHash(source_ip, ring))


def _pool(v: Any, f: str, warnings: list[str]) -> ConnectionPool | None:
    m = read.mapping(v, f)
    if m.get("tcp") is None and m.get("http") is None:
        raise read.Bad(f, "connection pool must have at least one field")
    if m.get("http") is not None:
        warnings.append(f"{f}.http: HTTP settings are not applied at L4 (ignored)")
    if m.get("tcp") is None:
        return None
    ft = f"{f}.tcp"
    tcp = read.mapping(m["tcp"], ft)
    n = read.integer(tcp.get("maxConnections"), f"{ft}.maxConnections", -2**31, 2**31 - 1, 0)
    if n < 0:
        raise read.Bad(f"{ft}.maxConnections", "max connections must be non-negative")
    ct = tcp.get("connectTimeout")
    timeout = DEFAULT_CONNECT_TIMEOUT if ct is None else fields.duration(
        ct, f"{ft}.connectTimeout")
    for key in ("maxConnectionDuration", "idleTimeout"):
        if tcp.get(key) is not None:
            fields.duration(tcp[key], f"{ft}.{key}")
            warnings.append(f"{ft}.{key}: not applied (ignored)")
    if tcp.get("tcpKeepalive") is not None:
        warnings.append(f"{ft}.tcpKeepalive: not applied (ignored)")
    return ConnectionPool(n or MAX_CONNECTIONS_UNLIMITED, timeout)


def _outlier(v: Any, f: str, warnings: list[str]) -> OutlierDetection:
    m = read.mapping(v, f)
    if m.get("consecutiveErrors") is not None:
        warnings.append(f"{f}.consecutiveErrors: outlier detection consecutive errors is "
                        "deprecated, use consecutiveGatewayErrors or consecutive5xxErrors "
                        "instead (ignored)")
    split = read.boolean(m.get("splitExternalLocalOriginErrors"),
                         f"{f}.splitExternalLocalOriginErrors")
    local = fields.uint32(m.get("consecutiveLocalOriginFailures"),
                          f"{f}.consecutiveLocalOriginFailures", 0)
    if not split and local > 0:
        raise read.Bad(f, "outlier detection consecutive local origin failures is specified, "
                          "but split external local origin errors is set to false")
    if split:
        warnings.append(f"{f}.splitExternalLocalOriginErrors: at L4 every error is a "
                        "connect error or a reset (ignored)")
    interval = m.get("interval")
    base = m.get("baseEjectionTime")
    return OutlierDetection(
        consecutive_5xx_errors=fields.uint32(m.get("consecutive5xxErrors"),
                                             f"{f}.consecutive5xxErrors",
                                             DEFAULT_CONSECUTIVE_5XX),
        consecutive_gateway_errors=fields.uint32(m.get("consecutiveGatewayErrors"),
                                                 f"{f}.consecutiveGatewayErrors", 0),
        interval=DEFAULT_INTERVAL if interval is None else fields.duration(
            interval, f"{f}.interval"),
        base_ejection_time=DEFAULT_BASE_EJECTION_TIME if base is None else fields.duration(
            base, f"{f}.baseEjectionTime"),
        max_ejection_percent=fields.percent(m.get("maxEjectionPercent"),
                                            f"{f}.maxEjectionPercent",
                                            DEFAULT_MAX_EJECTION_PERCENT),
        min_health_percent=fields.percent(m.get("minHealthPercent"), f"{f}.minHealthPercent",
                                          0))


_IGNORED = ("tls", "tunnel", "proxyProtocol", "retryBudget")


def _parts(m: dict[str, Any], f: str, warnings: list[str]) -> tuple[
        LoadBalancer | None, ConnectionPool | None, OutlierDetection | None]:
    for key in _IGNORED:
        if m.get(key) is not None:
            warnings.append(f"{f}.{key}: not applied by the node proxy (ignored)")
    lb = None if m.get("loadBalancer") is None else _lb(m["loadBalancer"], f"{f}.loadBalancer",
                                                        warnings)
    cp = None if m.get("connectionPool") is None else _pool(
        m["connectionPool"], f"{f}.connectionPool", warnings)
    od = None if m.get("outlierDetection") is None else _outlier(
        m["outlierDetection"], f"{f}.outlierDetection", warnings)
    return lb, cp, od


def traffic_policy(v: Any, f: str, warnings: list[str]) -> TrafficPolicy | None:
    """validateTrafficPolicy; None when absent."""
    if v is None:
        return None
    m = read.mapping(v, f)
    if not any(m.get(k) is not None for k in ("outlierDetection", "connectionPool",
                                               "loadBalancer", "portLevelSettings", *_IGNORED)):
        raise read.Bad(f, "traffic policy must have at least one field")
    if m.get("tunnel") is not None and m.get("proxyProtocol") is not None:
        raise read.Bad(f, "tunnel and proxyProtocol must not be set together")
    lb, cp, od = _parts(m, f, warnings)
    ports: list[PortTrafficPolicy] = []
    seen: set[int] = set()
    for i, p in enumerate(read.items(m.get("portLevelSettings"), f"{f}.portLevelSettings")):
        fp = f"{f}.portLevelSettings[{i}]"
        p = read.mapping(p, fp)
        port = read.mapping(p.get("port"), f"{fp}.port").get("number")
        if port is None:
            raise read.Bad(f"{fp}.port", "portTrafficPolicy must have valid port")
        number = read.port(port, f"{fp}.port.number")
        if not any(p.get(k) is not None for k in ("outlierDetection", "connectionPool",
                                                   "loadBalancer", "tls")):
            raise read.Bad(fp, "port traffic policy must have at least one field")
        if number in seen:  # Envoy would take the first; say so rather than guess
            warnings.append(f"{fp}.port.number: port {number} listed twice; the first is used")
            continue
        seen.add(number)
        ports.append(PortTrafficPolicy(number, *_parts(p, fp, warnings)))
    return TrafficPolicy(lb, cp, od, tuple(ports))


def destination_rule(obj: dict[str, Any], domain_suffix: str,
                     warnings: list[str]) -> Rule | None:
    """The rule, or None when it does not apply to every client (workloadSelector)."""
    ns = read.namespace(obj)
    spec = read.spec(obj)
    host = fields.wildcard_domain(spec.get("host"), "spec.host")
    if spec.get("exportTo") is not None:
        read.strings(spec.get("exportTo"), "spec.exportTo")
        warnings.append("spec.exportTo: not applied (the rule is visible to every namespace)")
    if spec.get("workloadSelector") is not None:
        warnings.append("spec.workloadSelector: a rule for some clients only is not "
                        "supported; the rule is not applied")
        return None
    tp = traffic_policy(spec.get("trafficPolicy"), "spec.trafficPolicy", warnings)
    subsets: list[Subset] = []
    names: set[str] = set()
    for i, s in enumerate(read.items(spec.get("subsets"), "spec.subsets")):
        f = f"spec.subsets[{i}]"
        s = read.mapping(s, f)
        name = fields.subset_name(s.get("name"), f"{f}.name")
        if name in names:
            raise read.Bad(f"{f}.name", f"duplicate subset names: {name}")
        names.add(name)
        subsets.append(Subset(name, labels(fields.label_map(s.get("labels"), f"{f}.labels")),
                              traffic_policy(s.get("trafficPolicy"), f"{f}.trafficPolicy",
                                             warnings)))
    return Rule(fqdn(host, ns, domain_suffix), tuple(subsets), tp)
