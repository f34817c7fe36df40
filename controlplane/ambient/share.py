"""One object for equal values across the index's records (memory per workload).

A converted object is read from a fresh copy of the stored object (controlplane/kube/objects.py
packs them), so without this every workload holds its own copy of its namespace, node, service
account and canonical names, of its services' ports and of its policy list, and every pod its
own labels, although the pods of one deployment share all of them. Strings are interned;
tuples and label maps are shared through bounded tables (core/mesh/intern.py's Interner).
"""

from __future__ import annotations

import dataclasses
import sys

from core.mesh.intern import Interner
from core.mesh.model import Port, Workload

_s = sys.intern


class Share:
    def __init__(self, limit: int = 200_000) -> None:
        self._tuples = Interner(limit)
        self._label_maps: dict[tuple[tuple[str, str], ...], dict[str, str]] = {}
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

    def _ports(self, ports: tuple[Port, ...]) -> tuple[Port, ...]:
        return self._tuples(tuple(self._tuples(p) for p in ports))

    def workload(self, w: Workload, name: str = "") -> Workload:
        """`w` with its repeated values shared (its own uid and addresses are kept). `name`:
        the string the index already holds for the object's name, kept instead of the
        workload's equal copy."""
        share = self._tuples
        if name != w.name:
            name = w.name
        return dataclasses.replace(
            w, name=name, namespace=_s(w.namespace), network=_s(w.network),
            trust_domain=_s(w.trust_domain), service_account=_s(w.service_account),
            node=_s(w.node), canonical_name=_s(w.canonical_name),
            canonical_revision=_s(w.canonical_revision),
            # The pod's own name when it has no controller: kept as that one string.
            workload_name=name if w.workload_name == name else _s(w.workload_name),
            services=share(tuple(share((_s(k), self._ports(ports)))
                                 for k, ports in w.services)),
            authorization_policies=share(tuple(_s(p) for p in w.authorization_policies)),
            cluster_id=_s(w.cluster_id), locality=share(w.locality))
