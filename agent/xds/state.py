"""The agent's view of the mesh: workloads, services and policies with their lookup indexes.

Every update touches only the entries of the records it changes (O(1) per workload, times
its few addresses and services), never a rebuild. Subscribers get one batch of changes per
applied discovery response, so they see each response as a unit.
"""

from __future__ import annotations

import asyncio
import dataclasses
import ipaddress
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Literal

import structlog

from core.mesh.model import Policy, Service, Workload
from core.mesh.traffic import EgressPolicy, ServiceTraffic, WorkloadLabels

log = structlog.get_logger("xds.state")

Kind = Literal["workload", "service", "policy", "traffic", "egress", "labels"]
# Traffic management (issue 16): keyed by service key, Sidecar "ns/name", workload uid.
TrafficKind = Literal["traffic", "egress", "labels"]
TrafficRecord = ServiceTraffic | EgressPolicy | WorkloadLabels
Record = Workload | Service | Policy | TrafficRecord


@dataclass(frozen=True, slots=True)
class Change:
    kind: Kind
    key: str                 # workload uid, service "ns/hostname", policy "ns/name" (and see
                             # TrafficKind)
    old: Record | None       # None: added
    new: Record | None       # None: removed


Subscriber = Callable[[Sequence[Change]], None]


def _same_but_version(a: Record, b: Record) -> bool:
    if type(a) is not type(b):
        return False
    return all(getattr(a, f.name) == getattr(b, f.name)
               for f in dataclasses.fields(a) if f.name != "version")


class XdsState:
    def __init__(self, local_node: str = "") -> None:
        self.local_node = local_node
        self.workloads: dict[str, Workload] = {}
        self.services: dict[str, Service] = {}
        self.policies: dict[str, Policy] = {}
        self.traffic: dict[str, ServiceTraffic] = {}      # service key -> its rules
        self.egress: dict[str, EgressPolicy] = {}         # Sidecar key -> egress policy
        self.labels: dict[str, WorkloadLabels] = {}       # workload uid -> selected labels
        # network -> ip -> workload; a list when several share an IP (host-network pods).
        self._by_ip: dict[str, dict[str, Workload | list[Workload]]] = {}
        # network -> ip -> service, for plain VIPs; CIDR VIPs are rare and scanned.
        self._by_vip: dict[str, dict[str, Service]] = {}
        self._cidr_vips: dict[str, Service] = {}
        # service key -> uid -> workload: the service's endpoints.
        self._endpoints: dict[str, dict[str, Workload]] = {}
        # Workloads whose node is ours: the pods this agent captures and holds identities for.
        self.local: dict[str, Workload] = {}
        self._subscribers: list[Subscriber] = []

    # ---- lookups ----

    def workload(self, uid: str) -> Workload | None:
        return self.workloads.get(uid)

    def workloads_by_ip(self, ip: str, network: str = "") -> list[Workload]:
        got = self._by_ip.get(network, {}).get(ip)
        if got is None:
            return []
        return list(got) if isinstance(got, list) else [got]

    def workload_by_ip(self, ip: str, network: str = "") -> Workload | None:
        found = self.workloads_by_ip(ip, network)
        # Prefer a healthy one when host-network workloads share an address.
        return next((w for w in found if w.status == 0), found[0] if found else None)

    def service(self, key: str) -> Service | None:
        return self.services.get(key)

    def service_by_hostname(self, namespace: str, hostname: str) -> Service | None:
        return self.services.get(f"{namespace}/{hostname}")

    def service_by_vip(self, ip: str, network: str = "") -> Service | None:
        svc = self._by_vip.get(network, {}).get(ip)
        if svc is not None or not self._cidr_vips:
            return svc
        addr = ipaddress.ip_address(ip)
        for s in self._cidr_vips.values():
            for v in s.vips:
                if v.length is not None and v.network == network and addr in \
                        ipaddress.ip_network(f"{v.address}/{v.length}", strict=False):
                    return s
        return None

    def endpoints(self, service_key: str) -> list[Workload]:
        return list(self._endpoints.get(service_key, {}).values())

    def policy(self, key: str) -> Policy | None:
        return self.policies.get(key)

    def _traffic_table(self, kind: TrafficKind) -> dict[str, TrafficRecord]:
        table: dict[str, TrafficRecord]
        table = (self.traffic if kind == "traffic"  # type: ignore[assignment]
                 else self.egress if kind == "egress" else self.labels)
        return table

    def versions(self, kind: Literal["address", "policy"] | TrafficKind) -> dict[str, str]:
        """name -> version of every held resource: `initial_resource_versions` on reconnect."""
        if kind == "policy":
            return {k: p.version for k, p in self.policies.items()}
        if kind in ("traffic", "egress", "labels"):
            return {k: r.version for k, r in self._traffic_table(kind).items()}
        out = {k: w.version for k, w in self.workloads.items()}
        out.update((k, s.version) for k, s in self.services.items())
        return out

    # ---- updates ----

    def apply(self, upserts: Iterable[Record] = (), removed_addresses: Iterable[str] = (),
              removed_policies: Iterable[str] = (),
              removed_traffic: Iterable[tuple[TrafficKind, str]] = ()) -> list[Change]:
        """Apply one response's worth of changes, then notify subscribers once.
        `removed_traffic`: (kind, key) of traffic records the response removed."""
        changes: list[Change] = []
        for rec in upserts:
            c = self._upsert(rec)
            if c is not None:
                changes.append(c)
        for name in removed_addresses:
            c = self._remove_address(name)
            if c is not None:
                changes.append(c)
        for name in removed_policies:
            old = self.policies.pop(name, None)
            if old is not None:
                changes.append(Change("policy", name, old, None))
        for kind, key in removed_traffic:
            gone = self._traffic_table(kind).pop(key, None)
            if gone is not None:
                changes.append(Change(kind, key, gone, None))
        if changes:
            self._publish(changes)
        return changes

    def _upsert(self, rec: Record) -> Change | None:
        if isinstance(rec, Workload):
            return self._upsert_workload(rec)
        if isinstance(rec, Service):
            return self._upsert_service(rec)
        if isinstance(rec, Policy):
            return self._upsert_policy(rec)
        return self._upsert_traffic(rec)

    def _upsert_traffic(self, rec: TrafficRecord) -> Change | None:
        kind: TrafficKind
        if isinstance(rec, ServiceTraffic):
            kind, key = "traffic", rec.service
        elif isinstance(rec, EgressPolicy):
            kind, key = "egress", rec.key
        else:
            kind, key = "labels", rec.uid
        table = self._traffic_table(kind)
        old = table.get(key)
        table[key] = rec
        if old is not None and _same_but_version(old, rec):
            return None
        return Change(kind, key, old, rec)

    def _upsert_workload(self, w: Workload) -> Change | None:
        old = self.workloads.get(w.uid)
        if old is None and w.uid in self.services:  # same name was a service: replace it
            self._remove_address(w.uid)
        if old is not None:
            self._unindex_workload(old)
        self.workloads[w.uid] = w
        self._index_workload(w)
        if old is not None and _same_but_version(old, w):
            return None
        return Change("workload", w.uid, old, w)

    def _upsert_service(self, s: Service) -> Change | None:
        key = s.key
        old = self.services.get(key)
        if old is None and key in self.workloads:
            self._remove_address(key)
        if old is not None:
            self._unindex_service(old)
        self.services[key] = s
        self._index_service(s)
        if old is not None and _same_but_version(old, s):
            return None
        return Change("service", key, old, s)

    def _upsert_policy(self, p: Policy) -> Change | None:
        key = p.key
        old = self.policies.get(key)
        self.policies[key] = p
        if old is not None and _same_but_version(old, p):
            return None
        return Change("policy", key, old, p)

    def _remove_address(self, name: str) -> Change | None:
        w = self.workloads.pop(name, None)
        if w is not None:
            self._unindex_workload(w)
            return Change("workload", name, w, None)
        s = self.services.pop(name, None)
        if s is not None:
            self._unindex_service(s)
            return Change("service", name, s, None)
        return None

    # ---- indexes ----

    def _index_workload(self, w: Workload) -> None:
        net = self._by_ip.setdefault(w.network, {})
        for ip in w.addresses:
            cur = net.get(ip)
            if cur is None:
                net[ip] = w
            elif isinstance(cur, list):
                cur.append(w)
            else:
                net[ip] = [cur, w]
        for key, _ in w.services:
            self._endpoints.setdefault(key, {})[w.uid] = w
        if self.local_node and w.node == self.local_node:
            self.local[w.uid] = w

    def _unindex_workload(self, w: Workload) -> None:
        net = self._by_ip.get(w.network, {})
        for ip in w.addresses:
            cur = net.get(ip)
            if isinstance(cur, list):
                rest = [x for x in cur if x.uid != w.uid]
                if len(rest) == 1:
                    net[ip] = rest[0]
                elif rest:
                    net[ip] = rest
                else:
                    del net[ip]
            elif cur is not None and cur.uid == w.uid:
                del net[ip]
        for key, _ in w.services:
            eps = self._endpoints.get(key)
            if eps is not None:
                eps.pop(w.uid, None)
                if not eps:
                    del self._endpoints[key]
        self.local.pop(w.uid, None)

    def _index_service(self, s: Service) -> None:
        for v in s.vips:
            if v.length is not None:
                self._cidr_vips[s.key] = s
            else:
                self._by_vip.setdefault(v.network, {})[v.address] = s

    def _unindex_service(self, s: Service) -> None:
        self._cidr_vips.pop(s.key, None)
        for v in s.vips:
            net = self._by_vip.get(v.network, {})
            if v.length is None and net.get(v.address) is s:
                del net[v.address]

    # ---- notifications ----

    def subscribe(self, fn: Subscriber) -> Callable[[], None]:
        """Call `fn(changes)` after every applied batch; returns the unsubscribe function.

        Runs synchronously in the xDS task: keep it short (hand off to a queue if not).
        """
        self._subscribers.append(fn)
        return lambda: self._subscribers.remove(fn) if fn in self._subscribers else None

    def queue(self, maxsize: int = 0) -> tuple[asyncio.Queue[Sequence[Change]], Callable[[], None]]:
        """An asyncio queue of change batches, and its unsubscribe function."""
        q: asyncio.Queue[Sequence[Change]] = asyncio.Queue(maxsize)
        return q, self.subscribe(q.put_nowait)

    def _publish(self, changes: Sequence[Change]) -> None:
        for fn in list(self._subscribers):
            try:
                fn(changes)
            except Exception:
                # A broken consumer must not leave the state half-applied for the others.
                log.exception("xds_subscriber_failed")

    def __iter__(self) -> Iterator[Record]:
        yield from self.workloads.values()
        yield from self.services.values()
        yield from self.policies.values()
        yield from self.traffic.values()
        yield from self.egress.values()
        yield from self.labels.values()
