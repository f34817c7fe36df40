"""Mesh file model -> istio.workload.Address and istio.security.Authorization resources."""

from __future__ import annotations

from google.protobuf import any_pb2, empty_pb2, wrappers_pb2

from controlplane.mesh import CIDR, IP, MatchSpec, Mesh, PolicySpec, ServiceSpec, WorkloadSpec
from controlplane.resources import (
    ADDRESS_TYPE,
    AUTHORIZATION_TYPE,
    Entry,
    Snapshot,
    make_entry,
)
from meshpb.istio import authorization_pb2 as authz
from meshpb.istio import workload_pb2 as wl

_APP_PROTOCOL = {"unknown": wl.UNKNOWN, "http11": wl.HTTP11, "http2": wl.HTTP2,
                 "grpc": wl.GRPC, "tcp": wl.TCP, "tls": wl.TLS}
_LB_MODE = {"unspecified": wl.LoadBalancing.UNSPECIFIED_MODE, "strict": wl.LoadBalancing.STRICT,
            "failover": wl.LoadBalancing.FAILOVER, "passthrough": wl.LoadBalancing.PASSTHROUGH}
_LB_SCOPE = {"region": wl.LoadBalancing.REGION, "zone": wl.LoadBalancing.ZONE,
             "subzone": wl.LoadBalancing.SUBZONE, "node": wl.LoadBalancing.NODE,
             "cluster": wl.LoadBalancing.CLUSTER, "network": wl.LoadBalancing.NETWORK}
_LB_HEALTH = {"only_healthy": wl.LoadBalancing.ONLY_HEALTHY,
              "allow_all": wl.LoadBalancing.ALLOW_ALL}
_SCOPE = {"global": authz.GLOBAL, "namespace": authz.NAMESPACE,
          "workload": authz.WORKLOAD_SELECTOR}
_ACTION = {"allow": authz.ALLOW, "deny": authz.DENY}


def snapshot(mesh: Mesh, trust_domain: str) -> Snapshot:
    services = {s.key: s for s in mesh.services}
    addresses: dict[str, Entry] = {}
    for svc in mesh.services:
        addresses[svc.key] = make_entry(
            _pack(wl.Address(service=service_proto(svc))),
            tuple(f"/{vip}" for vip in svc.vips))
    for w in mesh.workloads:
        addresses[w.uid] = make_entry(
            _pack(wl.Address(workload=workload_proto(w, services, mesh.cluster_id,
                                                     trust_domain))),
            tuple(f"{w.network}/{ip}" for ip in w.ips))
    policies = {p.key: make_entry(_pack(policy_proto(p))) for p in mesh.policies}
    for bad in mesh.malformed:
        # 0xFF is a field tag with wire type 7, which no protobuf decoder accepts.
        body = any_pb2.Any(type_url=ADDRESS_TYPE if bad.kind == "address"
                           else AUTHORIZATION_TYPE, value=b"\xff")
        (addresses if bad.kind == "address" else policies)[bad.name] = make_entry(body)
    return {ADDRESS_TYPE: addresses, AUTHORIZATION_TYPE: policies}


def service_proto(svc: ServiceSpec) -> wl.Service:
    out = wl.Service(
        name=svc.name, namespace=svc.namespace, hostname=svc.hostname,
        addresses=[wl.NetworkAddress(network="", address=vip.packed) for vip in svc.vips],
        ports=[wl.Port(service_port=p.port, target_port=p.target_port,
                       app_protocol=_APP_PROTOCOL[p.protocol]) for p in svc.ports])
    if svc.lb_mode != "unspecified" or svc.lb_routing or svc.lb_health != "only_healthy":
        out.load_balancing.CopyFrom(wl.LoadBalancing(
            mode=_LB_MODE[svc.lb_mode],
            routing_preference=[_LB_SCOPE[s] for s in svc.lb_routing],
            health_policy=_LB_HEALTH[svc.lb_health]))
    return out


def workload_proto(w: WorkloadSpec, services: dict[str, ServiceSpec], cluster_id: str,
                   trust_domain: str) -> wl.Workload:
    out = wl.Workload(
        uid=w.uid, name=w.name, namespace=w.namespace,
        addresses=[ip.packed for ip in w.ips], network=w.network,
        tunnel_protocol=wl.HBONE if w.hbone else wl.NONE,
        trust_domain=trust_domain, service_account=w.service_account, node=w.node,
        workload_type=wl.POD, workload_name=w.name,
        canonical_name=w.labels.get("app", w.name),
        canonical_revision=w.labels.get("version", "latest"),
        authorization_policies=w.policies,
        status=wl.HEALTHY if w.healthy else wl.UNHEALTHY, cluster_id=w.cluster or cluster_id,
        capacity=wrappers_pb2.UInt32Value(value=1))
    if w.locality is not None:
        region, zone, subzone = w.locality
        out.locality.CopyFrom(wl.Locality(region=region, zone=zone, subzone=subzone))
    for key in w.services:
        out.services[key].ports.extend(
            wl.Port(service_port=p.port, target_port=p.target_port) for p in services[key].ports)
    return out


def policy_proto(p: PolicySpec) -> authz.Authorization:
    groups = []
    for rule in p.rules:
        rules = []
        # Each side is one Rules whose matches are OR-ed; the two sides are AND-ed.
        if rule.sources:
            rules.append(authz.Rules(matches=[_match(m) for m in rule.sources]))
        if rule.destinations:
            rules.append(authz.Rules(matches=[_match(m) for m in rule.destinations]))
        groups.append(authz.Group(rules=rules))
    return authz.Authorization(name=p.name, namespace=p.namespace, scope=_SCOPE[p.scope],
                               action=_ACTION[p.action], groups=groups, dry_run=p.dry_run)


def _match(m: MatchSpec) -> authz.Match:
    return authz.Match(
        principals=[string_match(x) for x in m.principals],
        not_principals=[string_match(x) for x in m.not_principals],
        namespaces=[string_match(x) for x in m.namespaces],
        not_namespaces=[string_match(x) for x in m.not_namespaces],
        source_ips=[_cidr(x) for x in m.source_ips],
        not_source_ips=[_cidr(x) for x in m.not_source_ips],
        destination_ips=[_cidr(x) for x in m.destination_ips],
        not_destination_ips=[_cidr(x) for x in m.not_destination_ips],
        destination_ports=m.ports, not_destination_ports=m.not_ports)


def string_match(pattern: str) -> authz.StringMatch:
    """Istio's pattern syntax: `*` any value, `x*` prefix, `*x` suffix, else exact."""
    if pattern == "*":
        return authz.StringMatch(presence=empty_pb2.Empty())
    if pattern.endswith("*"):
        return authz.StringMatch(prefix=pattern[:-1])
    if pattern.startswith("*"):
        return authz.StringMatch(suffix=pattern[1:])
    return authz.StringMatch(exact=pattern)


def _cidr(net: CIDR) -> authz.Address:
    return authz.Address(address=net.network_address.packed, length=net.prefixlen)


def _pack(msg: wl.Address | authz.Authorization) -> any_pb2.Any:
    out = any_pb2.Any()
    # Deterministic bytes keep content-hash versions stable (map field order otherwise varies).
    out.type_url = f"type.googleapis.com/{msg.DESCRIPTOR.full_name}"
    out.value = msg.SerializeToString(deterministic=True)
    return out


__all__ = ["IP", "policy_proto", "service_proto", "snapshot", "string_match", "workload_proto"]
