"""One object for equal values across the index's records (memory per workload).

A converted object is read from a fresh copy of the stored object (controlplane/kube/objects.py
packs them), so without this every pod the index keeps would hold its own copy of its labels
and node name, although the pods of one deployment share them. Label maps and pods' (labels,
node) records are shared through bounded tables; strings are interned. (Workloads themselves
are kept as their served bytes: controlplane/ambient/index.py.)
"""

from __future__ import annotations

import sys

_s = sys.intern


class Share:
    def __init__(self, limit: int = 200_000) -> None:
        self._label_maps: dict[tuple[tuple[str, str], ...], dict[str, str]] = {}
        self._pods: dict[tuple[int, str], tuple[dict[str, str] | None, str]] = {}
        self._limit = limit

    def labels(self, labels: dict[str, str]) -> dict[str, str]:
        """The one map equal to `labels` (with its items in the same order); not to be
        changed by the caller."""
        key = tuple(labels.items())
        got = self._label_maps.get(key)
        if got is None:
            if len(self._label_maps) >= self._limit:
                self._label_maps.clear()  # bounded: sharing restarts from here
            got = self._label_maps[key] = {_s(k): _s(v) for k, v in key}
        return got

    def pod(self, labels: dict[str, str] | None, node: str) -> tuple[dict[str, str] | None, str]:
        """The one (labels, node) record of the index's pods with these labels (a map from
        `labels`, compared by identity) and node: the pods of a deployment on one node share
        it."""
        key = (id(labels), node)
        got = self._pods.get(key)
        if got is None:
            if len(self._pods) >= self._limit:
                self._pods.clear()  # bounded: sharing restarts from here
            # The record holds `labels`, so its id is not reused while the key is here.
            got = self._pods[key] = (labels, node)
        return got
