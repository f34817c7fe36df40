"""Subset membership: a DestinationRule subset selects the service's endpoints whose labels
include every (key, value) of the subset's `labels` (Istio's label selector; no labels select
every endpoint).

The mesh model's Workload has no labels (istio.workload.Workload carries none: ztunnel never
needed them), so they come in as a lookup by workload uid, `LabelsOf`. The wire must carry
them: the labels of every endpoint of a service that has subsets, and of every local pod that
a route's `sourceLabels` may select (the next step adds them to the traffic resource)."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

from core.mesh.model import Workload
from core.mesh.traffic import Labels, Subset

LabelsOf = Callable[[str], Mapping[str, str]]
"""Workload uid -> its labels ({} when unknown)."""


def selects(selector: Labels, labels: Mapping[str, str]) -> bool:
    return all(labels.get(k) == v for k, v in selector)


def members(endpoints: Sequence[Workload], subset: Subset | None,
            labels_of: LabelsOf) -> tuple[Workload, ...]:
    """The endpoints of `subset` (None: all of them), in the service's order."""
    if subset is None or not subset.labels:
        return tuple(endpoints)
    return tuple(w for w in endpoints if selects(subset.labels, labels_of(w.uid)))
