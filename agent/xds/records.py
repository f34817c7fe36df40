"""The agent's records for discovery resources: small, immutable, slotted.

Slotted frozen dataclasses instead of the decoded protobuf messages: a 100k-workload snapshot
must fit in < 1 KiB of agent memory per workload, and a record with interned strings and no
per-instance `__dict__` is a few hundred bytes (docs/xds-client.md has the measurements).
IPs are kept as text so the same string object is both the record field and the key of the
by-IP index (no second copy per address).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum

DEFAULT_TRUST_DOMAIN = "cluster.local"
DEFAULT_SERVICE_ACCOUNT = "default"


class TunnelProtocol(IntEnum):
    NONE = 0
    HBONE = 1
    LEGACY_ISTIO_MTLS = 2


class WorkloadStatus(IntEnum):
    HEALTHY = 0
    UNHEALTHY = 1


class LbMode(IntEnum):
    UNSPECIFIED_MODE = 0
    STRICT = 1
    FAILOVER = 2
    PASSTHROUGH = 3


class PolicyAction(IntEnum):
    ALLOW = 0
    DENY = 1


class PolicyScope(IntEnum):
    GLOBAL = 0
    NAMESPACE = 1
    WORKLOAD_SELECTOR = 2


@dataclass(frozen=True, slots=True)
class Port:
    service_port: int
    target_port: int
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
    trust_domain: str = ""
    service_account: str = ""
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
    authorization_policies: tuple[str, ...] = ()
    status: int = WorkloadStatus.HEALTHY
    cluster_id: str = ""
    locality: tuple[str, str, str] | None = None   # region, zone, subzone
    network_mode: int = 0
    capacity: int = 1
    version: str = ""

    @property
    def spiffe_id(self) -> str:
        # Elided trust domain / service account mean the mesh defaults (workload.proto).
        td = self.trust_domain or DEFAULT_TRUST_DOMAIN
        sa = self.service_account or DEFAULT_SERVICE_ACCOUNT
        return f"spiffe://{td}/ns/{self.namespace}/sa/{sa}"

    @property
    def uses_hbone(self) -> bool:
        return self.tunnel_protocol == TunnelProtocol.HBONE or self.native_tunnel


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
    lb_mode: int = LbMode.UNSPECIFIED_MODE
    lb_routing_preference: tuple[int, ...] = ()
    lb_health_policy: int = 0
    ip_families: int = 0
    canonical: bool = False
    visibility: int = 0
    version: str = ""

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.hostname}"


@dataclass(frozen=True, slots=True)
class StringMatch:
    kind: str    # exact | prefix | suffix | presence
    value: str = ""

    def matches(self, s: str) -> bool:
        if self.kind == "exact":
            return s == self.value
        if self.kind == "prefix":
            return s.startswith(self.value)
        if self.kind == "suffix":
            return s.endswith(self.value)
        return bool(s)


@dataclass(frozen=True, slots=True)
class Cidr:
    address: str   # textual IP
    length: int


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
    source_ips: tuple[Cidr, ...] = ()
    not_source_ips: tuple[Cidr, ...] = ()
    destination_ips: tuple[Cidr, ...] = ()
    not_destination_ips: tuple[Cidr, ...] = ()
    destination_ports: tuple[int, ...] = ()
    not_destination_ports: tuple[int, ...] = ()


@dataclass(frozen=True, slots=True)
class Policy:
    """groups are OR-ed; the rules of a group are AND-ed; the matches of a rule are OR-ed."""

    name: str
    namespace: str
    scope: int
    action: int
    groups: tuple[tuple[tuple[Match, ...], ...], ...] = ()
    dry_run: bool = False
    version: str = ""

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"
