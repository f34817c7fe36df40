"""The mesh model -> discovery protobufs: what the control plane serves. The inverse of
frompb.py: `frompb` of a message made here gives back the record (tests/mesh_model).

Fields at their default are left unset, as istiod leaves them, except a workload's
`capacity`, which is always sent (ztunnel reads a missing one as 1 too).
"""

from __future__ import annotations

import ipaddress

from google.protobuf import empty_pb2, wrappers_pb2

from core.mesh.model import (
    Gateway,
    IPNetwork,
    LbMode,
    Match,
    Policy,
    Port,
    Service,
    StringKind,
    StringMatch,
    Workload,
)
from meshpb.istio import authorization_pb2 as authz_pb
from meshpb.istio import workload_pb2 as wl_pb


def _packed(ip: str) -> bytes:
    return ipaddress.ip_address(ip).packed


def _port(p: Port) -> wl_pb.Port:
    return wl_pb.Port(service_port=p.service_port, target_port=p.target_port,
                      app_protocol=p.app_protocol)  # type: ignore[arg-type]


def _gateway(g: Gateway) -> wl_pb.GatewayAddress:
    if g.hostname:
        ns, _, host = g.hostname.partition("/")
        return wl_pb.GatewayAddress(
            hostname=wl_pb.NamespacedHostname(namespace=ns, hostname=host),
            hbone_mtls_port=g.hbone_mtls_port)
    network, _, ip = g.address.rpartition("/")
    return wl_pb.GatewayAddress(
        address=wl_pb.NetworkAddress(network=network, address=_packed(ip)),
        hbone_mtls_port=g.hbone_mtls_port)


def workload(w: Workload) -> wl_pb.Workload:
    out = wl_pb.Workload(
        uid=w.uid, name=w.name, namespace=w.namespace,
        addresses=[_packed(ip) for ip in w.addresses], network=w.network,
        hostname=w.hostname, tunnel_protocol=w.tunnel_protocol,  # type: ignore[arg-type]
        trust_domain=w.trust_domain, service_account=w.service_account, node=w.node,
        canonical_name=w.canonical_name, canonical_revision=w.canonical_revision,
        workload_type=w.workload_type, workload_name=w.workload_name,  # type: ignore[arg-type]
        native_tunnel=w.native_tunnel, authorization_policies=w.authorization_policies,
        status=w.status, cluster_id=w.cluster_id,  # type: ignore[arg-type]
        network_mode=w.network_mode,  # type: ignore[arg-type]
        capacity=wrappers_pb2.UInt32Value(value=w.capacity))
    if w.waypoint is not None:
        out.waypoint.CopyFrom(_gateway(w.waypoint))
    if w.network_gateway is not None:
        out.network_gateway.CopyFrom(_gateway(w.network_gateway))
    if any(w.locality):
        region, zone, subzone = w.locality
        out.locality.CopyFrom(wl_pb.Locality(region=region, zone=zone, subzone=subzone))
    for key, ports in w.services:
        out.services[key].ports.extend(_port(p) for p in ports)
    return out


def service(s: Service) -> wl_pb.Service:
    out = wl_pb.Service(
        name=s.name, namespace=s.namespace, hostname=s.hostname,
        addresses=[wl_pb.NetworkAddress(network=v.network, address=_packed(v.address),
                                        length=v.length) for v in s.vips],
        ports=[_port(p) for p in s.ports], subject_alt_names=s.subject_alt_names,
        ip_families=s.ip_families, canonical=s.canonical,  # type: ignore[arg-type]
        visibility=s.visibility)  # type: ignore[arg-type]
    if s.waypoint is not None:
        out.waypoint.CopyFrom(_gateway(s.waypoint))
    if s.lb_mode != LbMode.UNSPECIFIED_MODE or s.lb_routing_preference or s.lb_health_policy:
        out.load_balancing.CopyFrom(wl_pb.LoadBalancing(
            mode=s.lb_mode,  # type: ignore[arg-type]
            routing_preference=s.lb_routing_preference,  # type: ignore[arg-type]
            health_policy=s.lb_health_policy))  # type: ignore[arg-type]
    return out


def address(rec: Workload | Service) -> wl_pb.Address:
    if isinstance(rec, Workload):
        return wl_pb.Address(workload=workload(rec))
    return wl_pb.Address(service=service(rec))


def string_match(m: StringMatch) -> authz_pb.StringMatch:
    if m.kind == StringKind.PRESENCE:
        return authz_pb.StringMatch(presence=empty_pb2.Empty())
    return authz_pb.StringMatch(**{m.kind.value: m.value})


def _cidr(net: IPNetwork) -> authz_pb.Address:
    return authz_pb.Address(address=net.network_address.packed, length=net.prefixlen)


def match(m: Match) -> authz_pb.Match:
    return authz_pb.Match(
        namespaces=[string_match(x) for x in m.namespaces],
        not_namespaces=[string_match(x) for x in m.not_namespaces],
        service_accounts=[authz_pb.ServiceAccountMatch(namespace=a.namespace,
                                                       serviceAccount=a.service_account)
                          for a in m.service_accounts],
        not_service_accounts=[authz_pb.ServiceAccountMatch(namespace=a.namespace,
                                                           serviceAccount=a.service_account)
                              for a in m.not_service_accounts],
        principals=[string_match(x) for x in m.principals],
        not_principals=[string_match(x) for x in m.not_principals],
        source_ips=[_cidr(x) for x in m.source_ips],
        not_source_ips=[_cidr(x) for x in m.not_source_ips],
        destination_ips=[_cidr(x) for x in m.destination_ips],
        not_destination_ips=[_cidr(x) for x in m.not_destination_ips],
        destination_ports=m.destination_ports, not_destination_ports=m.not_destination_ports)


def policy(p: Policy) -> authz_pb.Authorization:
    return authz_pb.Authorization(
        name=p.name, namespace=p.namespace, scope=p.scope,  # type: ignore[arg-type]
        action=p.action,  # type: ignore[arg-type]
        groups=[authz_pb.Group(rules=[authz_pb.Rules(matches=[match(m) for m in r.matches])
                                      for r in g.rules]) for g in p.groups],
        dry_run=p.dry_run)
