"""The served resources, kept from the ambient index (Kubernetes and Istio objects).

Each index delta becomes the changed Address and Authorization entries, published in place:
the work per change is proportional to the change, not to the mesh. The CA's question (does
this identity run on that node?) is answered from a count kept per (namespace, service
account, node), updated with the same deltas.

A workload is kept once: as the bytes the index compares and the ADS streams send (the
entry's value is the index's own bytes object, `Index.wire`); the count reads the identity a
workload had from those bytes when it changes, rather than keep every Workload record for it.
"""

from __future__ import annotations

from collections import Counter

from controlplane.ambient.index import Delta, Index
from controlplane.resources import (
    ADDRESS_TYPE,
    AUTHORIZATION_TYPE,
    Entry,
    Snapshot,
    policy_entry,
    service_entry,
    traffic_entry,
    workload_entry,
)
from controlplane.store import ServedStore
from controlplane.traffic.index import TrafficDelta, TrafficIndex
from core.mesh.model import Workload
from core.mesh.trafficpb import EGRESS_POLICY_TYPE, SERVICE_TRAFFIC_TYPE, WORKLOAD_LABELS_TYPE
from meshpb.istio import workload_pb2 as wl

Identity = tuple[str, str, str]  # (namespace, service account, node)
TRAFFIC_TYPE_OF = {"traffic": SERVICE_TRAFFIC_TYPE, "egress": EGRESS_POLICY_TYPE,
                   "labels": WORKLOAD_LABELS_TYPE}


def _identity(w: Workload) -> Identity | None:
    return (w.namespace, w.service_account, w.node) if w.node and w.service_account else None


def _served_identity(e: Entry) -> Identity | None:
    """The identity of a served workload entry (a service's has none)."""
    w = wl.Address.FromString(e.value).workload
    return (w.namespace, w.service_account, w.node) if w.node and w.service_account else None


class AmbientStore(ServedStore):
    def __init__(self, index: Index, trust_domain: str) -> None:
        self.index = index
        self._ids: Counter[Identity] = Counter()
        addresses: dict[str, Entry] = {}
        for uid, w in index.workloads.items():
            addresses[uid] = workload_entry(w, index.wire[uid])
            self._count(None, w)
        for key, s in index.services.items():
            addresses[key] = service_entry(s)
        policies = {key: policy_entry(p) for key, p in index.policies.items()}
        snapshot: Snapshot = {ADDRESS_TYPE: addresses, AUTHORIZATION_TYPE: policies}
        # Traffic management (controlplane/traffic): meshnode's own types, from the same
        # objects, published as they change.
        self.traffic = TrafficIndex(index.store, index)
        for rec in self.traffic.records():
            type_url, name, e = traffic_entry(rec)
            snapshot.setdefault(type_url, {})[name] = e
        super().__init__(snapshot, trust_domain)
        index.take()  # the state above already holds every change so far
        index.subscribe(self._on_delta)
        self.traffic.subscribe(self._on_traffic)

    def has_identity_on_node(self, namespace: str, service_account: str, node: str) -> bool:
        return self._ids[(namespace, service_account, node)] > 0

    @property
    def counts(self) -> tuple[int, int, int]:
        """(workloads, services, policies) served now."""
        return len(self.index.workloads), len(self.index.services), len(self.index.policies)

    def _count(self, old: Entry | None, w: Workload | None) -> None:
        """Count `w` (None: nothing) instead of the workload served as `old` (None: none)."""
        if old is not None and (i := _served_identity(old)) is not None:
            self._ids[i] -= 1
            if self._ids[i] <= 0:
                del self._ids[i]
        if w is not None and (i := _identity(w)) is not None:
            self._ids[i] += 1

    def _on_delta(self, d: Delta) -> None:
        addresses: dict[str, Entry] = {}
        served = self.snapshot.get(ADDRESS_TYPE, {})
        for uid, w in d.workloads.items():
            addresses[uid] = workload_entry(w, self.index.wire[uid])
            self._count(served.get(uid), w)
        for uid in d.removed_workloads:
            self._count(served.get(uid), None)
        for key, s in d.services.items():
            addresses[key] = service_entry(s)
        updated: Snapshot = {ADDRESS_TYPE: addresses,
                             AUTHORIZATION_TYPE: {k: policy_entry(p)
                                                  for k, p in d.policies.items()}}
        removed = {ADDRESS_TYPE: d.removed_workloads | d.removed_services,
                   AUTHORIZATION_TYPE: set(d.removed_policies)}
        self.index.take()  # delivered here; nothing else reads the pending delta
        self.publish(updated, removed)

    def _on_traffic(self, d: TrafficDelta) -> None:
        updated: Snapshot = {}
        removed: dict[str, set[str]] = {}
        for rec in d.updated:
            type_url, name, e = traffic_entry(rec)
            updated.setdefault(type_url, {})[name] = e
        for kind, key in d.removed:
            removed.setdefault(TRAFFIC_TYPE_OF[kind], set()).add(key)
        self.publish(updated, removed)
