"""L4 traffic management records: what the node proxy needs, per service, from Istio's
VirtualService (`tcp` and `tls` routes), DestinationRule (subsets and traffic policy) and
Sidecar (egress hosts, outboundTrafficPolicy). ServiceEntry hosts are already services of the
mesh model (controlplane/ambient/services.py); what egress adds is `EgressPolicy`.

The records keep Istio's field names and semantics (istio/api networking/v1alpha3 as of 1.30;
Envoy's for outlier detection, which Istio programs); the control plane's conversion resolves
what the proxy cannot (short host names, the namespace a destination host means, unset vs 0)
and validates, so the records state facts:

- a `RouteDestination.service` is a service key "namespace/hostname", not a short name;
- a subset a route names exists (the conversion refuses an unknown one; Istio's analyzer flags
  it and Envoy would find no cluster for it);
- a `None` policy part means "not set", which matters when policies merge (proxy/traffic/
  policy.py): a subset's `load_balancer` replaces the rule's only when it is set;
- numbers hold their effective value: `ConnectionPool.max_connections` is Istio's default
  2^32-1 when the YAML leaves it unset or 0, durations are seconds (float).

Like core/mesh/model.py: frozen, slotted, hashable (labels are sorted pairs), so a record can
key a cache and an unchanged record costs nothing to re-apply.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from enum import IntEnum

from core.mesh.model import IPNetwork

# ---- defaults, Istio's (and Envoy's where Istio leaves the field to Envoy) -----------------

# ConnectionPoolSettings.TCPSettings.max_connections: "Default 2^32-1."
MAX_CONNECTIONS_UNLIMITED = 2**32 - 1
# connect_timeout: unset means MeshConfig.connectTimeout, whose default is 10s.
DEFAULT_CONNECT_TIMEOUT = 10.0
# OutlierDetection: consecutive5xxErrors "defaults to 5"; consecutiveGatewayErrors "disabled by
# default"; interval 10s; baseEjectionTime 30s; maxEjectionPercent 10; minHealthPercent 0.
DEFAULT_CONSECUTIVE_5XX = 5
DEFAULT_INTERVAL = 10.0
DEFAULT_BASE_EJECTION_TIME = 30.0
DEFAULT_MAX_EJECTION_PERCENT = 10
# Envoy's max_ejection_time (Istio does not expose it): 300s, or base_ejection_time if larger.
ENVOY_MAX_EJECTION_TIME = 300.0
# ConsistentHashLB.RingHash.minimum_ring_size: "Defaults to 1024."
DEFAULT_MINIMUM_RING_SIZE = 1024

Labels = tuple[tuple[str, str], ...]
"""A label map as sorted (key, value) pairs: hashable, and one spelling per map."""


def labels(mapping: Mapping[str, str]) -> Labels:
    return tuple(sorted(mapping.items()))


# ---- enums: Istio's numbers -----------------------------------------------------------------

class SimpleLb(IntEnum):
    """LoadBalancerSettings.SimpleLB."""

    UNSPECIFIED = 0     # Istio picks: LEAST_REQUEST (pilot's defaultLBAlgorithm)
    LEAST_CONN = 1      # deprecated spelling of LEAST_REQUEST
    RANDOM = 2
    PASSTHROUGH = 3     # no balancing: the connection keeps its original destination
    ROUND_ROBIN = 4
    LEAST_REQUEST = 5


class RouteKind(IntEnum):
    TCP = 0             # VirtualService.tcp
    TLS = 1             # VirtualService.tls: matched on the ClientHello's SNI, not terminated


class OutboundMode(IntEnum):
    """OutboundTrafficPolicy.Mode. The proto's zero is REGISTRY_ONLY, but an unset policy
    means ALLOW_ANY (the Sidecar and MeshConfig defaults): `EgressPolicy.mode` defaults so."""

    REGISTRY_ONLY = 0
    ALLOW_ANY = 1


# ---- DestinationRule: traffic policy ------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class ConsistentHash:
    """LoadBalancerSettings.ConsistentHashLB. At L4 only `useSourceIp` can be computed; a
    header, cookie or query parameter key converts to `use_source_ip=False`, for which the
    ring is consulted with a random hash, as Envoy does when no hash key can be computed.
    Maglev converts to the ring too (same guarantee: an endpoint's removal moves only the
    keys it held); `minimum_ring_size` is RingHash's (or the deprecated top-level field)."""

    use_source_ip: bool = True
    minimum_ring_size: int = DEFAULT_MINIMUM_RING_SIZE

    def __post_init__(self) -> None:
        if self.minimum_ring_size < 1:
            raise ValueError(f"minimum_ring_size {self.minimum_ring_size} < 1")


@dataclass(frozen=True, slots=True)
class LoadBalancer:
    """LoadBalancerSettings: `simple` or `consistent_hash` (a oneof; a hash wins)."""

    simple: SimpleLb = SimpleLb.UNSPECIFIED
    consistent_hash: ConsistentHash | None = None


@dataclass(frozen=True, slots=True)
class ConnectionPool:
    """ConnectionPoolSettings.tcp, the two fields an L4 proxy enforces. Envoy counts
    max_connections per cluster (a service port, or one subset of it), not per endpoint,
    despite the API's wording "to a destination host"; so does proxy/traffic/pool.py."""

    max_connections: int = MAX_CONNECTIONS_UNLIMITED
    connect_timeout: float = DEFAULT_CONNECT_TIMEOUT   # seconds; Istio: must be >= 1ms

    def __post_init__(self) -> None:
        if self.max_connections < 1:
            raise ValueError(f"max_connections {self.max_connections} < 1 (unset means "
                             f"{MAX_CONNECTIONS_UNLIMITED})")
        if self.connect_timeout < 0.001:
            raise ValueError(f"connect_timeout {self.connect_timeout}s < 1ms")


@dataclass(frozen=True, slots=True)
class OutlierDetection:
    """OutlierDetection. At L4 (Istio's wording) connect failures and connect timeouts are
    gateway errors, and so 5xx errors too; a reset of an established connection by the
    upstream is a 5xx error only. A threshold of 0 disables that detector (Istio then sets
    Envoy's enforcing percentage to 0). The deprecated, hidden `consecutiveErrors` is ignored,
    as current pilot ignores it."""

    consecutive_5xx_errors: int = DEFAULT_CONSECUTIVE_5XX
    consecutive_gateway_errors: int = 0
    interval: float = DEFAULT_INTERVAL                  # seconds between ejection sweeps
    base_ejection_time: float = DEFAULT_BASE_EJECTION_TIME
    max_ejection_percent: int = DEFAULT_MAX_EJECTION_PERCENT
    # Below this share of non-ejected endpoints the picker ignores ejections (Envoy's panic
    # threshold, which Istio sets from minHealthPercent). 0: never.
    min_health_percent: int = 0

    def __post_init__(self) -> None:
        if self.consecutive_5xx_errors < 0 or self.consecutive_gateway_errors < 0:
            raise ValueError("consecutive error thresholds must be >= 0")
        if self.interval < 0.001 or self.base_ejection_time < 0.001:
            raise ValueError("interval and base_ejection_time must be >= 1ms")
        for name in ("max_ejection_percent", "min_health_percent"):
            if not 0 <= getattr(self, name) <= 100:
                raise ValueError(f"{name} {getattr(self, name)} is not in 0..100")

    @property
    def max_ejection_time(self) -> float:
        return max(ENVOY_MAX_EJECTION_TIME, self.base_ejection_time)


@dataclass(frozen=True, slots=True)
class PortTrafficPolicy:
    """TrafficPolicy.PortTrafficPolicy: replaces the level's policy for one port as a whole
    (an unset part falls back to its default, not to the level's value)."""

    port: int
    load_balancer: LoadBalancer | None = None
    connection_pool: ConnectionPool | None = None
    outlier_detection: OutlierDetection | None = None


@dataclass(frozen=True, slots=True)
class TrafficPolicy:
    """TrafficPolicy, the parts an L4 proxy applies (tls, tunnel and proxyProtocol belong to
    HBONE and the upstream TLS, not to picking)."""

    load_balancer: LoadBalancer | None = None
    connection_pool: ConnectionPool | None = None
    outlier_detection: OutlierDetection | None = None
    port_level: tuple[PortTrafficPolicy, ...] = ()

    def for_port(self, port: int) -> PortTrafficPolicy | None:
        return next((p for p in self.port_level if p.port == port), None)


@dataclass(frozen=True, slots=True)
class Subset:
    """DestinationRule.Subset: the service's endpoints whose labels include all of `labels`
    (none: every endpoint), and a policy that overrides the rule's part by part."""

    name: str
    labels: Labels = ()
    traffic_policy: TrafficPolicy | None = None

    def __post_init__(self) -> None:
        if not self.name:
            raise ValueError("a subset needs a name")


# ---- VirtualService: tcp and tls routes ---------------------------------------------------------

@dataclass(frozen=True, slots=True)
class L4Match:
    """L4MatchAttributes, or TLSMatchAttributes when `sni_hosts` is set. Set fields are ANDed;
    an empty match matches everything. `source_labels` and `source_namespace` select the
    client workload (Istio: "not a runtime match, but a selector"); `port` is the destination
    port the client dialled (0: any); SNI hosts may start with "*." ("*.com" matches
    "example.com" and "foo.example.com")."""

    port: int = 0
    destination_subnets: tuple[IPNetwork, ...] = ()
    source_labels: Labels = ()
    source_namespace: str = ""
    sni_hosts: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class RouteDestination:
    """RouteDestination. `service` is Destination.host resolved to a service key; `port` 0
    keeps the port the client dialled (Istio: a single-port service needs none); `weight`
    is relative: weight / sum of the route's weights, a lone destination takes everything."""

    service: str
    subset: str = ""
    port: int = 0
    weight: int = 0

    def __post_init__(self) -> None:
        if self.weight < 0:
            raise ValueError(f"weight {self.weight} < 0")


@dataclass(frozen=True, slots=True)
class L4Route:
    """A TCPRoute or TLSRoute. `matches` are ORed (none: the route matches every connection;
    a TLS route needs at least one, each with SNI hosts). `name` is the conversion's label
    for metrics and logs ("ns/virtualservice/tcp/0"): Istio's L4 routes have no names."""

    kind: RouteKind
    destinations: tuple[RouteDestination, ...]
    matches: tuple[L4Match, ...] = ()
    name: str = ""

    def __post_init__(self) -> None:
        if not self.destinations:
            raise ValueError("a route needs at least one destination")
        if len(self.destinations) > 1 and not any(d.weight for d in self.destinations):
            raise ValueError("total destination weight = 0")  # Istio's message
        if self.kind == RouteKind.TLS:
            if not self.matches or not all(m.sni_hosts for m in self.matches):
                raise ValueError("a TLS route needs matches with at least one SNI host")
        elif any(m.sni_hosts for m in self.matches):
            raise ValueError("SNI hosts belong to TLS routes")

    @property
    def total_weight(self) -> int:
        return sum(d.weight for d in self.destinations)


# ---- one service's traffic rules ----------------------------------------------------------

@dataclass(frozen=True, slots=True)
class ServiceTraffic:
    """Everything traffic management says about one service (key "namespace/hostname"):
    - `routes`: the VirtualService routes for connections *to* this service, TLS and TCP in
      their YAML order (proxy/traffic/routes.py tries TLS routes first when there is an SNI);
    - `subsets`, `traffic_policy`: the DestinationRule for connections *routed to* this
      service (a route may send traffic to another service, whose record holds its rule).
    `virtual_service` and `destination_rule` name the sources ("ns/name") for logs and
    `meshnode proxy config`."""

    service: str
    routes: tuple[L4Route, ...] = ()
    subsets: tuple[Subset, ...] = ()
    traffic_policy: TrafficPolicy | None = None
    virtual_service: str = ""
    destination_rule: str = ""
    version: str = ""

    def subset(self, name: str) -> Subset | None:
        return next((s for s in self.subsets if s.name == name), None)


# ---- Sidecar: egress ---------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class EgressHost:
    """One `namespace/dnsName` of IstioEgressListener.hosts. namespace: "*" any, "." the
    Sidecar's own, "~" none (imports nothing), else a namespace. dns_name: "*" every host,
    "*.example.com" a wildcard, else an FQDN. (Istio 1.31's "~ns/host" exclusions are not in
    1.30's API and are not modelled.)"""

    namespace: str
    dns_name: str

    @classmethod
    def parse(cls, text: str) -> EgressHost:
        namespace, sep, dns_name = text.partition("/")
        if not sep or not namespace or not dns_name:
            raise ValueError(f"{text!r} is not namespace/dnsName")
        return cls(namespace, dns_name)

    def __str__(self) -> str:
        return f"{self.namespace}/{self.dns_name}"


@dataclass(frozen=True, slots=True)
class EgressListener:
    """IstioEgressListener: `hosts` imported for `port` (0: every port that no listener with
    a port claims; Istio: "the listener with the most specific port" wins)."""

    hosts: tuple[EgressHost, ...]
    port: int = 0


@dataclass(frozen=True, slots=True)
class EgressPolicy:
    """The Sidecar that applies to a workload (or the mesh default): which services it
    imports and what happens to a destination outside them. `listeners` empty: every service
    ("*/*", Istio's default). `namespace` is the Sidecar's, which "." means."""

    namespace: str
    name: str = ""
    mode: OutboundMode = OutboundMode.ALLOW_ANY
    listeners: tuple[EgressListener, ...] = ()
    # Sidecar.workloadSelector.labels: the workloads of `namespace` it applies to; empty: the
    # whole namespace (in the root namespace: the mesh default). A workload takes the one
    # whose selector matches it, else its namespace's selector-less one, else the mesh default.
    selector: Labels = ()
    version: str = ""

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}" if self.name else "mesh default"


# ---- workload labels ---------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class WorkloadLabels:
    """The labels of one workload (by uid) that some traffic rule reads: subset selectors,
    `sourceLabels`, Sidecar workload selectors. Istio's Workload resource carries no labels,
    so they travel as their own resource; the control plane sends only the label keys that a
    rule names, so a mesh with no traffic rules sends none."""

    uid: str
    labels: Labels = ()
    version: str = ""
