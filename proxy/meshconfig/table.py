"""The proxy's routing table, filled from the agent's snapshot and deltas.

- service VIP → service → endpoints (round robin over the healthy ones, or all of them when
  the service's health policy says allow_all; load-balancing mode `passthrough` keeps the
  original destination);
- pod IP → workload (identity, whether it is reached through HBONE);
- policies for proxy/authz.py.

Updates cost O(size of the changed record), lookups O(1) except the endpoint pick, which is
O(endpoints of that service).
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
LB_PASSTHROUGH = 3
HEALTH_ALLOW_ALL = 1


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
                  for k, ports in d.get("svc", {}).items()})


def _service(d: dict[str, Any]) -> MeshService:
    return MeshService(key=d["key"], name=d["name"], namespace=d["ns"],
                       vips=tuple(str(ipaddress.ip_address(a)) for _net, a in d["vips"]),
                       ports={int(sp): int(tp) for sp, tp in d["ports"]},
                       lb_mode=int(d.get("lb", 0)), health_policy=int(d.get("health", 0)),
                       sans=tuple(d.get("sans", ())))


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

    # -- updates --------------------------------------------------------------------------

    def apply(self, msg: dict[str, Any]) -> None:
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

    def route(self, dst: Addr) -> Target:
        """Where a connection the app made to `dst` goes. Raises NoEndpoint."""
        svc = self._by_vip.get(dst[0])
        if svc is None:
            return Target(dst, self._by_ip.get(dst[0]))
        if dst[1] not in svc.ports or svc.lb_mode == LB_PASSTHROUGH:
            return Target(dst)  # not a port of the service: leave it alone, as ztunnel
        candidates = [w for uid in self._endpoints.get(svc.key, ())
                      if (w := self.workloads[uid]).ips
                      and (w.healthy or svc.health_policy == HEALTH_ALLOW_ALL)]
        if not candidates:
            raise NoEndpoint(f"service {svc.key} has no healthy endpoint for port {dst[1]}")
        n = self._rr.get(svc.key, 0)
        self._rr[svc.key] = n + 1
        w = candidates[n % len(candidates)]
        port = w.services.get(svc.key, {}).get(dst[1]) or svc.ports[dst[1]] or dst[1]
        return Target((w.ips[0], port), w, svc)

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
