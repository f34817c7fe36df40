"""Traffic management records (core/mesh/traffic.py) <-> their discovery protobufs
(proto/meshnode/traffic.proto, package meshnode.traffic.v1), both directions.

The control plane encodes (`to_*`), the agent decodes (`from_*`): a record round-trips
exactly (tests/unit/test_trafficpb.py). Decoding checks what the records' own constructors
do not (ranges of proto integers, enum numbers, names against the resource name, CIDRs) and
raises `ConvertError` naming the field, so the agent NACKs the resource with that message.
"""

from __future__ import annotations

import functools
import ipaddress
from collections.abc import Callable, Iterable, Mapping
from typing import Any, TypeVar

from core.mesh.frompb import ConvertError
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
    labels,
)
from meshpb.meshnode import traffic_pb2 as pb

PREFIX = "type.googleapis.com/"
SERVICE_TRAFFIC_TYPE = PREFIX + pb.ServiceTraffic.DESCRIPTOR.full_name
EGRESS_POLICY_TYPE = PREFIX + pb.EgressPolicy.DESCRIPTOR.full_name
WORKLOAD_LABELS_TYPE = PREFIX + pb.WorkloadLabels.DESCRIPTOR.full_name
TRAFFIC_TYPES = (SERVICE_TRAFFIC_TYPE, EGRESS_POLICY_TYPE, WORKLOAD_LABELS_TYPE)

TrafficRecord = ServiceTraffic | EgressPolicy | WorkloadLabels
Message = pb.ServiceTraffic | pb.EgressPolicy | pb.WorkloadLabels
T = TypeVar("T")


def resource_name(rec: TrafficRecord) -> str:
    """The record's resource name (its key in the agent's XdsState)."""
    if isinstance(rec, ServiceTraffic):
        return rec.service
    if isinstance(rec, EgressPolicy):
        return rec.key
    return rec.uid


# ---- model -> proto ----------------------------------------------------------------------

def to_proto(rec: TrafficRecord) -> Message:
    if isinstance(rec, ServiceTraffic):
        return service_traffic(rec)
    if isinstance(rec, EgressPolicy):
        return egress_policy(rec)
    return pb.WorkloadLabels(uid=rec.uid, labels=dict(rec.labels))


def service_traffic(t: ServiceTraffic) -> pb.ServiceTraffic:
    out = pb.ServiceTraffic(service=t.service, virtual_service=t.virtual_service,
                            destination_rule=t.destination_rule)
    for r in t.routes:
        route = out.routes.add(kind=pb.L4Route.Kind.Value(r.kind.name), name=r.name)
        for d in r.destinations:
            route.destinations.add(service=d.service, subset=d.subset, port=d.port,
                                   weight=d.weight)
        for m in r.matches:
            route.matches.add(port=m.port, destination_subnets=[str(n) for n in
                                                                m.destination_subnets],
                              source_labels=dict(m.source_labels),
                              source_namespace=m.source_namespace, sni_hosts=m.sni_hosts)
    for s in t.subsets:
        sub = out.subsets.add(name=s.name, labels=dict(s.labels))
        if s.traffic_policy is not None:
            sub.traffic_policy.CopyFrom(_policy(s.traffic_policy))
    if t.traffic_policy is not None:
        out.traffic_policy.CopyFrom(_policy(t.traffic_policy))
    return out


def _lb(lb: LoadBalancer) -> pb.LoadBalancer:
    out = pb.LoadBalancer(simple=pb.LoadBalancer.Simple.Value(lb.simple.name))
    if lb.consistent_hash is not None:
        out.consistent_hash.use_source_ip = lb.consistent_hash.use_source_ip
        out.consistent_hash.minimum_ring_size = lb.consistent_hash.minimum_ring_size
    return out


def _pool(cp: ConnectionPool) -> pb.ConnectionPool:
    return pb.ConnectionPool(max_connections=cp.max_connections,
                             connect_timeout_seconds=cp.connect_timeout)


def _outlier(od: OutlierDetection) -> pb.OutlierDetection:
    return pb.OutlierDetection(
        consecutive_5xx_errors=od.consecutive_5xx_errors,
        consecutive_gateway_errors=od.consecutive_gateway_errors,
        interval_seconds=od.interval, base_ejection_time_seconds=od.base_ejection_time,
        max_ejection_percent=od.max_ejection_percent, min_health_percent=od.min_health_percent)


def _parts(msg: Any, lb: LoadBalancer | None, cp: ConnectionPool | None,
           od: OutlierDetection | None) -> None:
    if lb is not None:
        msg.load_balancer.CopyFrom(_lb(lb))
    if cp is not None:
        msg.connection_pool.CopyFrom(_pool(cp))
    if od is not None:
        msg.outlier_detection.CopyFrom(_outlier(od))


def _policy(tp: TrafficPolicy) -> pb.TrafficPolicy:
    out = pb.TrafficPolicy()
    _parts(out, tp.load_balancer, tp.connection_pool, tp.outlier_detection)
    for p in tp.port_level:
        _parts(out.port_level.add(port=p.port), p.load_balancer, p.connection_pool,
               p.outlier_detection)
    return out


def egress_policy(e: EgressPolicy) -> pb.EgressPolicy:
    out = pb.EgressPolicy(namespace=e.namespace, name=e.name,
                          mode=pb.EgressPolicy.Mode.Value(e.mode.name),
                          selector=dict(e.selector))
    for ln in e.listeners:
        out.listeners.add(port=ln.port, hosts=[str(h) for h in ln.hosts])
    return out


def serialize(rec: TrafficRecord) -> bytes:
    """The resource's bytes: deterministic (map order), so a content hash is a version."""
    data: bytes = to_proto(rec).SerializeToString(deterministic=True)
    return data


# ---- proto -> model ----------------------------------------------------------------------

def _check(what: str, fn: Callable[[], T]) -> T:
    """Run a record constructor; its ValueError becomes a ConvertError naming `what`."""
    try:
        return fn()
    except ValueError as e:
        raise ConvertError(f"{what}: {e}") from None


def _port(v: int, what: str, zero_ok: bool = True) -> int:
    if v > 65535 or (v == 0 and not zero_ok):
        raise ConvertError(f"{what}: port {v} out of range")
    return v


def _enum(v: int, kind: type[T], what: str) -> T:
    try:
        return kind(v)  # type: ignore[call-arg]
    except ValueError:
        raise ConvertError(f"{what}: unknown value {v}") from None


def _labels(m: Mapping[str, str]) -> tuple[tuple[str, str], ...]:
    return labels(m)


def _parse(msg: Any, raw: bytes) -> None:
    try:
        msg.ParseFromString(raw)
    except Exception as e:  # protobuf's DecodeError (no stubs for google.protobuf)
        raise ConvertError(f"cannot decode {msg.DESCRIPTOR.full_name}: {e}") from None


def _subnets(texts: Iterable[str], what: str) -> tuple[ipaddress.IPv4Network
                                                         | ipaddress.IPv6Network, ...]:
    out = []
    for i, t in enumerate(texts):
        try:
            out.append(ipaddress.ip_network(t, strict=False))
        except ValueError:
            raise ConvertError(f"{what}.destination_subnets[{i}]: {t!r} is not a CIDR") \
                from None
    return tuple(out)


def _from_lb(m: pb.LoadBalancer, what: str) -> LoadBalancer:
    ch = None
    if m.HasField("consistent_hash"):
        ch = _check(f"{what}.consistent_hash", lambda: ConsistentHash(
            m.consistent_hash.use_source_ip, m.consistent_hash.minimum_ring_size))
    return LoadBalancer(_enum(m.simple, SimpleLb, f"{what}.simple"), ch)


def _from_parts(m: Any, what: str) -> tuple[LoadBalancer | None, ConnectionPool | None,
                                             OutlierDetection | None]:
    lb = _from_lb(m.load_balancer, f"{what}.load_balancer") \
        if m.HasField("load_balancer") else None
    cp = od = None
    if m.HasField("connection_pool"):
        c = m.connection_pool
        cp = _check(f"{what}.connection_pool", lambda: ConnectionPool(
            c.max_connections, c.connect_timeout_seconds))
    if m.HasField("outlier_detection"):
        o = m.outlier_detection
        od = _check(f"{what}.outlier_detection", lambda: OutlierDetection(
            o.consecutive_5xx_errors, o.consecutive_gateway_errors, o.interval_seconds,
            o.base_ejection_time_seconds, o.max_ejection_percent, o.min_health_percent))
    return lb, cp, od


def _from_policy(m: pb.TrafficPolicy, what: str) -> TrafficPolicy:
    lb, cp, od = _from_parts(m, what)
    ports = []
    for i, p in enumerate(m.port_level):
        at = f"{what}.port_level[{i}]"
        ports.append(PortTrafficPolicy(_port(p.port, at, zero_ok=False), *_from_parts(p, at)))
    return TrafficPolicy(lb, cp, od, tuple(ports))


def _from_route(m: pb.L4Route, what: str) -> L4Route:
    dests = []
    for i, d in enumerate(m.destinations):
        at = f"{what}.destinations[{i}]"
        if not d.service:
            raise ConvertError(f"{at}: no service")
        dests.append(RouteDestination(d.service, d.subset, _port(d.port, at), d.weight))
    matches = []
    for i, x in enumerate(m.matches):
        at = f"{what}.matches[{i}]"
        matches.append(L4Match(_port(x.port, at), _subnets(x.destination_subnets, at),
                               _labels(x.source_labels), x.source_namespace,
                               tuple(x.sni_hosts)))
    kind = _enum(m.kind, RouteKind, f"{what}.kind")
    return _check(what, lambda: L4Route(kind, tuple(dests), tuple(matches), m.name))


def service_traffic_from(name: str, version: str, raw: bytes) -> ServiceTraffic:
    m = pb.ServiceTraffic()
    _parse(m, raw)
    if m.service != name:
        raise ConvertError(f"service {m.service!r} differs from the resource name")
    routes = tuple(_from_route(r, f"routes[{i}]") for i, r in enumerate(m.routes))
    subsets = []
    for i, s in enumerate(m.subsets):
        at = f"subsets[{i}]"
        tp = _from_policy(s.traffic_policy, f"{at}.traffic_policy") \
            if s.HasField("traffic_policy") else None
        subsets.append(_check(at, functools.partial(Subset, s.name, _labels(s.labels), tp)))
    tp = _from_policy(m.traffic_policy, "traffic_policy") \
        if m.HasField("traffic_policy") else None
    return ServiceTraffic(m.service, routes, tuple(subsets), tp, m.virtual_service,
                          m.destination_rule, version)


def egress_policy_from(name: str, version: str, raw: bytes) -> EgressPolicy:
    m = pb.EgressPolicy()
    _parse(m, raw)
    listeners = []
    for i, ln in enumerate(m.listeners):
        at = f"listeners[{i}]"
        hosts = tuple(_check(f"{at}.hosts[{j}]", functools.partial(EgressHost.parse, h))
                      for j, h in enumerate(ln.hosts))
        listeners.append(EgressListener(hosts, _port(ln.port, at)))
    rec = EgressPolicy(m.namespace, m.name, _enum(m.mode, OutboundMode, "mode"),
                       tuple(listeners), _labels(m.selector), version)
    if rec.key != name:
        raise ConvertError(f"egress policy {rec.key!r} differs from the resource name")
    return rec


def workload_labels_from(name: str, version: str, raw: bytes) -> WorkloadLabels:
    m = pb.WorkloadLabels()
    _parse(m, raw)
    if not m.uid or m.uid != name:
        raise ConvertError(f"workload labels uid {m.uid!r} differs from the resource name")
    return WorkloadLabels(m.uid, _labels(m.labels), version)


DECODERS: dict[str, Callable[[str, str, bytes], TrafficRecord]] = {
    SERVICE_TRAFFIC_TYPE: service_traffic_from,
    EGRESS_POLICY_TYPE: egress_policy_from,
    WORKLOAD_LABELS_TYPE: workload_labels_from,
}
