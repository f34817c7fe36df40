"""Every conversion test here also checks the object store's projection
(controlplane/kube/objects.py READS): the objects a test puts in a store are put, unprojected,
in a shadow store too, and at the end of the test both convert to the same mesh (workloads,
services, policies, errors and warnings). So a read added to controlplane/ambient without its
field in READS fails the tests that exercise it, instead of silently breaking the API-server
source. tests/controlplane/kube/test_projection.py does the same for the YAML test data."""

from __future__ import annotations

import copy
from collections.abc import Iterator
from typing import Any

import pytest

from controlplane.ambient.index import build
from controlplane.ambient.options import Options
from controlplane.kube.objects import BY_KIND, Kind, ObjectStore

# The default options, and every switch flipped (what is read may depend on them).
OPTIONS = (Options(), Options(enroll_by_labels=False, dry_run_policies=False,
                              service_entry_selects_pods=False,
                              service_selects_workload_entries=False))


@pytest.fixture(autouse=True)
def projection_loses_nothing(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    shadows: dict[int, tuple[ObjectStore, ObjectStore]] = {}
    # Every object ever put, at its last version (deleted ones too): another cluster.
    ever = ObjectStore(project=False)
    put, delete = ObjectStore.put, ObjectStore.delete

    def shadow(store: ObjectStore) -> ObjectStore | None:
        if store is ever or not store._project:
            return None
        return shadows.setdefault(id(store), (store, ObjectStore(project=False)))[1]

    def recording_put(self: ObjectStore, kind: Kind, obj: Any) -> None:
        raw = shadow(self)
        if raw is not None:
            put(raw, kind, copy.deepcopy(obj))
            put(ever, kind, copy.deepcopy(obj))
        put(self, kind, obj)

    def recording_delete(self: ObjectStore, kind: Kind, ns: str, name: str) -> None:
        raw = shadow(self)
        if raw is not None:
            delete(raw, kind, ns, name)
        delete(self, kind, ns, name)

    monkeypatch.setattr(ObjectStore, "put", recording_put)
    monkeypatch.setattr(ObjectStore, "delete", recording_delete)
    yield
    monkeypatch.undo()
    projected = ObjectStore()
    for kind_name in ever._objs:
        kind = BY_KIND[kind_name]
        for key in ever.keys(kind):
            obj = ever.get(kind, *key)
            assert obj is not None
            projected.put(kind, obj)
    pairs = [*shadows.values(), (projected, ever)]
    for opts in OPTIONS:
        for store, raw in pairs:
            assert build(store, opts) == build(raw, opts), \
                "the projection (controlplane/kube/objects.py READS) lost a field read"
