"""The object store keeps only what the conversion reads (controlplane/kube/objects.py READS,
`project`), packed. A field the conversion reads but the projection drops would silently
break the API-server source, so: the YAML test data and the example manifests convert to the
same mesh projected or not (every conversion test in tests/controlplane/ambient checks the
same of its objects, tests/controlplane/ambient/conftest.py), and the projection's rules
are pinned here."""

from __future__ import annotations

import datetime
import marshal
from pathlib import Path
from typing import Any

import pytest

from controlplane.ambient import labels, policies, services
from controlplane.ambient.index import build
from controlplane.kube import manifests
from controlplane.kube.objects import (
    KINDS,
    POD,
    READ_ANNOTATIONS,
    READS,
    SERVICE_ENTRY,
    ObjectStore,
    packed,
    project,
)

REPO = Path(__file__).resolve().parents[3]
DATA = [REPO / "tests/controlplane/kube/data/istio-docs", REPO / "controlplane/examples/manifests"]

# A pod as the API server sends it: most of it is read by nobody.
POD_OBJ: dict[str, Any] = {
    "apiVersion": "v1", "kind": "Pod",
    "metadata": {
        "name": "web-7d4b9-x2x4z", "namespace": "shop", "uid": "4b1c", "resourceVersion": "812",
        "generateName": "web-7d4b9-", "creationTimestamp": "2025-01-01T00:00:00Z",
        "labels": {"app": "web", "pod-template-hash": "7d4b9"},
        "annotations": {"kubectl.kubernetes.io/restartedAt": "2025-01-01T00:00:00Z",
                        "ambient.istio.io/redirection": "enabled"},
        "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "web-7d4b9",
                             "uid": "77", "controller": True, "blockOwnerDeletion": True}],
        "managedFields": [{"manager": "kubelet", "fieldsV1": {"f:status": {}}}]},
    "spec": {"nodeName": "n1", "serviceAccountName": "web",
             "containers": [{"name": "app", "image": "web:1", "env": [{"name": "A"}],
                             "ports": [{"name": "http", "containerPort": 8080}]}],
             "volumes": [{"name": "token", "projected": {}}]},
    "status": {"phase": "Running", "podIP": "10.0.0.5", "podIPs": [{"ip": "10.0.0.5"}],
               "startTime": "2025-01-01T00:00:01Z",
               "conditions": [
                   {"type": "Initialized", "status": "True",
                    "lastTransitionTime": "2025-01-01T00:00:01Z"},
                   {"type": "Ready", "status": "True",
                    "lastTransitionTime": "2025-01-01T00:00:05Z"}],
               "containerStatuses": [{"name": "app", "ready": True, "restartCount": 0}]}}


def _stores(path: Path) -> tuple[ObjectStore, ObjectStore]:
    found = manifests.load(path)
    assert not found.errors, found.errors
    projected, raw = ObjectStore(), ObjectStore(project=False)
    for kind, objs in found.objects.items():
        for obj in objs:
            projected.put(kind, obj)
            raw.put(kind, obj)
    return projected, raw


@pytest.mark.parametrize("path", DATA, ids=lambda p: p.name)
def test_the_test_data_converts_the_same_projected(path: Path) -> None:
    projected, raw = _stores(path)
    assert sum(raw.count(k) for k in KINDS) > 0
    got, want = build(projected), build(raw)
    assert got == want
    assert got.workloads or got.policies  # the data is not all skipped


def test_the_annotations_kept_are_the_ones_the_conversion_reads() -> None:
    assert set(READ_ANNOTATIONS) == {*labels.REDIRECTION, labels.SIDECAR_STATUS,
                                     labels.AUTO_REGISTRATION_GROUP,
                                     services.TRAFFIC_DISTRIBUTION, policies.DRY_RUN}
    assert set(READS) == {k.kind for k in KINDS}


def test_a_pod_keeps_only_what_is_read() -> None:
    got = project(POD, POD_OBJ)
    assert got == {
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "web-7d4b9-x2x4z", "namespace": "shop",
                     "labels": {"app": "web", "pod-template-hash": "7d4b9"},
                     "annotations": {"ambient.istio.io/redirection": "enabled"},
                     "uid": "4b1c", "generateName": "web-7d4b9-",
                     "ownerReferences": [{"kind": "ReplicaSet", "name": "web-7d4b9",
                                          "controller": True}]},
        "spec": {"nodeName": "n1", "serviceAccountName": "web",
                 "containers": [{"ports": [{"name": "http", "containerPort": 8080}]}]},
        # The other conditions stay as {}: a malformed one would keep its index.
        "status": {"phase": "Running", "podIP": "10.0.0.5", "podIPs": [{"ip": "10.0.0.5"}],
                   "conditions": [{}, {"type": "Ready", "status": "True"}]}}
    assert len(marshal.dumps(got)) < len(marshal.dumps(POD_OBJ)) * 0.6


def test_a_malformed_value_is_kept_as_it_is() -> None:
    bad = {"apiVersion": "v1", "kind": "Pod",
           "metadata": {"name": "p", "namespace": "ns", "labels": ["not", "a", "mapping"],
                        "annotations": {"other": "x", "weird": 5}},
           "spec": "not a mapping",
           "status": {"conditions": [7, {"type": "Scheduled", "bad": 1}],
                      "podIPs": {"ip": "10.0.0.1"}}}
    got = project(POD, bad)
    assert got["metadata"]["labels"] == ["not", "a", "mapping"]
    assert got["metadata"]["annotations"] == {"weird": 5}  # string_map rejects it
    assert got["spec"] == "not a mapping"
    assert got["status"] == {"conditions": [7, {}], "podIPs": {"ip": "10.0.0.1"}}


def test_a_change_of_unread_fields_is_no_change() -> None:
    store = ObjectStore()
    events: list[str] = []
    store.subscribe(lambda kind, ns, name, obj: events.append(name))
    store.put(POD, POD_OBJ)
    later = {**POD_OBJ, "metadata": {**POD_OBJ["metadata"], "resourceVersion": "900"},
             "status": {**POD_OBJ["status"], "startTime": "2025-01-02T00:00:00Z"}}
    store.put(POD, later)
    assert events == ["web-7d4b9-x2x4z"]
    store.put(POD, {**later, "spec": {**later["spec"], "nodeName": "n2"}})
    assert events == ["web-7d4b9-x2x4z"] * 2
    got = store.get(POD, "shop", "web-7d4b9-x2x4z")
    assert got is not None and got["spec"]["nodeName"] == "n2"
    assert got is not store.get(POD, "shop", "web-7d4b9-x2x4z")  # a fresh copy each time


def test_what_marshal_cannot_write_is_kept_as_it_is() -> None:
    # An unquoted YAML timestamp is a datetime.
    created = datetime.datetime(2025, 1, 1, tzinfo=datetime.UTC)
    se = {"apiVersion": "networking.istio.io/v1", "kind": "ServiceEntry",
          "metadata": {"name": "ext", "namespace": "ns", "creationTimestamp": created},
          "spec": {"hosts": ["a.example.com"]}}
    store = ObjectStore()
    store.put(SERVICE_ENTRY, se)
    got = store.get(SERVICE_ENTRY, "ns", "ext")
    assert got is not None and got["metadata"]["creationTimestamp"] == created
    events: list[str] = []
    store.subscribe(lambda kind, ns, name, obj: events.append(name))
    store.put(SERVICE_ENTRY, dict(se))
    assert events == []


@pytest.mark.parametrize("obj", [
    POD_OBJ,
    # wrong shapes everywhere the conversion reports them: kept, and read back, as they are
    {"apiVersion": "v1", "kind": "Pod",
     "metadata": {"name": "p", "namespace": "ns", "labels": ["not", "a", "mapping"],
                  "annotations": {"other": "x", "weird": 5}, "ownerReferences": "x"},
     "spec": "not a mapping", "status": {"conditions": [7, {"type": "Scheduled"}, None],
                                         "podIPs": {"ip": "10.0.0.1"}, "podIP": None}},
    # a field present as null is not a field absent
    {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p", "namespace": "ns",
                                                     "labels": None}, "spec": {}},
    # a tuple where a mapping is read (only Python callers make one): packed as it is
    {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p", "namespace": "ns"},
     "spec": ("nodeName", "n1")},
], ids=["api-pod", "malformed", "null", "tuple"])
def test_the_store_gives_back_exactly_the_projection(obj: dict[str, Any]) -> None:
    store = ObjectStore()
    heard: list[Any] = []
    store.subscribe(lambda kind, ns, name, o: heard.append(o))
    store.put(POD, obj)
    ns, name = store.keys(POD)[0]
    assert store.get(POD, ns, name) == project(POD, obj) == heard[0]
    # made where the list is read (the API-server source): the same bytes, the same object
    listed = ObjectStore()
    listed.put(POD, packed(POD, obj))
    assert listed.get(POD, ns, name) == project(POD, obj)


def test_a_pod_is_packed_without_its_field_names() -> None:
    [(ns, name)] = [(POD_OBJ["metadata"]["namespace"], POD_OBJ["metadata"]["name"])]
    data = packed(POD, POD_OBJ).data
    assert isinstance(data, bytes)
    assert b"serviceAccountName" not in data and b"metadata" not in data
    assert len(data) < len(marshal.dumps(project(POD, POD_OBJ))) * 0.7
    store = ObjectStore()
    store.put(POD, packed(POD, POD_OBJ))
    assert store.keys(POD) == [(ns, name)] and store.count(POD) == 1


def test_a_relist_of_packed_objects_changes_only_what_changed() -> None:
    store = ObjectStore()
    store.put(POD, POD_OBJ)
    gone = {**POD_OBJ, "metadata": {**POD_OBJ["metadata"], "name": "gone"}}
    store.put(POD, gone)
    events: list[tuple[str, bool]] = []
    store.subscribe(lambda kind, ns, name, o: events.append((name, o is not None)))
    moved = {**POD_OBJ, "spec": {**POD_OBJ["spec"], "nodeName": "n9"}}
    fresh = {**POD_OBJ, "metadata": {**POD_OBJ["metadata"], "name": "fresh"}}
    # the same pod again (unchanged), one moved, one new, one gone
    assert store.replace(POD, [packed(POD, POD_OBJ), packed(POD, fresh)]) == 2
    assert sorted(events) == [("fresh", True), ("gone", False)]
    events.clear()
    store.replace(POD, [packed(POD, moved), packed(POD, fresh)])
    assert events == [("web-7d4b9-x2x4z", True)]
