"""`meshnode controlplane --check`: every problem with a source's objects, one line each, read
once and served nowhere.

Two kinds of problem, for both sources:
- an object that fails its schema (`Kind ns/name: field: reason`; controlplane/kube/validate.py)
  or, in a manifests file, a document that does not parse (`FILE:LINE: reason`);
- an object that passes its schema but that the conversion skips in whole or in part
  (`Kind ns/name: field: reason`; controlplane/ambient), as the running control plane would
  log it as `object_not_converted`.

A live API server has checked its objects' schemas itself, but not against the schema this
control plane was built with (an older CRD version, a field this release does not know), so
they are checked again here, with the same rules as manifests.
"""

from __future__ import annotations

from pathlib import Path

from controlplane.ambient.index import Index
from controlplane.ambient.options import Options
from controlplane.kube import manifests
from controlplane.kube.informer import ListError, list_cluster
from controlplane.kube.objects import ObjectStore
from controlplane.kube.validate import validate
from controlplane.traffic.index import TrafficIndex


class CheckError(Exception):
    """The source could not be read at all (no API server, a bad kubeconfig)."""


def check_config(path: Path, options: Options | None = None) -> list[str]:
    """The problems of a manifests file or directory; [] if none."""
    found = manifests.load(path)
    store = ObjectStore()
    for kind, objs in found.objects.items():
        for obj in objs:
            store.put(kind, obj)
    return [*found.errors, *_conversion_errors(store, options)]


async def check_cluster(kubeconfig: str, options: Options | None = None) -> list[str]:
    """The problems of what the API server holds (every kind, listed once); "" is the pod's
    service account. Raises CheckError if the API server cannot be read."""
    try:
        listed = await list_cluster(kubeconfig)
    except ListError as exc:
        raise CheckError(str(exc)) from None
    problems: list[str] = []
    store = ObjectStore()
    for kind, objs in listed.items():
        for obj in objs:
            bad = validate(kind, obj)
            problems.extend(str(p) for p in bad)
            if not bad:
                store.put(kind, obj)
    return [*problems, *_conversion_errors(store, options)]


def _conversion_errors(store: ObjectStore, options: Options | None) -> list[str]:
    """The objects the conversions skip in whole or in part: the ambient index's (services,
    workloads, policies), then traffic management's (controlplane/traffic)."""
    index = Index(store, options, watch=False)
    return [*index.errors, *TrafficIndex(store, index, watch=False).errors]
