"""Mesh file model -> the mesh model (core/mesh/model.py) -> istio.workload.Address and
istio.security.Authorization resources (core/mesh/topb.py)."""

from __future__ import annotations

from google.protobuf import any_pb2

from controlplane.mesh import IP, Mesh, PolicySpec, ServiceSpec, WorkloadSpec, pattern
from controlplane.resources import (
    ADDRESS_TYPE,
    AUTHORIZATION_TYPE,
    Entry,
    Snapshot,
    make_entry,
    policy_entry,
    service_entry,
    workload_entry,
)
from core.mesh import topb
from core.mesh.model import (
    NO_LOCALITY,
    Group,
    HealthPolicy,
    LbMode,
    LbScope,
    Policy,
    PolicyAction,
    PolicyScope,
    Port,
    Rule,
    Service,
    TunnelProtocol,
    Vip,
    Workload,
    WorkloadStatus,
)
from meshpb.istio import authorization_pb2 as authz
from meshpb.istio import workload_pb2 as wl

_APP_PROTOCOL = {"unknown": wl.UNKNOWN, "http11": wl.HTTP11, "http2": wl.HTTP2,
                 "grpc": wl.GRPC, "tcp": wl.TCP, "tls": wl.TLS}
_LB_MODE = {"unspecified": LbMode.UNSPECIFIED_MODE, "strict": LbMode.STRICT,
            "failover": LbMode.FAILOVER, "passthrough": LbMode.PASSTHROUGH}
_LB_SCOPE = {"region": LbScope.REGION, "zone": LbScope.ZONE, "subzone": LbScope.SUBZONE,
             "node": LbScope.NODE, "cluster": LbScope.CLUSTER, "network": LbScope.NETWORK}
_LB_HEALTH = {"only_healthy": HealthPolicy.ONLY_HEALTHY, "allow_all": HealthPolicy.ALLOW_ALL}
_SCOPE = {"global": PolicyScope.GLOBAL, "namespace": PolicyScope.NAMESPACE,
          "workload": PolicyScope.WORKLOAD_SELECTOR}
_ACTION = {"allow": PolicyAction.ALLOW, "deny": PolicyAction.DENY}


def snapshot(mesh: Mesh, trust_domain: str) -> Snapshot:
    services = {s.key: s for s in mesh.services}
    addresses: dict[str, Entry] = {
        svc.key: service_entry(service_model(svc)) for svc in mesh.services}
    for w in mesh.workloads:
        addresses[w.uid] = workload_entry(
            workload_model(w, services, mesh.cluster_id, trust_domain))
    policies = {p.key: policy_entry(policy_model(p)) for p in mesh.policies}
    for bad in mesh.malformed:
        # 0xFF is a field tag with wire type 7, which no protobuf decoder accepts.
        body = any_pb2.Any(type_url=ADDRESS_TYPE if bad.kind == "address"
                           else AUTHORIZATION_TYPE, value=b"\xff")
        (addresses if bad.kind == "address" else policies)[bad.name] = make_entry(body)
    return {ADDRESS_TYPE: addresses, AUTHORIZATION_TYPE: policies}


def service_model(svc: ServiceSpec) -> Service:
    return Service(
        name=svc.name, namespace=svc.namespace, hostname=svc.hostname,
        vips=tuple(Vip("", str(vip)) for vip in svc.vips),
        ports=tuple(Port(p.port, p.target_port, _APP_PROTOCOL[p.protocol]) for p in svc.ports),
        lb_mode=_LB_MODE[svc.lb_mode],
        lb_routing_preference=tuple(_LB_SCOPE[s] for s in svc.lb_routing),
        lb_health_policy=_LB_HEALTH[svc.lb_health])


def workload_model(w: WorkloadSpec, services: dict[str, ServiceSpec], cluster_id: str,
                   trust_domain: str) -> Workload:
    return Workload(
        uid=w.uid, name=w.name, namespace=w.namespace,
        addresses=tuple(str(ip) for ip in w.ips), network=w.network,
        tunnel_protocol=TunnelProtocol.HBONE if w.hbone else TunnelProtocol.NONE,
        trust_domain=trust_domain, service_account=w.service_account, node=w.node,
        workload_type=wl.POD, workload_name=w.name,
        canonical_name=w.labels.get("app", w.name),
        canonical_revision=w.labels.get("version", "latest"),
        authorization_policies=tuple(w.policies),
        status=WorkloadStatus.HEALTHY if w.healthy else WorkloadStatus.UNHEALTHY,
        cluster_id=w.cluster or cluster_id, capacity=1,
        locality=w.locality or NO_LOCALITY,
        services=tuple(sorted(
            (key, tuple(Port(p.port, p.target_port) for p in services[key].ports))
            for key in w.services)))


def policy_model(p: PolicySpec) -> Policy:
    groups = []
    for rule in p.rules:
        # Each side is one Rule whose matches are OR-ed; the two sides are AND-ed.
        rules = [Rule(tuple(side)) for side in (rule.sources, rule.destinations) if side]
        groups.append(Group(tuple(rules)))
    return Policy(name=p.name, namespace=p.namespace, scope=_SCOPE[p.scope],
                  action=_ACTION[p.action], groups=tuple(groups), dry_run=p.dry_run)


def service_proto(svc: ServiceSpec) -> wl.Service:
    return topb.service(service_model(svc))


def workload_proto(w: WorkloadSpec, services: dict[str, ServiceSpec], cluster_id: str,
                   trust_domain: str) -> wl.Workload:
    return topb.workload(workload_model(w, services, cluster_id, trust_domain))


def policy_proto(p: PolicySpec) -> authz.Authorization:
    return topb.policy(policy_model(p))


def string_match(text: str) -> authz.StringMatch:
    """The protobuf of a mesh-file pattern (`*`, `x*`, `*x`, exact): controlplane/mesh.py."""
    return topb.string_match(pattern(text))



__all__ = ["IP", "policy_proto", "service_proto", "snapshot", "string_match", "workload_proto"]
