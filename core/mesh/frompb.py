"""Discovery protobufs (istio.workload.Address, istio.security.Authorization) -> the mesh
model: the one conversion from the wire, with errors that name what is wrong (the agent
NACKs the resource with the message).

Repeated strings are interned and equal small tuples shared (intern.py), so a converted
100k-workload snapshot stays under 1 KiB per workload.
"""

from __future__ import annotations

import ipaddress
import socket
import sys
from typing import Any

from core.mesh.intern import Interner
from core.mesh.model import (
    NO_LOCALITY,
    Gateway,
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
    Vip,
    Workload,
)
from meshpb.istio import authorization_pb2 as authz_pb
from meshpb.istio import workload_pb2 as wl_pb


class ConvertError(ValueError):
    """A resource the model cannot hold; the message says why (the caller adds its name)."""


_s = sys.intern
_ACTIONS = frozenset(int(x) for x in PolicyAction)
_SCOPES = frozenset(int(x) for x in PolicyScope)


def ip_text(raw: bytes, what: str) -> str:
    if len(raw) == 4:
        return socket.inet_ntop(socket.AF_INET, raw)
    if len(raw) == 16:
        return socket.inet_ntop(socket.AF_INET6, raw)
    raise ConvertError(f"{what}: {len(raw)}-byte address (want 4 or 16)")


def _port(p: wl_pb.Port, what: str) -> Port:
    if not 0 < p.service_port <= 65535 or p.target_port > 65535:
        raise ConvertError(f"{what}: port {p.service_port}->{p.target_port} out of range")
    return Port(p.service_port, p.target_port, p.app_protocol)


def _gateway(g: wl_pb.GatewayAddress, what: str) -> Gateway:
    which = g.WhichOneof("destination")
    if which == "hostname":
        return Gateway(hostname=_s(f"{g.hostname.namespace}/{g.hostname.hostname}"),
                       hbone_mtls_port=g.hbone_mtls_port)
    if which == "address":
        ip = ip_text(g.address.address, what)
        return Gateway(address=_s(f"{g.address.network}/{ip}"),
                       hbone_mtls_port=g.hbone_mtls_port)
    raise ConvertError(f"{what}: gateway has neither hostname nor address")


class Converter:
    """Holds the interner so sharing spans every resource of a stream (and reconnects)."""

    def __init__(self) -> None:
        self.share = Interner()

    def address(self, name: str, version: str, raw: bytes) -> Workload | Service:
        addr = wl_pb.Address()
        try:
            addr.ParseFromString(raw)
        except Exception as e:  # protobuf's DecodeError (no stubs for google.protobuf)
            raise ConvertError(f"cannot decode istio.workload.Address: {e}") from None
        which = addr.WhichOneof("type")
        if which == "workload":
            return self.workload(name, version, addr.workload)
        if which == "service":
            return self.service(name, version, addr.service)
        raise ConvertError("Address has neither workload nor service")

    def workload(self, name: str, version: str, w: wl_pb.Workload) -> Workload:
        if not w.uid:
            raise ConvertError("workload has no uid")
        if w.uid != name:
            raise ConvertError(f"workload uid {w.uid!r} differs from the resource name")
        share = self.share
        addrs = tuple(ip_text(a, "workload address") for a in w.addresses)
        services: tuple[tuple[str, tuple[Port, ...]], ...] = share(tuple(sorted(
            (_s(k), share(tuple(_port(p, f"service {k}") for p in pl.ports)))
            for k, pl in w.services.items())))
        loc = NO_LOCALITY
        if w.HasField("locality"):
            loc = share((_s(w.locality.region), _s(w.locality.zone), _s(w.locality.subzone)))
        return Workload(
            uid=w.uid, name=_s(w.name), namespace=_s(w.namespace), addresses=addrs,
            network=_s(w.network), hostname=w.hostname, tunnel_protocol=w.tunnel_protocol,
            trust_domain=_s(w.trust_domain), service_account=_s(w.service_account),
            node=_s(w.node),
            waypoint=share(_gateway(w.waypoint, "waypoint")) if w.HasField("waypoint") else None,
            network_gateway=share(_gateway(w.network_gateway, "network_gateway"))
            if w.HasField("network_gateway") else None,
            canonical_name=_s(w.canonical_name), canonical_revision=_s(w.canonical_revision),
            workload_type=w.workload_type, workload_name=_s(w.workload_name),
            native_tunnel=w.native_tunnel, services=services,
            authorization_policies=share(tuple(_s(p) for p in w.authorization_policies)),
            status=w.status, cluster_id=_s(w.cluster_id), locality=loc,
            network_mode=w.network_mode,
            capacity=w.capacity.value if w.HasField("capacity") else 1,
            version=_s(version))

    def service(self, name: str, version: str, s: wl_pb.Service) -> Service:
        if not s.hostname or not s.namespace:
            raise ConvertError("service needs a namespace and a hostname")
        key = f"{s.namespace}/{s.hostname}"
        if key != name:
            raise ConvertError(f"service {key!r} differs from the resource name")
        vips = []
        for a in s.addresses:
            ip = ip_text(a.address, "service address")
            length = a.length if a.HasField("length") else None
            if length is not None and length > (32 if ":" not in ip else 128):
                raise ConvertError(f"service address {ip}/{length}: bad prefix length")
            vips.append(Vip(_s(a.network), ip, length))
        lb = s.load_balancing
        return Service(
            name=_s(s.name), namespace=_s(s.namespace), hostname=_s(s.hostname),
            vips=tuple(vips), ports=tuple(_port(p, "service port") for p in s.ports),
            subject_alt_names=tuple(s.subject_alt_names),
            waypoint=_gateway(s.waypoint, "waypoint") if s.HasField("waypoint") else None,
            lb_mode=lb.mode, lb_routing_preference=tuple(lb.routing_preference),
            lb_health_policy=lb.health_policy, ip_families=s.ip_families,
            canonical=s.canonical, visibility=s.visibility, version=version)

    def policy(self, name: str, version: str, raw: bytes) -> Policy:
        a = authz_pb.Authorization()
        try:
            a.ParseFromString(raw)
        except Exception as e:  # protobuf's DecodeError (no stubs for google.protobuf)
            raise ConvertError(f"cannot decode istio.security.Authorization: {e}") from None
        return authorization(name, version, a)


def authorization(name: str, version: str, a: authz_pb.Authorization) -> Policy:
    if not a.name:
        raise ConvertError("authorization has no name")
    key = f"{a.namespace}/{a.name}"
    if key != name:
        raise ConvertError(f"authorization {key!r} differs from the resource name")
    if a.action not in _ACTIONS:
        raise ConvertError(f"unknown action {a.action}")
    # As ztunnel (Scope::try_from): a scope we do not know could select anything.
    if a.scope not in _SCOPES:
        raise ConvertError(f"unknown scope {a.scope}")
    groups = tuple(Group(tuple(Rule(tuple(_match(m) for m in r.matches)) for r in g.rules))
                   for g in a.groups)
    return Policy(name=a.name, namespace=a.namespace, scope=PolicyScope(a.scope),
                  action=PolicyAction(a.action), groups=groups, dry_run=a.dry_run,
                  version=version)


def _strings(ms: Any) -> tuple[StringMatch, ...]:
    out = []
    for m in ms:
        kind = m.WhichOneof("match_type")
        if kind is None:
            raise ConvertError("empty string match")
        out.append(StringMatch(StringKind(kind), "" if kind == "presence" else getattr(m, kind)))
    return tuple(out)


def _cidrs(addrs: Any) -> tuple[IPNetwork, ...]:
    out = []
    for a in addrs:
        ip = ip_text(a.address, "policy address")
        if a.length > (32 if ":" not in ip else 128):
            raise ConvertError(f"policy address {ip}/{a.length}: bad prefix length")
        out.append(ipaddress.ip_network(f"{ip}/{a.length}", strict=False))
    return tuple(out)


def _ports(ps: Any) -> tuple[int, ...]:
    for p in ps:
        if not 0 < p <= 65535:
            raise ConvertError(f"policy port {p} out of range")
    return tuple(ps)


def _sas(ms: Any) -> tuple[ServiceAccountMatch, ...]:
    return tuple(ServiceAccountMatch(m.namespace, m.serviceAccount) for m in ms)


def _match(m: authz_pb.Match) -> Match:
    return Match(
        namespaces=_strings(m.namespaces), not_namespaces=_strings(m.not_namespaces),
        service_accounts=_sas(m.service_accounts),
        not_service_accounts=_sas(m.not_service_accounts),
        principals=_strings(m.principals), not_principals=_strings(m.not_principals),
        source_ips=_cidrs(m.source_ips), not_source_ips=_cidrs(m.not_source_ips),
        destination_ips=_cidrs(m.destination_ips),
        not_destination_ips=_cidrs(m.not_destination_ips),
        destination_ports=_ports(m.destination_ports),
        not_destination_ports=_ports(m.not_destination_ports))
