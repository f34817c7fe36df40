"""WorkloadLabels: the labels of a workload that some traffic rule reads.

Istio's Workload resource has no labels, and sending every label of every pod would cost
each node agent memory for nothing; so only the keys that a DestinationRule subset, a route's
`sourceLabels` or a Sidecar's `workloadSelector` names are sent, and only for workloads that
have one of them. A mesh without such rules sends no labels at all.

Sources: Pods (metadata.labels) and WorkloadEntries (spec.labels + metadata.labels), under
the uids the ambient index gives their workloads. (ServiceEntry `endpoints[].labels` are not
sent: a subset of a ServiceEntry's inline endpoints selects none of them.)
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from core.mesh.traffic import EgressPolicy, ServiceTraffic, WorkloadLabels, labels


def keys_read(traffic: Iterable[ServiceTraffic], egress: Iterable[EgressPolicy]) -> frozenset[str]:
    out: set[str] = set()
    for t in traffic:
        for s in t.subsets:
            out.update(k for k, _ in s.labels)
        for r in t.routes:
            for m in r.matches:
                out.update(k for k, _ in m.source_labels)
    for e in egress:
        out.update(k for k, _ in e.selector)
    return frozenset(out)


def workload_labels(uid: str, all_labels: Mapping[str, str],
                    keys: frozenset[str]) -> WorkloadLabels | None:
    kept = {k: v for k, v in all_labels.items() if k in keys}
    return WorkloadLabels(uid, labels(kept)) if kept else None
