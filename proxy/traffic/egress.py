"""The egress decision: may a pod reach a destination, and is it a service of the mesh?

A destination is an address and port the app connected to, or a host name: the SNI of its
ClientHello, the name the proxy's DNS answered for that address, or a DNS query. It is a
*registry* destination when it is a service's VIP (or inside a CIDR VIP) on one of its
ports, or a service host name (a ServiceEntry host, wildcards included) on one of its ports;
a service with no addresses (a ServiceEntry without `addresses`) is identified by its port
alone when no host name is known, as Istio's sidecar does ("traffic will be identified solely
based on the destination port").

The Sidecar that applies (`EgressPolicy`) imports services by `namespace/dnsName` per port:
the listener whose port is the destination's, else those without a port; no listeners
import everything. A wildcard service (*.example.com) is imported for a name an egress host
covers. Then:
- an imported registry destination is allowed, and routed as that service;
- anything else passes through to its original address under ALLOW_ANY (the default), and
  is refused as `registry_only` under REGISTRY_ONLY, with what was missing in the detail.

Addresses of mesh workloads (pods, WorkloadEntries) are in the registry too: a pod dialled
by its IP is allowed under REGISTRY_ONLY, whatever the port (meshnode follows ambient, where
pod-to-pod traffic is in-mesh traffic, not egress)."""

from __future__ import annotations

import ipaddress
from collections.abc import Container, Iterable
from dataclasses import dataclass

from core.mesh.model import Service
from core.mesh.traffic import EgressHost, EgressPolicy, OutboundMode
from proxy.traffic.hosts import covers, normalize
from proxy.traffic.refusal import Reason, Refused

MESH_DEFAULT = EgressPolicy(namespace="", mode=OutboundMode.ALLOW_ANY)


@dataclass(frozen=True, slots=True)
class EgressDecision:
    allowed: bool
    service: Service | None = None      # the imported service the destination is
    reason: Reason | None = None        # REGISTRY_ONLY when not allowed
    detail: str = ""

    @property
    def passthrough(self) -> bool:
        """Allowed, but not a service: connect to the original destination as it is."""
        return self.allowed and self.service is None

    def check(self) -> EgressDecision:
        """Raise the refusal, for callers that route on exceptions."""
        if not self.allowed:
            raise Refused(self.reason or Reason.REGISTRY_ONLY, self.detail)
        return self


def _has_port(svc: Service, port: int) -> bool:
    return port == 0 or not svc.ports or svc.port(port) is not None


class Registry:
    """The destinations the proxy knows, indexed once per mesh config change."""

    def __init__(self, services: Iterable[Service], workload_ips: Container[str] = ()) -> None:
        self._vips: dict[str, list[Service]] = {}
        self._cidrs: list[tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, Service]] = []
        self._hosts: dict[str, list[Service]] = {}
        self._wildcards: list[Service] = []
        self._addressless: list[Service] = []
        self._workload_ips = workload_ips
        for s in services:
            for v in s.vips:
                if v.length is None:
                    self._vips.setdefault(v.address, []).append(s)
                else:
                    self._cidrs.append(
                        (ipaddress.ip_network(f"{v.address}/{v.length}", strict=False), s))
            if s.hostname.startswith("*"):
                self._wildcards.append(s)
            else:
                self._hosts.setdefault(normalize(s.hostname), []).append(s)
            if not s.vips and not s.hostname.startswith("*"):
                self._addressless.append(s)

    def by_address(self, ip: str, port: int) -> list[Service]:
        found = list(self._vips.get(ip, ()))
        if self._cidrs:
            addr = ipaddress.ip_address(ip)
            found += [s for net, s in self._cidrs if addr in net]
        return [s for s in found if _has_port(s, port)]

    def by_host(self, host: str, port: int) -> list[Service]:
        found = self._hosts.get(normalize(host), []) + [
            s for s in self._wildcards if covers(s.hostname, host)]
        return [s for s in found if _has_port(s, port)]

    def by_port(self, port: int) -> list[Service]:
        return [s for s in self._addressless if _has_port(s, port)]

    def is_workload(self, ip: str) -> bool:
        return ip in self._workload_ips


def egress_hosts(policy: EgressPolicy, port: int) -> tuple[EgressHost, ...] | None:
    """The hosts imported for `port` (0: for any port); None: every service."""
    if not policy.listeners:
        return None
    if port == 0:
        return tuple(h for ln in policy.listeners for h in ln.hosts)
    chosen = [ln for ln in policy.listeners if ln.port == port] or \
             [ln for ln in policy.listeners if ln.port == 0]
    return tuple(h for ln in chosen for h in ln.hosts)


def _namespace_ok(h: EgressHost, policy: EgressPolicy, namespace: str) -> bool:
    if h.namespace == "*":
        return True
    if h.namespace == ".":
        return namespace == policy.namespace
    return h.namespace == namespace  # "~" is no namespace: never equal to one


def imported(policy: EgressPolicy, svc: Service, port: int, host: str = "") -> bool:
    hosts = egress_hosts(policy, port)
    if hosts is None:
        return True
    for h in hosts:
        if not _namespace_ok(h, policy, svc.namespace):
            continue
        if covers(h.dns_name, svc.hostname):
            return True
        if host and covers(svc.hostname, host) and covers(h.dns_name, host):
            return True  # a wildcard service, narrowed to the name the egress host covers
    return False


def decide(policy: EgressPolicy | None, registry: Registry, port: int, ip: str = "",
           host: str = "") -> EgressDecision:
    """The decision for a connection to `ip`:`port` (with `host` when known), or for a
    name alone (`ip` empty: a DNS query, `port` 0 for any of the service's ports)."""
    policy = policy or MESH_DEFAULT
    found = registry.by_address(ip, port) if ip else []
    if not found and host:
        found = registry.by_host(host, port)
    if not found and ip and not host:
        found = registry.by_port(port)
    for svc in found:
        if imported(policy, svc, port, host):
            return EgressDecision(True, svc)
    if (ip and registry.is_workload(ip)) or policy.mode != OutboundMode.REGISTRY_ONLY:
        return EgressDecision(True)
    what = f"{host or ip}:{port}" if port else (host or ip)
    if found:
        why = (f"{', '.join(s.key for s in found)} not imported by the egress hosts of "
               f"Sidecar {policy.key}")
    else:
        why = "not a service of the registry"
    return EgressDecision(False, reason=Reason.REGISTRY_ONLY,
                          detail=f"{what}: {why} (outboundTrafficPolicy REGISTRY_ONLY)")
