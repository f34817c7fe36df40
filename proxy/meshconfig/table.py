"""The proxy's routing table, filled from the agent's snapshot and deltas.

- service VIP → service → endpoints (round robin over the healthy ones, or all of them when
  the service's health policy says allow_all; load-balancing mode `passthrough` keeps the
  original destination; modes `strict` and `failover` with a routing preference pick by
  locality relative to the source workload, as ztunnel does: see `MeshTable.route`);
- pod IP → workload (identity, whether it is reached through HBONE, locality);
- policies for proxy/authz.py.

Updates cost O(size of the changed record). Lookups are O(1); the endpoint pick builds its
candidate list once per service (and, for a routing preference, per source locality) after
each applied message, O(endpoints of that service), then costs O(1) per connection.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from proxy import authz
from proxy.identity.spiffe import SpiffeId
from proxy.meshconfig.policy import policy as decode_policy

Addr = tuple[str, int]
# istio.workload.LoadBalancing: Mode, HealthPolicy and Scope values.
LB_STRICT = 1
LB_FAILOVER = 2
LB_PASSTHROUGH = 3
HEALTH_ALLOW_ALL = 1
SCOPE_REGION, SCOPE_ZONE, SCOPE_SUBZONE, SCOPE_NODE, SCOPE_CLUSTER, SCOPE_NETWORK = range(1, 7)
SCOPE_NAMES = {SCOPE_REGION: "region", SCOPE_ZONE: "zone", SCOPE_SUBZONE: "subzone",
               SCOPE_NODE: "node", SCOPE_CLUSTER: "cluster", SCOPE_NETWORK: "network"}
# What ztunnel calls a workload whose cluster_id is empty; the channel leaves this one out.
DEFAULT_CLUSTER = "Kubernetes"


class NoEndpoint(LookupError):
    """A service VIP with no usable endpoint for the port."""


@dataclass(frozen=True, slots=True)
class MeshWorkload:
    uid: str
    name: str
    namespace: str
    ips: tuple[str, ...]
    node: str
    identity: str
    hbone: bool
    healthy: bool
    policies: tuple[str, ...]
    services: dict[str, dict[int, int]]  # service key -> service port -> target port
    network: str = ""
    cluster: str = DEFAULT_CLUSTER
    locality: tuple[str, str, str] = ("", "", "")  # region, zone, subzone

    def scope(self, scope: int) -> str | None:
        """This workload's value for a LoadBalancing scope; None for a scope we do not
        know (it then matches nothing, so a newer control plane's scope fails closed)."""
        if scope == SCOPE_REGION:
            return self.locality[0]
        if scope == SCOPE_ZONE:
            return self.locality[1]
        if scope == SCOPE_SUBZONE:
            return self.locality[2]
        if scope == SCOPE_NODE:
            return self.node
        if scope == SCOPE_CLUSTER:
            return self.cluster
        if scope == SCOPE_NETWORK:
            return self.network
        return None


@dataclass(frozen=True, slots=True)
class MeshService:
    key: str
    name: str
    namespace: str
    vips: tuple[str, ...]
    ports: dict[int, int]
    lb_mode: int
    health_policy: int
    sans: tuple[str, ...]
    routing: tuple[int, ...] = ()  # routing_preference scopes, most important first

    @property
    def by_locality(self) -> bool:
        """Whether picking an endpoint depends on the source workload. As ztunnel: only in
        modes strict and failover; other modes ignore a routing preference."""
        return bool(self.routing) and self.lb_mode in (LB_STRICT, LB_FAILOVER)


@dataclass(frozen=True, slots=True)
class Target:
    """Where an outbound connection goes: `addr`, and through HBONE if `workload.hbone`."""

    addr: Addr
    workload: MeshWorkload | None = None
    service: MeshService | None = None

    @property
    def hbone(self) -> bool:
        return self.workload is not None and self.workload.hbone

    def identities(self) -> list[str]:
        """Who the server must prove to be: the workload's ID, or any of the service's."""
        ids = [self.workload.identity] if self.workload is not None else []
        if self.service is not None:
            ids.extend(self.service.sans)
        return ids


def _workload(d: dict[str, Any]) -> MeshWorkload:
    return MeshWorkload(
        uid=d["uid"], name=d["name"], namespace=d["ns"],
        ips=tuple(str(ipaddress.ip_address(i)) for i in d["ips"]), node=d.get("node", ""),
        identity=d["id"], hbone=bool(d["hbone"]), healthy=bool(d.get("healthy", True)),
        policies=tuple(d.get("pol", ())),
        services={k: {int(sp): int(tp) for sp, tp in ports}
                  for k, ports in d.get("svc", {}).items()},
        network=d.get("net", ""), cluster=d.get("cl") or DEFAULT_CLUSTER,
        locality=_locality(d.get("loc")))


def _locality(v: Any) -> tuple[str, str, str]:
    if not v:
        return ("", "", "")
    region, zone, subzone = [*v, "", "", ""][:3]
    return (str(region), str(zone), str(subzone))


def _service(d: dict[str, Any]) -> MeshService:
    return MeshService(key=d["key"], name=d["name"], namespace=d["ns"],
                       vips=tuple(str(ipaddress.ip_address(a)) for _net, a in d["vips"]),
                       ports={int(sp): int(tp) for sp, tp in d["ports"]},
                       lb_mode=int(d.get("lb", 0)), health_policy=int(d.get("health", 0)),
                       sans=tuple(d.get("sans", ())),
                       routing=tuple(int(x) for x in d.get("rp", ())))


def _rank(routing: tuple[int, ...], src: MeshWorkload, w: MeshWorkload) -> int:
    """How many of the listed scopes match, counting in order and stopping at the first
    mismatch (ztunnel: [network, region, zone] matching network and zone but not region
    ranks 1). Each scope compares only its own field: subzone compares subzones."""
    rank = 0
    for scope in routing:
        mine = src.scope(scope)
        if mine is None or mine != w.scope(scope):
            break
        rank += 1
    return rank


class MeshTable:
    def __init__(self) -> None:
        self.version = 0  # bumped on every applied message (tests, config_dump)
        self._reset()

    def _reset(self) -> None:
        self.trust_domain = "cluster.local"
        self.workloads: dict[str, MeshWorkload] = {}
        self.services: dict[str, MeshService] = {}
        self.policies: dict[str, authz.Policy] = {}
        self._by_ip: dict[str, MeshWorkload] = {}
        self._by_vip: dict[str, MeshService] = {}
        # service key -> uid -> None: an ordered set, so round robin is stable.
        self._endpoints: dict[str, dict[str, None]] = {}
        self._rr: dict[str, int] = {}
        # Endpoint candidates, rebuilt lazily after each applied message: service key ->
        # usable endpoints, and (service key, source's value per preferred scope) -> the
        # endpoints that source rotates over.
        self._usable_cache: dict[str, tuple[MeshWorkload, ...]] = {}
        self._picks: dict[tuple[str, tuple[str | None, ...]], tuple[MeshWorkload, ...]] = {}

    # -- updates --------------------------------------------------------------------------

    def apply(self, msg: dict[str, Any]) -> None:
        # Any change may change which endpoints are usable or preferred.
        self._usable_cache.clear()
        self._picks.clear()
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
            self._put_service(_service(s))
        for w in msg.get("workloads", ()):
            self._put_workload(_workload(w))
        for p in msg.get("policies", ()):
            self.policies[p["key"]] = decode_policy(p)
        self.version += 1

    def _put_workload(self, w: MeshWorkload) -> None:
        self._remove_workload(w.uid)
        self.workloads[w.uid] = w
        for ip in w.ips:
            self._by_ip[ip] = w
        for key in w.services:
            self._endpoints.setdefault(key, {})[w.uid] = None

    def _remove_workload(self, uid: str) -> None:
        old = self.workloads.pop(uid, None)
        if old is None:
            return
        for ip in old.ips:
            if self._by_ip.get(ip) is old:
                del self._by_ip[ip]
        for key in old.services:
            eps = self._endpoints.get(key)
            if eps is not None:
                eps.pop(uid, None)
                if not eps:
                    del self._endpoints[key]

    def _put_service(self, s: MeshService) -> None:
        self._remove_service(s.key)
        self.services[s.key] = s
        for vip in s.vips:
            self._by_vip[vip] = s

    def _remove_service(self, key: str) -> None:
        old = self.services.pop(key, None)
        if old is not None:
            for vip in old.vips:
                if self._by_vip.get(vip) is old:
                    del self._by_vip[vip]

    # -- lookups --------------------------------------------------------------------------

    def workload_by_ip(self, ip: str) -> MeshWorkload | None:
        return self._by_ip.get(ip)

    def first_workload(self, ips: Iterable[str]) -> MeshWorkload | None:
        return next((w for ip in ips if (w := self._by_ip.get(ip)) is not None), None)

    def route(self, dst: Addr, src: MeshWorkload | None = None) -> Target:
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
        if dst[1] not in svc.ports or svc.lb_mode == LB_PASSTHROUGH:
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
        port = w.services.get(svc.key, {}).get(dst[1]) or svc.ports[dst[1]] or dst[1]
        return Target((w.ips[0], port), w, svc)

    def _usable(self, svc: MeshService) -> tuple[MeshWorkload, ...]:
        """The endpoints with an IP that the health policy allows; cached until the next
        applied message."""
        got = self._usable_cache.get(svc.key)
        if got is None:
            got = self._usable_cache[svc.key] = tuple(
                w for uid in self._endpoints.get(svc.key, ())
                if (w := self.workloads[uid]).ips
                and (w.healthy or svc.health_policy == HEALTH_ALLOW_ALL))
        return got

    def _preferred(self, svc: MeshService, src: MeshWorkload | None,
                   usable: tuple[MeshWorkload, ...]) -> tuple[MeshWorkload, ...]:
        """The usable endpoints `src` should rotate over; cached per service and per source
        locality (pods on one node share it) until the next applied message."""
        if src is None:  # nothing to compare with: strict cannot prove a match
            return () if svc.lb_mode == LB_STRICT else usable
        key = (svc.key, tuple(src.scope(s) for s in svc.routing))
        got = self._picks.get(key)
        if got is None:
            ranked = [(_rank(svc.routing, src, w), w) for w in usable]
            want = (len(svc.routing) if svc.lb_mode == LB_STRICT
                    else max(r for r, _ in ranked))
            got = self._picks[key] = tuple(w for r, w in ranked if r == want)
        return got

    @staticmethod
    def _scopes(svc: MeshService) -> str:
        return "/".join(SCOPE_NAMES.get(s, str(s)) for s in svc.routing)

    def authorize(self, local: MeshWorkload | None, namespace: str, peer: SpiffeId | None,
                  src_ip: str, dst_ip: str, dst_port: int) -> authz.Decision:
        dest = authz.Workload(local.namespace if local else namespace,
                              local.policies if local else ())
        conn = authz.Connection(peer, ipaddress.ip_address(src_ip),
                                ipaddress.ip_address(dst_ip), dst_port)
        return authz.evaluate(self.policies.values(), dest, conn)

    def dump(self) -> dict[str, Any]:
        return {"version": self.version, "workloads": len(self.workloads),
                "services": {k: {"vips": list(s.vips), "endpoints": list(
                    self._endpoints.get(k, ()))} for k, s in self.services.items()},
                "policies": sorted(self.policies)}
