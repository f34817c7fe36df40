"""The kinds the control plane reads, and the store that holds their current objects.

Objects stay the plain dicts the API server (or a manifest) gives: one malformed object must
not break the decoding of the others, and the conversion (controlplane/ambient) reads only
the fields it needs. Both sources, a manifests directory and the API server, fill the same
store, so the conversion cannot tell them apart.

The store keeps only what the conversion reads (`READS`, as istiod strips its informers'
objects), each object packed into one bytes string: a pod as the API server sends it is
kilobytes of dicts (managedFields, container specs, status timestamps), its projection ~300
bytes. So a change of only unread fields (resourceVersion, a status timestamp) is no change.
"""

from __future__ import annotations

import builtins
import marshal
from collections.abc import Callable, Iterable, Iterator
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
# Traffic management (controlplane/traffic).
VIRTUAL_SERVICE = Kind("VirtualService", "networking.istio.io", "v1", "virtualservices")
DESTINATION_RULE = Kind("DestinationRule", "networking.istio.io", "v1", "destinationrules")
SIDECAR = Kind("Sidecar", "networking.istio.io", "v1", "sidecars")

KINDS: tuple[Kind, ...] = (NAMESPACE, NODE, POD, SERVICE, ENDPOINT_SLICE, SERVICE_ENTRY,
                           WORKLOAD_ENTRY, AUTHORIZATION_POLICY, PEER_AUTHENTICATION,
                           VIRTUAL_SERVICE, DESTINATION_RULE, SIDECAR)
BY_KIND: dict[str, Kind] = {k.kind: k for k in KINDS}
# Istio serves its v1 kinds also as v1beta1/v1alpha3 (same schema): manifests written for
# older Istio releases are read unchanged.
ISTIO_VERSIONS = {"networking.istio.io": ("v1", "v1beta1", "v1alpha3"),
                  "security.istio.io": ("v1", "v1beta1")}


# ---- what the conversion reads ------------------------------------------------------------

# The annotations the conversion reads (controlplane/ambient: labels.REDIRECTION,
# SIDECAR_STATUS and AUTO_REGISTRATION_GROUP, services.TRAFFIC_DISTRIBUTION,
# policies.DRY_RUN; tests/controlplane/kube/test_projection.py checks the list).
READ_ANNOTATIONS = ("ambient.istio.io/redirection", "meshnode.io/redirection",
                    "sidecar.istio.io/status", "istio.io/autoRegistrationGroup",
                    "networking.istio.io/traffic-distribution", "istio.io/dry-run")
_ANNOTATIONS = f"metadata.annotations{{{','.join(READ_ANNOTATIONS)}}}"
_META = ("apiVersion", "kind", "metadata.name", "metadata.namespace", "metadata.labels",
         _ANNOTATIONS)
_CREATED = "metadata.creationTimestamp"  # the oldest of rival services/policies wins

# Kind -> every field the conversion (controlplane/ambient/*.py) reads; the store keeps these
# and nothing else. A path keeps the value at its end whole; `[]` projects each item of a
# list, `[k=v]` keeps only the items whose `k` is `v` (the one the conversion looks for);
# `{a,b}` keeps only those keys of a mapping. A value of the wrong shape (a string where a
# mapping is read, ...) is kept as it is, so the conversion rejects it as before; and so are
# annotations that are not strings. Adding a read to controlplane/ambient means adding it
# here: tests/controlplane/kube/test_projection.py converts every test object both ways.
READS: dict[str, tuple[str, ...]] = {
    "Namespace": _META,
    "Node": _META,
    "Pod": (*_META, "metadata.uid", "metadata.generateName", "metadata.deletionTimestamp",
            "metadata.ownerReferences[].kind", "metadata.ownerReferences[].name",
            "metadata.ownerReferences[].controller",
            "spec.nodeName", "spec.serviceAccountName", "spec.hostNetwork",
            "spec.containers[].ports", "spec.initContainers[].restartPolicy",
            "spec.initContainers[].ports",
            "status.phase", "status.podIP", "status.podIPs",
            "status.conditions[type=Ready].type", "status.conditions[type=Ready].status"),
    "Service": (*_META, _CREATED, "spec.type", "spec.ports", "spec.clusterIP",
                "spec.clusterIPs", "spec.internalTrafficPolicy", "spec.trafficDistribution",
                "spec.publishNotReadyAddresses", "spec.ipFamilies", "spec.selector"),
    "EndpointSlice": (*_META, "addressType", "ports", "endpoints[].addresses",
                      "endpoints[].conditions", "endpoints[].targetRef"),
    # Istio's kinds are read whole but for their status (few objects, every field matters);
    # of a ServiceEntry's, the addresses istiod's allocator wrote (services.py).
    "ServiceEntry": (*_META, _CREATED, "spec", "status.addresses"),
    "WorkloadEntry": (*_META, _CREATED, "spec"),
    "AuthorizationPolicy": (*_META, _CREATED, "spec"),
    "PeerAuthentication": (*_META, _CREATED, "spec"),
    "VirtualService": (*_META, _CREATED, "spec"),
    "DestinationRule": (*_META, _CREATED, "spec"),
    "Sidecar": (*_META, _CREATED, "spec"),
}


@dataclass
class _Shape:
    """A compiled READS entry."""

    fields: dict[str, _Shape] | None = None  # a mapping: keep these; None: keep it whole
    each: bool = False                       # a list: every item has this shape
    where: tuple[str, str] | None = None     # ... and only the items with item[k] == v stay
    keys: frozenset[str] | None = None       # a mapping kept but for these keys only


def _compile(paths: tuple[str, ...]) -> _Shape:
    root = _Shape(fields={})
    for path in paths:
        path, brace, listed = path.partition("{")  # keys may have dots: split them off
        node, parts = root, path.split(".")
        for i, part in enumerate(parts):
            name, keys, where, each = part, None, None, False
            if brace and i == len(parts) - 1:
                keys = frozenset(listed.removesuffix("}").split(","))
            elif name.endswith("]"):
                name, _, inner = name[:-1].partition("[")
                each = True
                if inner:
                    k, _, v = inner.partition("=")
                    where = (k, v)
            assert node.fields is not None, f"{path}: a field below a value kept whole"
            child = node.fields.get(name)
            if child is None:
                last = i == len(parts) - 1
                child = node.fields[name] = _Shape(None if last else {}, each, where, keys)
            node = child
    return root


def _project(v: Any, s: _Shape) -> Any:
    if s.each:
        if not isinstance(v, list):
            return v
        if s.where is not None:
            k, want = s.where
            # The others become {} rather than go: a malformed item keeps its index, so
            # the conversion reports it at the same `field[i]`.
            v = [x if not isinstance(x, dict) or x.get(k) == want else {} for x in v]
        return [_fields(x, s) for x in v]
    return _fields(v, s)


def _fields(v: Any, s: _Shape) -> Any:
    if s.keys is not None:
        if not isinstance(v, dict):
            return v
        return {k: x for k, x in v.items() if k in s.keys or not isinstance(x, str)}
    if s.fields is None or not isinstance(v, dict):
        return v
    return {k: _project(v[k], child) for k, child in s.fields.items() if k in v}


_SHAPES = {kind: _compile(paths) for kind, paths in READS.items()}


def project(kind: Kind, obj: Obj) -> Obj:
    """The object as the store keeps it: the fields of READS[kind] only (a new dict; values
    kept whole are shared with `obj`)."""
    out: Obj = _fields(obj, _SHAPES[kind.kind])
    return out


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


# A field the object does not have, in a packed mapping (marshal writes it in one byte).
_ABSENT = ...


class _Unshaped(Exception):
    """The object holds a tuple where its shape has a mapping: it is packed as it is."""


def _positional(v: Any, s: _Shape) -> Any:
    """`v` (projected with shape `s`) with every mapping of known fields written as the tuple
    of its values in the shape's order (`_ABSENT` for a missing one): the field names, most
    of a small object's bytes, are the shape's, not stored with each object."""
    if s.each:
        return [_positional_item(x, s) for x in v] if isinstance(v, list) else v
    return _positional_item(v, s)


def _positional_item(v: Any, s: _Shape) -> Any:
    if s.keys is not None or s.fields is None:
        return v
    if isinstance(v, tuple):  # JSON and YAML never make one; would read back as a mapping
        raise _Unshaped
    if not isinstance(v, dict):
        return v
    return tuple(_positional(v[k], child) if k in v else _ABSENT
                 for k, child in s.fields.items())


def _mapping(v: Any, s: _Shape) -> Any:
    """The inverse of `_positional`."""
    if s.each:
        return [_mapping_item(x, s) for x in v] if isinstance(v, list) else v
    return _mapping_item(v, s)


def _mapping_item(v: Any, s: _Shape) -> Any:
    if s.keys is not None or s.fields is None or not isinstance(v, tuple):
        return v
    return {k: _mapping(x, child) for (k, child), x in zip(s.fields.items(), v, strict=True)
            if x is not _ABSENT}


def _pack(kind: Kind, obj: Obj, projected: bool = True) -> bytes | Obj:
    """One bytes string (marshal: compact, and fast to read back), or the object itself if
    it holds what marshal cannot write (a manifest's YAML timestamp is a datetime). A
    projected object is packed positionally (`_positional`: about half the bytes of its
    mapping for a pod). Equal objects may pack to different bytes (back-references depend
    on reference counts): `put` compares them unpacked then."""
    try:
        if projected:
            try:
                return marshal.dumps(_positional(obj, _SHAPES[kind.kind]))
            except _Unshaped:
                pass
        return marshal.dumps(obj)
    except ValueError:
        return obj


def _unpack(kind: Kind, packed: bytes | Obj) -> Obj:
    if not isinstance(packed, bytes):
        return packed
    got = marshal.loads(packed)
    obj: Obj = _mapping(got, _SHAPES[kind.kind]) if isinstance(got, tuple) else got
    return obj


class Packed:
    """An object as the store keeps it, made where it is read (`packed`): its key and its
    projection, packed. The API-server source makes these as each page of a list arrives,
    so a big list is held as small strings of bytes, not as decoded objects, until the
    store has it (the decoded objects die young, and what stays is not strewn between
    their holes in the heap)."""

    __slots__ = ("data", "name", "ns")

    def __init__(self, ns: str, name: str, data: bytes | Obj) -> None:
        self.ns, self.name, self.data = ns, name, data


def packed(kind: Kind, obj: Obj) -> Packed:
    """`obj` as `ObjectStore.put` would keep it (its projection, packed)."""
    return Packed(*key_of(obj), _pack(kind, project(kind, obj)))


class ObjectStore:
    """Current objects per kind, keyed by namespace then name. Sources call `put`/`delete`
    (or `replace` after a full relist); listeners hear every real change, so a relist that
    finds nothing new pushes nothing.

    What is kept of an object is its projection (`project`; `project=False` keeps it whole,
    for comparing the two), packed; `get` and `list` give a fresh dict each time, and
    listeners the projection put. Objects are kept per namespace, so a pod costs its
    packed bytes and a slot in its namespace's table (no (namespace, name) tuple each)."""

    def __init__(self, project: bool = True) -> None:
        self._objs: dict[str, dict[str, dict[str, bytes | Obj]]] = {k.kind: {} for k in KINDS}
        self._listeners: list[Listener] = []
        self._project = project

    def subscribe(self, fn: Listener) -> None:
        self._listeners.append(fn)

    def _emit(self, kind: Kind, ns: str, name: str, obj: Obj | None) -> None:
        for fn in self._listeners:
            fn(kind, ns, name, obj)

    def put(self, kind: Kind, obj: Obj | Packed) -> None:
        if isinstance(obj, Packed):
            ns, name, data = obj.ns, obj.name, obj.data
            # Already projected; the listeners (and the comparison below) read a copy.
            proj = _unpack(kind, data)
        else:
            ns, name = key_of(obj)
            proj = project(kind, obj) if self._project else obj
            data = _pack(kind, proj, self._project)
        by_ns = self._objs[kind.kind]
        objs = by_ns.get(ns)
        old = None if objs is None else objs.get(name)
        # Equal bytes are the same object; unequal bytes may still be (marshal writes an
        # interned string differently), so the objects decide.
        if old is not None and (old == data or _unpack(kind, old) == proj):
            return
        if objs is None:
            objs = by_ns[ns] = {}
        objs[name] = data
        self._emit(kind, ns, name, proj)

    def delete(self, kind: Kind, ns: str, name: str) -> None:
        by_ns = self._objs[kind.kind]
        objs = by_ns.get(ns)
        if objs is not None and objs.pop(name, None) is not None:
            if not objs:
                del by_ns[ns]
            self._emit(kind, ns, name, None)

    def replace(self, kind: Kind, objs: Iterable[Obj | Packed]) -> int:
        """The whole current list of one kind: deletes what is gone, puts the rest; how many
        there are. Each object is let go of once put (a relist of a big cluster is not held
        whole while it is converted)."""
        fresh = {(o.ns, o.name) if isinstance(o, Packed) else key_of(o): o for o in objs}
        count = len(fresh)
        for ns, name in [k for k in self.keys(kind) if k not in fresh]:
            self.delete(kind, ns, name)
        for key in list(fresh):
            self.put(kind, fresh.pop(key))
        return count

    def get(self, kind: Kind, ns: str, name: str) -> Obj | None:
        objs = self._objs[kind.kind].get(ns)
        data = None if objs is None else objs.get(name)
        return None if data is None else _unpack(kind, data)

    def list(self, kind: Kind, ns: str | None = None) -> Iterator[Obj]:
        by_ns = self._objs[kind.kind]
        for names in (list(by_ns.values()) if ns is None else [by_ns.get(ns, {})]):
            for data in list(names.values()):
                yield _unpack(kind, data)

    def keys(self, kind: Kind) -> builtins.list[tuple[str, str]]:
        """(namespace, name) of every object of a kind (a list: safe to change the store
        while reading it)."""
        return [(ns, n) for ns, names in self._objs[kind.kind].items() for n in names]

    def count(self, kind: Kind) -> int:
        return sum(map(len, self._objs[kind.kind].values()))
