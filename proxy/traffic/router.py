"""The decision path for one outbound connection to a service port, composed from this
package's parts; the proxy's connect path calls it (the next step wires it):

1. `decide`: the route (routes.py) and its weighted destination, the destination service
   and port, the cluster (service port and subset) and its policy (policy.py);
2. `open`: a connection pool slot (pool.py), then connect with retries (retry.py), each
   attempt to an endpoint picked by the cluster (cluster.py: subset members, ejections,
   locality, load balancer), each result told to outlier detection (outlier.py) and the
   active counts LEAST_REQUEST reads (active.py);
3. `closed`: the connection's end (reset or not) for outlier detection, the slot back.

The route and the decision for each of its destinations are computed once per (service,
dialled address, source workload, SNI) and reused while the records they were computed from
are the same objects (the mesh view replaces a record, never edits it): a connection then
costs a dict lookup, a few identity tests and its weighted draw, instead of walking every
route's matches (bench/traffic_path.py measures the difference).

Refusals raise Refused with a Reason (overflow, no_healthy_endpoint, connect_failed,
connect_timeout, unknown_destination). It routes connections to a service VIP and a port of
that service; other destinations are the egress decision's (egress.py). Pure given its
injected clock and random source: no sockets, no timers."""

from __future__ import annotations

import random
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Generic, Protocol, TypeVar

from core.mesh.model import LbMode, Service, Workload
from core.mesh.traffic import (
    ConnectionPool,
    L4Route,
    RouteDestination,
    ServiceTraffic,
    SimpleLb,
)
from proxy.traffic.active import ActiveConnections
from proxy.traffic.cluster import Cluster, ClusterKey
from proxy.traffic.outlier import Clock, Outcome
from proxy.traffic.policy import NO_RULES, ClusterPolicy, effective
from proxy.traffic.pool import ConnectionPools, Lease
from proxy.traffic.refusal import Reason, Refused
from proxy.traffic.retry import ATTEMPTS, Attempt, connect_with_retries
from proxy.traffic.routes import Connection, pick_destination, select_route
from proxy.traffic.subsets import members

T = TypeVar("T")
_Members = tuple[Sequence[Workload], tuple[Workload, ...]]
# (service key, dialled ip, dialled port, source uid, SNI). The SNI is the client's to choose,
# so the cache is bounded: past ROUTED_CACHE entries it starts over (correct, just slower).
_RoutedKey = tuple[str, str, int, str, str]
ROUTED_CACHE = 4096


class MeshView(Protocol):
    """What the router reads of the proxy's mesh state (MeshTable will provide it)."""

    def service(self, key: str) -> Service | None: ...

    def endpoints(self, service: Service) -> Sequence[Workload]:
        """The usable endpoints (health policy applied), in a stable order; the same
        object while they are unchanged (selections are cached by identity)."""

    def traffic(self, key: str) -> ServiceTraffic | None: ...

    def labels(self, uid: str) -> Mapping[str, str]: ...


@dataclass(frozen=True, slots=True)
class Decision:
    cluster: ClusterKey
    service: Service            # the destination service (a route may name another one)
    policy: ClusterPolicy
    route: str = ""             # the route's name; "" when no route matched
    passthrough: bool = False   # PASSTHROUGH: keep the original destination, no pick

    @property
    def subset(self) -> str:
        return self.cluster.subset


@dataclass(frozen=True, slots=True)
class Endpoint:
    workload: Workload
    addr: tuple[str, int]       # its first address and the target port; ("", port) for an
                                # endpoint known by host name only: resolve `host` first

    @property
    def host(self) -> str:
        """The name to resolve at connect time (a DNS ServiceEntry's), "" if addressed."""
        return "" if self.addr[0] else self.workload.hostname


@dataclass(frozen=True, slots=True)
class Opened(Generic[T]):
    decision: Decision
    endpoint: Endpoint
    value: T
    attempts: tuple[Attempt, ...]
    lease: Lease


@dataclass(slots=True)
class _Routed:
    """One (service, dialled address, source, SNI)'s route, and the decision for each of the
    route's destinations once drawn, with the records they were computed from."""

    traffic: ServiceTraffic | None
    service: Service
    source: Workload | None
    labels: Mapping[str, str]
    route: L4Route | None
    decisions: dict[RouteDestination, Decision | Refused]
    # Other services a decision read: (key, the service, its traffic) as they were.
    others: list[tuple[str, Service | None, ServiceTraffic | None]]


def destination_port(dest: RouteDestination, dialled: int, svc: Service) -> int:
    """Destination.port, else the single port of a single-port service, else the port the
    client dialled (Istio)."""
    if dest.port:
        return dest.port
    if len(svc.ports) == 1:
        return svc.ports[0].service_port
    return dialled


def target_port(w: Workload, svc: Service, port: int) -> int:
    """As MeshTable.route: the workload's own target port, else the service's, else port."""
    w_port = w.port_for(svc.key, port)
    svc_port = svc.port(port)
    return ((w_port.target_port if w_port else 0)
            or (svc_port.target_port if svc_port else 0) or port)


class TrafficRouter:
    def __init__(self, mesh: MeshView, *, clock: Clock = time.monotonic,
                 rng: random.Random | None = None,
                 default_pool: ConnectionPool | None = None, attempts: int = ATTEMPTS) -> None:
        self._mesh = mesh
        self._clock = clock
        self._rng = rng or random.Random()
        self._default_pool = default_pool
        self._attempts = attempts
        self.active = ActiveConnections()
        self.pools = ConnectionPools()
        self._clusters: dict[ClusterKey, Cluster] = {}
        # (service key, subset) -> (the endpoints object it was computed from, members)
        self._members: dict[tuple[str, str], _Members] = {}
        self._routed: dict[_RoutedKey, _Routed] = {}

    # -- 1. where -----------------------------------------------------------------------------

    def decide(self, svc: Service, conn: Connection) -> Decision:
        """Where a connection to `svc` (dialled at conn.dst_ip:dst_port) goes. A port the
        service does not have is left alone (passthrough), as MeshTable.route does."""
        if svc.ports and svc.port(conn.dst_port) is None:
            return Decision(ClusterKey(svc.key, conn.dst_port), svc, NO_RULES, passthrough=True)
        traffic = self._mesh.traffic(svc.key)
        routed = self._route(svc, traffic, conn)
        route = routed.route
        dest = RouteDestination(svc.key) if route is None \
            else pick_destination(route, self._rng)
        got = routed.decisions.get(dest)
        if got is None:
            got = routed.decisions[dest] = self._decision(svc, traffic, conn.dst_port, dest,
                                                          route.name if route else "",
                                                          routed.others)
        if isinstance(got, Refused):
            raise Refused(got.reason, got.detail)  # a fresh one: a raise extends a traceback
        # Clusters are made when first used and follow the policy in force; the state they
        # keep (turns, ejections) outlives the decisions cached here.
        cluster = self._clusters.get(got.cluster)
        if cluster is None:
            self._clusters[got.cluster] = Cluster(got.cluster, got.policy, self._clock,
                                                  self._rng, self.active)
        elif cluster.policy is not got.policy and cluster.policy != got.policy:
            cluster.update(got.policy)
        return got

    def _route(self, svc: Service, traffic: ServiceTraffic | None,
               conn: Connection) -> _Routed:
        """The cached route of `conn`, recomputed when any record it read was replaced."""
        src = conn.source
        key = (svc.key, conn.dst_ip, conn.dst_port, src.uid if src is not None else "",
               conn.sni)
        r = self._routed.get(key)
        if (r is not None and r.traffic is traffic and r.service is svc and r.source is src
                and (r.labels is conn.source_labels or r.labels == conn.source_labels)
                and (not r.others or all(self._mesh.service(k) is s and
                                         self._mesh.traffic(k) is t for k, s, t in r.others))):
            return r
        if len(self._routed) >= ROUTED_CACHE:
            self._routed.clear()
        route = select_route(traffic.routes, conn) if traffic is not None else None
        r = self._routed[key] = _Routed(traffic, svc, src, conn.source_labels, route, {}, [])
        return r

    def _decision(self, svc: Service, traffic: ServiceTraffic | None, dialled: int,
                  dest: RouteDestination, name: str,
                  others: list[tuple[str, Service | None, ServiceTraffic | None]]
                  ) -> Decision | Refused:
        """Where `dest` of route `name` sends a connection dialled at `dialled`, or why it
        cannot; `others` gets the other services it read (to check before reuse)."""
        target = svc
        dest_traffic = traffic
        if dest.service != svc.key:
            found, dest_traffic = self._mesh.service(dest.service), \
                self._mesh.traffic(dest.service)
            others.append((dest.service, found, dest_traffic))
            if found is None:
                return Refused(Reason.UNKNOWN_DESTINATION,
                               f"route {name or '-'} sends to {dest.service}, "
                               "not in the registry")
            target = found
        port = destination_port(dest, dialled, target)
        if target.ports and target.port(port) is None:
            return Refused(Reason.UNKNOWN_DESTINATION, f"{target.key} has no port {port}")
        if dest.subset and (dest_traffic is None or dest_traffic.subset(dest.subset) is None):
            # The conversion refuses it (Istio's analyzer flags it, Envoy would find no
            # cluster); it gets here only if configs arrive out of step.
            return Refused(Reason.UNKNOWN_DESTINATION,
                           f"subset {dest.subset} of {target.key} is not defined")
        policy = effective(dest_traffic, dest.subset, port, self._default_pool)
        passthrough = policy.lb == SimpleLb.PASSTHROUGH or target.lb_mode == LbMode.PASSTHROUGH
        return Decision(ClusterKey(target.key, port, dest.subset), target, policy, name,
                        passthrough)

    # -- 2. which endpoint --------------------------------------------------------------------

    def _subset_members(self, d: Decision) -> tuple[Workload, ...]:
        endpoints = self._mesh.endpoints(d.service)
        k = (d.service.key, d.subset)
        got = self._members.get(k)
        if got is None or got[0] is not endpoints:
            traffic = self._mesh.traffic(d.service.key) if d.subset else None
            subset = traffic.subset(d.subset) if traffic is not None else None
            got = self._members[k] = (endpoints,
                                      members(endpoints, subset, self._mesh.labels))
        return got[1]

    def pick(self, d: Decision, conn: Connection, tried: Sequence[str] = ()) -> Endpoint:
        w = self._clusters[d.cluster].pick(d.service, self._subset_members(d), conn.source,
                                           conn.src_ip, tried)
        ip = w.addresses[0] if w.addresses else ""
        return Endpoint(w, (ip, target_port(w, d.service, d.cluster.port)))

    # -- 3. connect, and the end --------------------------------------------------------------

    def report(self, d: Decision, uid: str, outcome: Outcome) -> None:
        cluster = self._clusters.get(d.cluster)
        if cluster is not None and cluster.detector is not None:
            cluster.detector.record(uid, outcome)

    async def open(self, d: Decision, conn: Connection,
                   connect: Callable[[Endpoint, float], Awaitable[T]]) -> Opened[T]:
        """Connect `conn` as decided (not for a passthrough decision, which keeps the
        original destination): `connect(endpoint, budget)` makes one attempt. The caller
        calls `closed` once the connection ends."""
        lease = self.pools.acquire(d.cluster, d.policy.pool.max_connections)
        attempting: list[str] = []  # an endpoint picked and not yet reported

        def pick(tried: Sequence[str]) -> Endpoint:
            e = self.pick(d, conn, tried)
            self.active.start(e.workload.uid)
            attempting.append(e.workload.uid)
            return e

        def report(e: Endpoint, a: Attempt) -> None:
            uid = e.workload.uid
            attempting.remove(uid)
            if a.failure is not None:
                self.active.end(uid)
            self.report(d, uid, Outcome.CONNECTED if a.failure is None
                        else Outcome.CONNECT_FAILED)

        try:
            done = await connect_with_retries(
                pick, connect, key=lambda e: e.workload.uid,
                timeout=d.policy.pool.connect_timeout, clock=self._clock,
                attempts=self._attempts, report=report)
        except BaseException:  # refused, or cancelled mid-attempt
            for uid in attempting:
                self.active.end(uid)
            lease.release()
            raise
        return Opened(d, done.endpoint, done.value, done.attempts, lease)

    def closed(self, opened: Opened[Any], reset: bool) -> None:
        """The connection ended; `reset`: the upstream reset it (a 5xx for outlier
        detection). Idempotent for the slot, not for the counts: call once."""
        uid = opened.endpoint.workload.uid
        self.active.end(uid)
        self.report(opened.decision, uid, Outcome.RESET if reset else Outcome.CLOSED)
        opened.lease.release()

    # -- the proxy's timer ----------------------------------------------------------------------

    def sweep(self) -> dict[ClusterKey, tuple[int, int]]:
        """Run the outlier sweeps that are due (ejections end on time even for a cluster no
        connection uses) and say, per cluster with outlier detection, (endpoints ejected
        now, ejections ever). Drops the state of clusters no config names any more."""
        out: dict[ClusterKey, tuple[int, int]] = {}
        for key, c in list(self._clusters.items()):
            traffic = self._mesh.traffic(key.service)
            gone = traffic is None or bool(key.subset and traffic.subset(key.subset) is None)
            if gone and not self.pools.open(key):
                del self._clusters[key]  # its rules are gone and no connection holds it
                continue
            d = c.detector
            if d is not None:
                out[key] = (len(d.ejected()), d.ejections())
        return out

    # -- debug --------------------------------------------------------------------------------

    def clusters(self) -> list[tuple[ClusterKey, dict[str, Any]]]:
        """Each cluster the router holds state for, with its dump (`dump`'s values)."""
        return [(k, {**c.dump(), "open": self.pools.open(k),
                     "overflows": self.pools.overflows.get(k, 0)})
                for k, c in sorted(self._clusters.items(), key=lambda kv: str(kv[0]))]

    def dump(self) -> dict[str, Any]:
        return {str(k): {**c.dump(), "open": self.pools.open(k),
                         "overflows": self.pools.overflows.get(k, 0)}
                for k, c in sorted(self._clusters.items(), key=lambda kv: str(kv[0]))}
