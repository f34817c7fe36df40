"""The kinds the control plane reads, and the store that holds their current objects.

Objects stay the plain dicts the API server (or a manifest) gives: one malformed object must
not break the decoding of the others, and the conversion (controlplane/ambient) reads only
the fields it needs. Both sources, a manifests directory and the API server, fill the same
store, so the conversion cannot tell them apart.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

Obj = dict[str, Any]


@dataclass(frozen=True, slots=True)
class Kind:
    kind: str
    group: str        # "" for the core group
    version: str
    plural: str
    namespaced: bool = True

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version

    @property
    def path(self) -> str:
        """The collection's URL path below the API server's root (all namespaces)."""
        base = f"/apis/{self.group}/{self.version}" if self.group else f"/api/{self.version}"
        return f"{base}/{self.plural}"


NAMESPACE = Kind("Namespace", "", "v1", "namespaces", namespaced=False)
NODE = Kind("Node", "", "v1", "nodes", namespaced=False)
POD = Kind("Pod", "", "v1", "pods")
SERVICE = Kind("Service", "", "v1", "services")
ENDPOINT_SLICE = Kind("EndpointSlice", "discovery.k8s.io", "v1", "endpointslices")
SERVICE_ENTRY = Kind("ServiceEntry", "networking.istio.io", "v1", "serviceentries")
WORKLOAD_ENTRY = Kind("WorkloadEntry", "networking.istio.io", "v1", "workloadentries")
AUTHORIZATION_POLICY = Kind("AuthorizationPolicy", "security.istio.io", "v1",
                            "authorizationpolicies")
PEER_AUTHENTICATION = Kind("PeerAuthentication", "security.istio.io", "v1",
                           "peerauthentications")

KINDS: tuple[Kind, ...] = (NAMESPACE, NODE, POD, SERVICE, ENDPOINT_SLICE, SERVICE_ENTRY,
                           WORKLOAD_ENTRY, AUTHORIZATION_POLICY, PEER_AUTHENTICATION)
BY_KIND: dict[str, Kind] = {k.kind: k for k in KINDS}
# Istio serves its v1 kinds also as v1beta1/v1alpha3 (same schema): manifests written for
# older Istio releases are read unchanged.
ISTIO_VERSIONS = {"networking.istio.io": ("v1", "v1beta1", "v1alpha3"),
                  "security.istio.io": ("v1", "v1beta1")}


def kind_of(obj: Obj) -> Kind | None:
    """The known kind an object declares (apiVersion + kind), or None."""
    k = BY_KIND.get(str(obj.get("kind", "")))
    if k is None:
        return None
    group, _, version = str(obj.get("apiVersion", "")).rpartition("/")
    if group != k.group:
        return None
    if version == k.version or version in ISTIO_VERSIONS.get(group, ()):
        return k
    return None


def key_of(obj: Obj) -> tuple[str, str]:
    """(namespace, name); namespace "" for a cluster-scoped object."""
    meta = obj.get("metadata") or {}
    return str(meta.get("namespace") or ""), str(meta.get("name") or "")


def ref(kind: Kind, obj: Obj) -> str:
    """How an object is named in errors and logs: `Kind ns/name` (`Kind name` if global)."""
    ns, name = key_of(obj)
    return f"{kind.kind} {ns}/{name}" if kind.namespaced else f"{kind.kind} {name}"


# (kind, namespace, name, the new object or None when deleted)
Listener = Callable[[Kind, str, str, Obj | None], None]


class ObjectStore:
    """Current objects per kind, keyed by (namespace, name). Sources call `put`/`delete`
    (or `replace` after a full relist); listeners hear every real change, so a relist that
    finds nothing new pushes nothing."""

    def __init__(self) -> None:
        self._objs: dict[str, dict[tuple[str, str], Obj]] = {k.kind: {} for k in KINDS}
        self._listeners: list[Listener] = []

    def subscribe(self, fn: Listener) -> None:
        self._listeners.append(fn)

    def _emit(self, kind: Kind, ns: str, name: str, obj: Obj | None) -> None:
        for fn in self._listeners:
            fn(kind, ns, name, obj)

    def put(self, kind: Kind, obj: Obj) -> None:
        ns, name = key_of(obj)
        objs = self._objs[kind.kind]
        if objs.get((ns, name)) == obj:
            return
        objs[(ns, name)] = obj
        self._emit(kind, ns, name, obj)

    def delete(self, kind: Kind, ns: str, name: str) -> None:
        if self._objs[kind.kind].pop((ns, name), None) is not None:
            self._emit(kind, ns, name, None)

    def replace(self, kind: Kind, objs: list[Obj]) -> None:
        """The whole current list of one kind: deletes what is gone, puts the rest."""
        fresh = {key_of(o): o for o in objs}
        for ns, name in [k for k in self._objs[kind.kind] if k not in fresh]:
            self.delete(kind, ns, name)
        for o in fresh.values():
            self.put(kind, o)

    def get(self, kind: Kind, ns: str, name: str) -> Obj | None:
        return self._objs[kind.kind].get((ns, name))

    def list(self, kind: Kind, ns: str | None = None) -> Iterator[Obj]:
        for (ons, _), o in self._objs[kind.kind].items():
            if ns is None or ons == ns:
                yield o

    def count(self, kind: Kind) -> int:
        return len(self._objs[kind.kind])
