"""The served resources, kept from the ambient index (Kubernetes and Istio objects).

Each index delta becomes the changed Address and Authorization entries, published in place:
the work per change is proportional to the change, not to the mesh. The CA's question (does
this identity run on that node?) is answered from a count kept per (namespace, service
account, node), updated with the same deltas.
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
    workload_entry,
)
from controlplane.store import ServedStore
from core.mesh.model import Workload

Identity = tuple[str, str, str]  # (namespace, service account, node)


def _identity(w: Workload) -> Identity | None:
    return (w.namespace, w.service_account, w.node) if w.node and w.service_account else None


class AmbientStore(ServedStore):
    def __init__(self, index: Index, trust_domain: str) -> None:
        self.index = index
        self._ids: Counter[Identity] = Counter()
        self._workloads: dict[str, Workload] = {}
        addresses: dict[str, Entry] = {}
        for uid, w in index.workloads.items():
            addresses[uid] = workload_entry(w)
            self._count(uid, w)
        for key, s in index.services.items():
            addresses[key] = service_entry(s)
        policies = {key: policy_entry(p) for key, p in index.policies.items()}
        super().__init__({ADDRESS_TYPE: addresses, AUTHORIZATION_TYPE: policies}, trust_domain)
        index.take()  # the state above already holds every change so far
        index.subscribe(self._on_delta)

    def has_identity_on_node(self, namespace: str, service_account: str, node: str) -> bool:
        return self._ids[(namespace, service_account, node)] > 0

    @property
    def counts(self) -> tuple[int, int, int]:
        """(workloads, services, policies) served now."""
        return len(self.index.workloads), len(self.index.services), len(self.index.policies)

    def _count(self, uid: str, w: Workload | None) -> None:
        old = self._workloads.pop(uid, None)
        if old is not None and (i := _identity(old)) is not None:
            self._ids[i] -= 1
            if self._ids[i] <= 0:
                del self._ids[i]
        if w is not None:
            self._workloads[uid] = w
            if (i := _identity(w)) is not None:
                self._ids[i] += 1

    def _on_delta(self, d: Delta) -> None:
        addresses: dict[str, Entry] = {}
        for uid, w in d.workloads.items():
            addresses[uid] = workload_entry(w)
            self._count(uid, w)
        for uid in d.removed_workloads:
            self._count(uid, None)
        for key, s in d.services.items():
            addresses[key] = service_entry(s)
        updated: Snapshot = {ADDRESS_TYPE: addresses,
                             AUTHORIZATION_TYPE: {k: policy_entry(p)
                                                  for k, p in d.policies.items()}}
        removed = {ADDRESS_TYPE: d.removed_workloads | d.removed_services,
                   AUTHORIZATION_TYPE: set(d.removed_policies)}
        self.index.take()  # delivered here; nothing else reads the pending delta
        self.publish(updated, removed)
