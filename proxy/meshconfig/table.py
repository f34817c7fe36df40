"""The proxy's routing table, filled from the agent's snapshot and deltas.

- service VIP → service → endpoints (round robin over the healthy ones, or all of them when
  the service's health policy says allow_all; load-balancing mode `passthrough` keeps the
  original destination; modes `strict` and `failover` with a routing preference pick by
  locality relative to the source workload, as ztunnel does: see `MeshTable.route`);
- pod IP → workload (identity, whether it is reached through HBONE, locality);
- policies for proxy/authz.py;
- traffic management (issue 16): per service its `ServiceTraffic` (VirtualService routes,
  DestinationRule), per Sidecar its `EgressPolicy`, per workload the labels rules read. The
  table is the traffic router's `MeshView` (proxy/traffic/router.py) and owns the router, so
  cluster state (pool counts, ejections) lives as long as the proxy, across config changes.
  A connection to a service without a traffic record keeps `route` (no rules: unchanged).

The records are the mesh model's (core/mesh/model.py), read from the channel's JSON by
core/mesh/channel.py.

Updates cost O(size of the changed record). Lookups are O(1); the endpoint pick builds its
candidate list once per service (and, for a routing preference, per source locality) after
each applied message, O(endpoints of that service), then costs O(1) per connection.
"""

from __future__ import annotations

import dataclasses
import ipaddress
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from core.mesh.channel import Decoder, decode_egress, decode_labels, decode_traffic
from core.mesh.model import (
    DEFAULT_TRUST_DOMAIN,
    HealthPolicy,
    LbMode,
    LbScope,
    Policy,
    Service,
    Workload,
)
from core.mesh.traffic import EgressPolicy, ServiceTraffic, WorkloadLabels
from core.spiffe import SpiffeId
from proxy import authz
from proxy.traffic.egress import Registry
from proxy.traffic.locality import rank, scope_value
from proxy.traffic.router import TrafficRouter
from proxy.traffic.subsets import selects

Addr = tuple[str, int]


class NoEndpoint(LookupError):
    """A service VIP with no usable endpoint for the port."""


@dataclass(frozen=True, slots=True)
class Target:
    """Where an outbound connection goes: `addr`, and through HBONE if the workload uses it."""

    addr: Addr
    workload: Workload | None = None
    service: Service | None = None

    @property
    def hbone(self) -> bool:
        return self.workload is not None and self.workload.uses_hbone

    def identities(self) -> list[str]:
        """Who the server must prove to be: the workload's ID, or any of the service's."""
        ids = [self.workload.spiffe_id] if self.workload is not None else []
        if self.service is not None:
            ids.extend(self.service.subject_alt_names)
        return ids


# Scope names for messages ("region", ...); 0 and unknown values print as numbers.
_SCOPE_NAMES = {s.value: s.name.lower() for s in LbScope if s != LbScope.UNSPECIFIED_SCOPE}


# The control plane's uid of a ServiceEntry endpoint (controlplane/ambient/workloads.py).
_SERVICE_ENTRY_UID = "/networking.istio.io/ServiceEntry/"


class _MeshAddresses:
    """The addresses REGISTRY_ONLY lets through as in-mesh: pods' and WorkloadEntries', not a
    ServiceEntry endpoint's (an external host: reachable only as the entry's service, on its
    ports, or one entry would open every port of that host)."""

    def __init__(self, by_ip: dict[str, Workload]) -> None:
        self._by_ip = by_ip

    def __contains__(self, ip: object) -> bool:
        w = self._by_ip.get(ip) if isinstance(ip, str) else None
        return w is not None and _SERVICE_ENTRY_UID not in w.uid


class MeshTable:
    def __init__(self) -> None:
        self.version = 0  # bumped on every applied message (tests, config_dump)
        self._decode = Decoder()  # the channel's JSON -> core/mesh records
        self._reset()
        # One per proxy, reading this table: its clusters outlive config changes, as
        # Envoy's do (an unchanged cluster keeps its pool counts and ejections).
        self.router = TrafficRouter(self)

    def _reset(self) -> None:
        self.trust_domain = DEFAULT_TRUST_DOMAIN
        self.workloads: dict[str, Workload] = {}
        self.services: dict[str, Service] = {}
        self.policies: dict[str, Policy] = {}
        self._by_ip: dict[str, Workload] = {}
        self._by_vip: dict[str, Service] = {}
        # service key -> uid -> None: an ordered set, so round robin is stable.
        self._endpoints: dict[str, dict[str, None]] = {}
        self._rr: dict[str, int] = {}
        # Endpoint candidates, rebuilt lazily after each applied message: service key ->
        # usable endpoints, and (service key, source's value per preferred scope) -> the
        # endpoints that source rotates over.
        self._usable_cache: dict[str, tuple[Workload, ...]] = {}
        self._picks: dict[tuple[str, tuple[str | None, ...]], tuple[Workload, ...]] = {}
        # Traffic management: service key -> rules, Sidecar key -> egress policy, workload
        # uid -> the labels rules read; services with an endpoint known by host name only
        # (a DNS ServiceEntry), which only the router can connect to.
        self.service_traffic: dict[str, ServiceTraffic] = {}
        self.egress: dict[str, EgressPolicy] = {}
        self.workload_labels: dict[str, Mapping[str, str]] = {}
        self._by_name: set[str] = set()
        self._registry: Registry | None = None
        # (namespace, workload uid) -> the Sidecar that applies: looked up per connection,
        # changed only by a message (apply clears it).
        self._egress_for: dict[tuple[str, str], EgressPolicy | None] = {}

    # -- updates --------------------------------------------------------------------------

    def apply(self, msg: dict[str, Any]) -> None:
        # Traffic records are decoded before anything changes: a bad one (a weight, a
        # subset the conversion should have refused) rejects the message, and the last good
        # routing stays in force.
        rules = (tuple(decode_traffic(t) for t in msg.get("traffic", ())),
                 tuple(decode_egress(e) for e in msg.get("egress", ())),
                 tuple(decode_labels(w) for w in msg.get("labels", ())))
        # Any change may change which endpoints are usable or preferred.
        self._usable_cache.clear()
        self._picks.clear()
        self._registry = None
        self._egress_for.clear()
        if msg["t"] == "snapshot":
            self._reset()  # a snapshot replaces everything
            self.trust_domain = msg.get("trust_domain") or self.trust_domain
        for uid in msg.get("removed_workloads", ()):
            self._remove_workload(uid)
        for key in msg.get("removed_services", ()):
            self._remove_service(key)
        for key in msg.get("removed_policies", ()):
            self.policies.pop(key, None)
        for s in msg.get("services", ()):
            self._put_service(self._decode.service(s))
        for w in msg.get("workloads", ()):
            self._put_workload(self._decode.workload(w))
        for p in msg.get("policies", ()):
            self.policies[p["key"]] = self._decode.policy(p)
        self._apply_traffic(msg, *rules)
        self.version += 1

    def _apply_traffic(self, msg: dict[str, Any], traffic: tuple[ServiceTraffic, ...],
                       egress: tuple[EgressPolicy, ...],
                       labels: tuple[WorkloadLabels, ...]) -> None:
        for key in msg.get("removed_traffic", ()):
            self.service_traffic.pop(key, None)
        for key in msg.get("removed_egress", ()):
            self.egress.pop(key, None)
        for uid in msg.get("removed_labels", ()):
            self.workload_labels.pop(uid, None)
        for t in traffic:
            self.service_traffic[t.service] = t
        for e in egress:
            self.egress[e.key] = e
        for w in labels:
            self.workload_labels[w.uid] = dict(w.labels)

    def _put_workload(self, w: Workload) -> None:
        self._remove_workload(w.uid)
        self.workloads[w.uid] = w
        for ip in w.addresses:
            self._by_ip[ip] = w
        for key, _ in w.services:
            self._endpoints.setdefault(key, {})[w.uid] = None
            if not w.addresses and w.hostname:
                self._by_name.add(key)  # until the next snapshot: the router path is exact

    def _remove_workload(self, uid: str) -> None:
        old = self.workloads.pop(uid, None)
        if old is None:
            return
        for ip in old.addresses:
            if self._by_ip.get(ip) is old:
                del self._by_ip[ip]
        for key, _ in old.services:
            eps = self._endpoints.get(key)
            if eps is not None:
                eps.pop(uid, None)
                if not eps:
                    del self._endpoints[key]

    def _put_service(self, s: Service) -> None:
        self._remove_service(s.key)
        self.services[s.key] = s
        for vip in s.vips:
            self._by_vip[vip.address] = s

    def _remove_service(self, key: str) -> None:
        old = self.services.pop(key, None)
        if old is not None:
            for vip in old.vips:
                if self._by_vip.get(vip.address) is old:
                    del self._by_vip[vip.address]

    # -- lookups --------------------------------------------------------------------------

    def workload_by_ip(self, ip: str) -> Workload | None:
        return self._by_ip.get(ip)

    def first_workload(self, ips: Iterable[str]) -> Workload | None:
        return next((w for ip in ips if (w := self._by_ip.get(ip)) is not None), None)

    # -- traffic management: the router's MeshView, and what it routes ----------------------

    def service(self, key: str) -> Service | None:
        return self.services.get(key)

    def endpoints(self, service: Service) -> Sequence[Workload]:
        return self._usable(service)

    def labels(self, uid: str) -> Mapping[str, str]:
        return self.workload_labels.get(uid, {})

    def traffic(self, key: str) -> ServiceTraffic | None:
        return self.service_traffic.get(key)

    def routed_service(self, dst: Addr) -> Service | None:
        """The service `dst` is a VIP of, when connections to it take the traffic router:
        it has traffic rules, or endpoints known only by host name. None: `route`."""
        if not self.service_traffic and not self._by_name:
            return None  # the common case costs one test
        svc = self._by_vip.get(dst[0])
        if svc is None or (svc.key not in self.service_traffic and svc.key not in self._by_name):
            return None
        return svc

    @property
    def registry(self) -> Registry:
        """The egress decision's index of services and workload addresses, rebuilt once
        after each applied message that needs it."""
        if self._registry is None:
            self._registry = Registry(self.services.values(), _MeshAddresses(self._by_ip))
        return self._registry

    def egress_policy(self, w: Workload | None, namespace: str) -> EgressPolicy | None:
        """The Sidecar that applies to a workload (Istio): the one of its namespace whose
        workloadSelector matches its labels (the first by name when several do), else its
        namespace's without a selector, else the mesh default; None: no Sidecar at all."""
        if not self.egress:
            return None
        ns = w.namespace if w is not None else namespace
        memo = (ns, w.uid if w is not None else "")
        if memo not in self._egress_for:
            self._egress_for[memo] = self._find_egress(w, ns)
        return self._egress_for[memo]

    def _find_egress(self, w: Workload | None, ns: str) -> EgressPolicy | None:
        mine = self.labels(w.uid) if w is not None else {}
        fallback = None
        for key in sorted(self.egress):
            e = self.egress[key]
            if e.namespace != ns or not e.name:
                continue
            if e.selector and selects(e.selector, mine):
                return e
            if not e.selector and fallback is None:
                fallback = e
        if fallback is not None:
            return fallback
        default = self.egress.get("mesh default")
        # The mesh default is the root namespace's Sidecar, where Istio reads "." in an
        # egress host as the workload's own namespace: "./*" imports each workload's own.
        return dataclasses.replace(default, namespace=ns) if default is not None else None

    def route(self, dst: Addr, src: Workload | None = None) -> Target:
        """Where a connection the app made to `dst` goes. Raises NoEndpoint.

        `src` is the workload the connection comes from (the pod the proxy serves); a
        service in mode strict or failover with a routing preference picks by it:
        - strict: only endpoints that match `src` on every listed scope (none: NoEndpoint);
        - failover: endpoints ranked by how many listed scopes match in order, stopping at
          the first mismatch; round robin among the best rank.
        Without `src`, strict has no endpoint and failover takes every usable endpoint.
        Other modes (and no preference) are round robin over every usable endpoint."""
        svc = self._by_vip.get(dst[0])
        if svc is None:
            return Target(dst, self._by_ip.get(dst[0]))
        svc_port = svc.port(dst[1])
        if svc_port is None or svc.lb_mode == LbMode.PASSTHROUGH:
            return Target(dst)  # not a port of the service: leave it alone, as ztunnel
        candidates = self._usable(svc)
        if svc.by_locality and candidates:
            candidates = self._preferred(svc, src, candidates)
            if not candidates:
                who = "the source" if src is not None else "an unknown source"
                raise NoEndpoint(f"service {svc.key} has no endpoint for port {dst[1]} that "
                                 f"matches {who} on {self._scopes(svc)} (strict)")
        if not candidates:
            raise NoEndpoint(f"service {svc.key} has no healthy endpoint for port {dst[1]}")
        n = self._rr.get(svc.key, 0)
        self._rr[svc.key] = n + 1
        w = candidates[n % len(candidates)]
        w_port = w.port_for(svc.key, dst[1])
        port = (w_port.target_port if w_port else 0) or svc_port.target_port or dst[1]
        return Target((w.addresses[0], port), w, svc)

    def _usable(self, svc: Service) -> tuple[Workload, ...]:
        """The endpoints with an IP that the health policy allows; cached until the next
        applied message."""
        got = self._usable_cache.get(svc.key)
        if got is None:
            got = self._usable_cache[svc.key] = tuple(
                w for uid in self._endpoints.get(svc.key, ())
                if ((w := self.workloads[uid]).addresses or w.hostname)
                and (w.healthy or svc.lb_health_policy == HealthPolicy.ALLOW_ALL))
        return got

    def _preferred(self, svc: Service, src: Workload | None,
                   usable: tuple[Workload, ...]) -> tuple[Workload, ...]:
        """The usable endpoints `src` should rotate over; cached per service and per source
        locality (pods on one node share it) until the next applied message."""
        if src is None:  # nothing to compare with: strict cannot prove a match
            return () if svc.lb_mode == LbMode.STRICT else usable
        routing = svc.lb_routing_preference
        key = (svc.key, tuple(scope_value(src, s) for s in routing))
        got = self._picks.get(key)
        if got is None:
            ranked = [(rank(routing, src, w), w) for w in usable]
            want = (len(routing) if svc.lb_mode == LbMode.STRICT
                    else max(r for r, _ in ranked))
            got = self._picks[key] = tuple(w for r, w in ranked if r == want)
        return got

    @staticmethod
    def _scopes(svc: Service) -> str:
        return "/".join(_SCOPE_NAMES.get(s, str(s)) for s in svc.lb_routing_preference)

    def authorize(self, local: Workload | None, namespace: str, peer: SpiffeId | None,
                  src_ip: str, dst_ip: str, dst_port: int) -> authz.Decision:
        dest = authz.Workload(local.namespace if local else namespace,
                              local.authorization_policies if local else ())
        conn = authz.Connection(peer, ipaddress.ip_address(src_ip),
                                ipaddress.ip_address(dst_ip), dst_port)
        return authz.evaluate(self.policies.values(), dest, conn)

    def dump(self) -> dict[str, Any]:
        return {"version": self.version, "workloads": len(self.workloads),
                "services": {k: {"vips": [v.address for v in s.vips], "endpoints": list(
                    self._endpoints.get(k, ()))} for k, s in self.services.items()},
                "policies": sorted(self.policies)}
