"""The mesh model: workloads, services and L4 policies, one set of records for the agent, the
proxy and the control plane (as ztunnel's one ProxyState).

Small, immutable, slotted: the agent holds a 100k-workload snapshot in < 1 KiB per workload
(docs/xds-client.md has the measurements), so records have no per-instance `__dict__`, IPs
are kept as text (the same string object is both the record field and the key of a by-IP
index) and enum-valued fields of workloads and services are the protobuf's plain ints (a
value a newer control plane adds passes through). Derived values are properties, which cost
no memory per record.

Protobuf <-> model: frompb.py, topb.py. Model <-> the agent -> proxy channel: channel.py.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, fields
from enum import IntEnum, StrEnum

DEFAULT_TRUST_DOMAIN = "cluster.local"
DEFAULT_SERVICE_ACCOUNT = "default"
# The cluster ztunnel assumes when a workload's cluster_id is empty.
DEFAULT_CLUSTER = "Kubernetes"
NO_LOCALITY: tuple[str, str, str] = ("", "", "")

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


# ---- enums: the values of istio.workload / istio.security ----------------------------------

class TunnelProtocol(IntEnum):
    NONE = 0
    HBONE = 1
    LEGACY_ISTIO_MTLS = 2


class WorkloadStatus(IntEnum):
    HEALTHY = 0
    UNHEALTHY = 1


class LbMode(IntEnum):
    """LoadBalancing.Mode."""

    UNSPECIFIED_MODE = 0
    STRICT = 1
    FAILOVER = 2
    PASSTHROUGH = 3


class HealthPolicy(IntEnum):
    """LoadBalancing.HealthPolicy."""

    ONLY_HEALTHY = 0
    ALLOW_ALL = 1


class LbScope(IntEnum):
    """LoadBalancing.Scope: what a routing preference compares between source and endpoint."""

    UNSPECIFIED_SCOPE = 0
    REGION = 1
    ZONE = 2
    SUBZONE = 3
    NODE = 4
    CLUSTER = 5
    NETWORK = 6


class PolicyAction(IntEnum):
    ALLOW = 0
    DENY = 1


class PolicyScope(IntEnum):
    GLOBAL = 0
    NAMESPACE = 1
    WORKLOAD_SELECTOR = 2


class StringKind(StrEnum):
    EXACT = "exact"
    PREFIX = "prefix"
    SUFFIX = "suffix"
    PRESENCE = "presence"


# ---- addresses ---------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class Port:
    service_port: int
    target_port: int      # 0: the same as service_port
    app_protocol: int = 0


@dataclass(frozen=True, slots=True)
class Gateway:
    """A waypoint or network gateway: either `namespace/hostname` or `network/ip`."""

    hostname: str = ""   # namespace/hostname
    address: str = ""    # network/ip
    hbone_mtls_port: int = 0


@dataclass(frozen=True, slots=True)
class Workload:
    uid: str
    name: str
    namespace: str
    addresses: tuple[str, ...]           # textual IPs
    network: str = ""
    hostname: str = ""
    tunnel_protocol: int = TunnelProtocol.NONE
    trust_domain: str = ""               # empty: DEFAULT_TRUST_DOMAIN
    service_account: str = ""            # empty: DEFAULT_SERVICE_ACCOUNT
    node: str = ""
    waypoint: Gateway | None = None
    network_gateway: Gateway | None = None
    canonical_name: str = ""
    canonical_revision: str = ""
    workload_type: int = 0
    workload_name: str = ""
    native_tunnel: bool = False
    # service key "namespace/hostname" -> ports of this workload for that service.
    services: tuple[tuple[str, tuple[Port, ...]], ...] = ()
    authorization_policies: tuple[str, ...] = ()   # selector-scoped policy keys "ns/name"
    status: int = WorkloadStatus.HEALTHY
    cluster_id: str = ""                 # empty: DEFAULT_CLUSTER
    locality: tuple[str, str, str] = NO_LOCALITY   # region, zone, subzone
    network_mode: int = 0
    capacity: int = 1
    version: str = ""                    # the discovery resource's version

    @property
    def spiffe_id(self) -> str:
        # Elided trust domain / service account mean the mesh defaults (workload.proto).
        td = self.trust_domain or DEFAULT_TRUST_DOMAIN
        sa = self.service_account or DEFAULT_SERVICE_ACCOUNT
        return f"spiffe://{td}/ns/{self.namespace}/sa/{sa}"

    @property
    def uses_hbone(self) -> bool:
        return self.tunnel_protocol == TunnelProtocol.HBONE or self.native_tunnel

    @property
    def healthy(self) -> bool:
        return self.status == WorkloadStatus.HEALTHY

    @property
    def cluster(self) -> str:
        return self.cluster_id or DEFAULT_CLUSTER

    def port_for(self, service_key: str, port: int) -> Port | None:
        """This workload's port for `port` of the service `service_key`, if it has one."""
        for key, ports in self.services:
            if key == service_key:
                return next((p for p in ports if p.service_port == port), None)
        return None


@dataclass(frozen=True, slots=True)
class Vip:
    network: str
    address: str          # textual IP
    length: int | None = None   # CIDR VIP prefix length when set


@dataclass(frozen=True, slots=True)
class Service:
    name: str
    namespace: str
    hostname: str
    vips: tuple[Vip, ...] = ()
    ports: tuple[Port, ...] = ()
    subject_alt_names: tuple[str, ...] = ()
    waypoint: Gateway | None = None
    # istio.workload.LoadBalancing, flattened (most services have none).
    lb_mode: int = LbMode.UNSPECIFIED_MODE
    lb_routing_preference: tuple[int, ...] = ()   # LbScope values, most important first
    lb_health_policy: int = HealthPolicy.ONLY_HEALTHY
    ip_families: int = 0
    canonical: bool = False
    visibility: int = 0
    version: str = ""

    @property
    def key(self) -> str:
        """The resource name Istio gives a service: namespace/hostname."""
        return f"{self.namespace}/{self.hostname}"

    @property
    def by_locality(self) -> bool:
        """Whether picking an endpoint depends on the source workload. As ztunnel: only in
        modes strict and failover; other modes ignore a routing preference."""
        return bool(self.lb_routing_preference) and self.lb_mode in (LbMode.STRICT,
                                                                     LbMode.FAILOVER)

    def port(self, service_port: int) -> Port | None:
        return next((p for p in self.ports if p.service_port == service_port), None)


# ---- L4 policy (istio.security.Authorization) -----------------------------------------------

@dataclass(frozen=True, slots=True)
class StringMatch:
    kind: StringKind
    value: str = ""

    def matches(self, s: str) -> bool:
        if self.kind == StringKind.EXACT:
            return s == self.value
        if self.kind == StringKind.PREFIX:
            return s.startswith(self.value)
        if self.kind == StringKind.SUFFIX:
            return s.endswith(self.value)
        return s != ""


@dataclass(frozen=True, slots=True)
class ServiceAccountMatch:
    namespace: str
    service_account: str


@dataclass(frozen=True, slots=True)
class Match:
    """Values of one field are OR-ed; different fields set in one Match are AND-ed."""

    namespaces: tuple[StringMatch, ...] = ()
    not_namespaces: tuple[StringMatch, ...] = ()
    service_accounts: tuple[ServiceAccountMatch, ...] = ()
    not_service_accounts: tuple[ServiceAccountMatch, ...] = ()
    principals: tuple[StringMatch, ...] = ()
    not_principals: tuple[StringMatch, ...] = ()
    source_ips: tuple[IPNetwork, ...] = ()
    not_source_ips: tuple[IPNetwork, ...] = ()
    destination_ips: tuple[IPNetwork, ...] = ()
    not_destination_ips: tuple[IPNetwork, ...] = ()
    destination_ports: tuple[int, ...] = ()
    not_destination_ports: tuple[int, ...] = ()

    def is_empty(self) -> bool:
        return not any(getattr(self, f.name) for f in fields(self))


@dataclass(frozen=True, slots=True)
class Rule:
    matches: tuple[Match, ...] = ()  # OR-ed


@dataclass(frozen=True, slots=True)
class Group:
    rules: tuple[Rule, ...] = ()  # AND-ed


@dataclass(frozen=True, slots=True)
class Policy:
    """groups are OR-ed; the rules of a group are AND-ed; the matches of a rule are OR-ed."""

    name: str
    namespace: str
    scope: PolicyScope
    action: PolicyAction
    groups: tuple[Group, ...] = ()
    dry_run: bool = False
    version: str = ""

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"
