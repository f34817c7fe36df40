"""The incremental index: Kubernetes and Istio objects (controlplane/kube/objects.py's
ObjectStore) -> the mesh model, kept current change by change.

`Index(store)` converts everything once, then subscribes to the store. Each change recomputes
only what it can affect and reports the workloads, services and policies that changed or went
away (`Delta`), so the ADS server pushes deltas proportional to the change:

| change                        | recomputed                                                  |
|-------------------------------|-------------------------------------------------------------|
| Pod, WorkloadEntry            | that workload                                               |
| ServiceEntry                  | its services (and others claiming the same hosts), its      |
|                               | endpoint workloads, the workloads its selector picks        |
| Service                       | its service, the workloads its old or new selector picks,   |
|                               | the pods and endpoints its EndpointSlices list              |
| EndpointSlice                 | its endpoint workloads and the pods it lists                |
| Namespace                     | labels: its pods (enrollment); traffic-distribution         |
|                               | annotation: its services; the system namespace's network    |
|                               | label: everything                                           |
| Node                          | its pods (locality), when its topology labels change        |
| AuthorizationPolicy           | that policy; the workloads its old or new selector picks    |
| PeerAuthentication            | the converted policies that depend on it; the workloads it  |
|                               | can apply to (a namespace's, or all for a mesh-wide one)    |

`build(store)` is the full conversion (a fresh index); tests prove that after any sequence of
changes the index equals it. Bad input never raises: a malformed object is skipped and its
reason, `Kind ns/name: field: reason`, is in `errors` until the object is fixed or deleted;
accepted-with-caveats objects (HTTP-only policy attributes, CUSTOM actions) are in `warnings`.
"""

from __future__ import annotations

import sys
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

import structlog

from controlplane.ambient import autoallocate, peerauth, policies, read, services, workloads
from controlplane.ambient import labels as lbl
from controlplane.ambient.options import Options
from controlplane.ambient.policies import AuthzInfo
from controlplane.ambient.services import SERVICE, ServiceInfo
from controlplane.ambient.share import Share
from controlplane.kube.objects import (
    AUTHORIZATION_POLICY,
    BY_KIND,
    ENDPOINT_SLICE,
    NAMESPACE,
    NODE,
    PEER_AUTHENTICATION,
    POD,
    SERVICE_ENTRY,
    WORKLOAD_ENTRY,
    Kind,
    ObjectStore,
)
from controlplane.kube.objects import SERVICE as SERVICE_KIND
from core.mesh import topb
from core.mesh.frompb import Converter
from core.mesh.model import NO_LOCALITY, Policy, Service, Workload

log = structlog.get_logger("controlplane.ambient")

Src = tuple[str, str, str]          # (kind, namespace, name) of a source object
Key = tuple[str, str]               # (namespace, name)
T = TypeVar("T")
_WORKLOAD_KINDS = (POD.kind, WORKLOAD_ENTRY.kind, SERVICE_ENTRY.kind)  # labelled sources


@dataclass
class Delta:
    """What changed: records added or changed (by uid / service key / policy key) and the
    keys of those removed."""

    workloads: dict[str, Workload] = field(default_factory=dict)
    removed_workloads: set[str] = field(default_factory=set)
    services: dict[str, Service] = field(default_factory=dict)
    removed_services: set[str] = field(default_factory=set)
    policies: dict[str, Policy] = field(default_factory=dict)
    removed_policies: set[str] = field(default_factory=set)

    def __bool__(self) -> bool:
        return bool(self.workloads or self.removed_workloads or self.services
                    or self.removed_services or self.policies or self.removed_policies)

    def merge(self, later: Delta) -> None:
        """Fold a later delta into this one."""
        _fold(self.workloads, self.removed_workloads, later.workloads, later.removed_workloads)
        _fold(self.services, self.removed_services, later.services, later.removed_services)
        _fold(self.policies, self.removed_policies, later.policies, later.removed_policies)


def _fold(mine: dict[str, T], gone: set[str], theirs: dict[str, T], their_gone: set[str]) -> None:
    for k, v in theirs.items():
        mine[k] = v
        gone.discard(k)
    for k in their_gone:
        mine.pop(k, None)
        gone.add(k)


def _diff(before: dict[str, T], after: dict[str, T], changed: dict[str, T],
          removed: set[str]) -> None:
    removed.update(k for k in before if k not in after)
    changed.update({k: v for k, v in after.items() if before.get(k) != v})


@dataclass(frozen=True)
class MeshState:
    workloads: dict[str, Workload]
    services: dict[str, Service]
    policies: dict[str, Policy]
    errors: tuple[str, ...]
    warnings: tuple[str, ...]


@dataclass
class Notes:
    """What one object's conversion says besides its result."""

    warnings: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)   # parts skipped, the rest converted


def encode(w: Workload) -> bytes:
    """A workload as served: its istio.workload.Address, deterministic protobuf bytes (equal
    workloads give equal bytes, so the bytes are what the index compares)."""
    out: bytes = topb.address(w).SerializeToString(deterministic=True)
    return out


class Workloads(Mapping[str, Workload]):
    """The index's workloads by uid, read from the bytes it keeps (`Index.wire`): a record
    decoded on each access (for tests, `--check` and debugging; the ADS server serves the
    bytes as they are). A hundred thousand Workload records next to their bytes would be
    half a kilobyte per workload kept twice."""

    def __init__(self, wire: dict[str, bytes]) -> None:
        self._wire = wire
        self._conv: Converter | None = None

    def __getitem__(self, uid: str) -> Workload:
        if self._conv is None:
            self._conv = Converter()
        w = self._conv.address(uid, "", self._wire[uid])
        assert isinstance(w, Workload)
        return w

    def __contains__(self, uid: object) -> bool:
        return uid in self._wire

    def __iter__(self) -> Iterator[str]:
        return iter(self._wire)

    def __len__(self) -> int:
        return len(self._wire)


def _ref(kind: str, ns: str, name: str) -> str:
    """`Kind ns/name`, or `Kind name` for a cluster-scoped kind (as objects.ref)."""
    k = BY_KIND.get(kind)
    return f"{kind} {ns}/{name}" if k is None or k.namespaced else f"{kind} {name}"


class Index:
    def __init__(self, store: ObjectStore, options: Options | None = None, *,
                 watch: bool = True) -> None:
        self.store = store
        self.opts = options or Options()
        # uid -> the workload's served bytes (`encode`); `workloads` reads them as records.
        self.wire: dict[str, bytes] = {}
        self.workloads: Mapping[str, Workload] = Workloads(self.wire)
        self.services: dict[str, Service] = {}
        self.policies: dict[str, Policy] = {}
        self.pending = Delta()              # every change since the last take()
        self.recomputed: dict[str, int] = {}  # what the last change recomputed, by kind
        self._listeners: list[Callable[[Delta], None]] = []
        # Bounded tables of shared values (not bookkeeping per object: nothing to clean up).
        self.sharing = Share()
        self._delta = Delta()
        self._reset()
        self._full()
        self._delta = Delta()  # the start is `state()`, not a change to hold on to
        if watch:
            store.subscribe(self._on_event)

    # ---- public -----------------------------------------------------------------------------

    def subscribe(self, fn: Callable[[Delta], None]) -> None:
        """fn(delta) after every store change that changed the model."""
        self._listeners.append(fn)

    def take(self) -> Delta:
        """Everything that changed since the last take() (or since the index was made: the
        state it starts from is `state()`/`workloads`/`services`/`policies`)."""
        out, self.pending = self.pending, Delta()
        return out

    @property
    def errors(self) -> tuple[str, ...]:
        return tuple(sorted({m for ms in self._errors.values() for m in ms}))

    @property
    def warnings(self) -> tuple[str, ...]:
        return tuple(sorted({m for ms in self._warnings.values() for m in ms}))

    def state(self) -> MeshState:
        return MeshState(dict(self.workloads), dict(self.services), dict(self.policies),
                         self.errors, self.warnings)

    # ---- state ------------------------------------------------------------------------------

    def _reset(self) -> None:
        self._errors: dict[tuple[str, Src], list[str]] = {}
        self._warnings: dict[tuple[str, Src], list[str]] = {}
        self._network = ""
        self._ns_meta: dict[str, tuple[dict[str, str], str]] = {}  # labels, traffic distr.
        self._node_locality: dict[str, tuple[str, str, str]] = {}
        # kind -> namespace -> name -> the one record kept per object: a Pod's (labels, node),
        # a WorkloadEntry's or ServiceEntry's labels (None: malformed, the conversion says
        # why), None for the other kinds. Labels maps and pod records are shared (`sharing`):
        # a pod costs one dict slot here, not a key tuple and a slot in a table per fact.
        self._names: dict[str, dict[str, dict[str, Any]]] = defaultdict(dict)
        # services
        self._infos: dict[Src, tuple[ServiceInfo, ...]] = {}
        self._se_resolution: dict[Key, str] = {}
        self._host_srcs: dict[str, set[Src]] = defaultdict(set)
        self._winners: dict[tuple[str, str], ServiceInfo] = {}   # (ns, host)
        self._host_nss: dict[str, set[str]] = defaultdict(set)
        self._selecting: dict[str, set[str]] = defaultdict(set)  # ns -> hosts w/ selector
        self._alloc = autoallocate.Allocator()  # VIPs of ServiceEntry hosts without any
        # endpoint slices
        self._slice_meta: dict[Key, tuple[str | None, frozenset[tuple[str, str, str]]]] = {}
        self._slices_by_svc: dict[Key, set[str]] = defaultdict(set)
        self._slices_by_target: dict[tuple[str, str, str], set[Key]] = defaultdict(set)
        # policies
        self._authz: dict[Key, AuthzInfo] = {}
        self._authz_selecting: dict[str, set[str]] = defaultdict(set)
        self._pas: dict[Key, peerauth.PeerAuth] = {}
        self._pas_by_ns: dict[str, set[str]] = defaultdict(set)
        # outputs per source: a uid, or a tuple of them (a source with one workload is the
        # rule: no tuple for it). A pod whose workload has its usual uid (`pod_uid`) has no
        # entry: its uid is known from its name.
        self._src_uids: dict[Src, str | tuple[str, ...]] = {}

    def _note(self, book: dict[tuple[str, Src], list[str]], stage: str, src: Src,
              messages: Iterable[str]) -> None:
        ref = _ref(*src)
        msgs = [f"{ref}: {m}" for m in messages]
        old = book.get((stage, src), [])
        if msgs:
            book[(stage, src)] = msgs
        else:
            book.pop((stage, src), None)
        # Logged when they first appear (not again on every recomputation): an operator who
        # applied Istio YAML learns what was skipped or read differently at L4, and why.
        event = ("object_not_converted" if book is self._errors
                 else "object_converted_with_warning")
        for m in msgs:
            if m not in old:
                log.warning(event, detail=m)

    def _guard(self, stage: str, src: Src, fn: Callable[[Notes], Any]) -> Any:
        """Run one object's conversion: Bad -> its error; the notes it makes (warnings, and
        errors for parts it skipped) are kept; never raises."""
        notes = Notes()
        result = None
        try:
            result = fn(notes)
        except read.Bad as e:
            notes.errors.append(str(e))
        except Exception as e:  # a bug must not take the other objects down
            log.exception("ambient_convert_failed", object=_ref(*src))
            notes.errors.append(f"cannot convert: {e!r}")
        self._note(self._errors, stage, src, notes.errors)
        self._note(self._warnings, stage, src, notes.warnings)
        return result

    # ---- outputs ----------------------------------------------------------------------------

    def _set_workloads(self, src: Src, new: list[Workload]) -> None:
        usual = workloads.pod_uid(self.opts, src[1], src[2]) if src[0] == POD.kind else None
        old = self._src_uids.get(src, usual or ())
        if isinstance(old, str):
            old = (old,)
        fresh = {w.uid: w for w in new}
        wire = self.wire
        for uid in old:
            if uid not in fresh and uid in wire:
                del wire[uid]
                self._delta.workloads.pop(uid, None)
                self._delta.removed_workloads.add(uid)
        for uid, w in fresh.items():
            b = encode(w)
            if wire.get(uid) != b:
                wire[uid] = b
                self._delta.workloads[uid] = w
                self._delta.removed_workloads.discard(uid)
        if fresh and (len(fresh) > 1 or usual not in fresh):
            self._src_uids[src] = next(iter(fresh)) if len(fresh) == 1 else tuple(fresh)
        else:
            self._src_uids.pop(src, None)

    def _set(self, table: dict[str, Any], changed: dict[str, Any], removed: set[str],
             key: str, value: Any) -> None:
        if value is None:
            if table.pop(key, None) is not None:
                changed.pop(key, None)
                removed.add(key)
        elif table.get(key) != value:
            table[key] = value
            changed[key] = value
            removed.discard(key)

    def _set_service(self, key: str, svc: Service | None) -> None:
        self._set(self.services, self._delta.services, self._delta.removed_services, key, svc)

    def _set_policy(self, key: str, pol: Policy | None) -> None:
        self._set(self.policies, self._delta.policies, self._delta.removed_policies, key, pol)

    # ---- the full conversion ----------------------------------------------------------------

    def _full(self) -> None:
        """Convert everything (the start, and a change of the local network)."""
        old = (dict(self.wire), self.services, self.policies)
        self.wire.clear()
        self.services, self.policies = {}, {}
        self._delta = Delta()  # scratch: the delta is the difference, computed below
        self._reset()
        self._read_network()
        for ns_obj in self.store.list(NAMESPACE):
            self._update_namespace(_key(ns_obj)[1], ns_obj)
        for node in self.store.list(NODE):
            self._update_node(_key(node)[1], node)
        for kind in (POD, WORKLOAD_ENTRY, SERVICE_ENTRY, ENDPOINT_SLICE, SERVICE_KIND):
            for obj in self.store.list(kind):
                ns, name = _key(obj)
                self._update_names(kind, ns, name, obj)
        hosts: set[str] = set()
        for kind in (SERVICE_KIND, SERVICE_ENTRY):
            for obj in self.store.list(kind):
                hosts |= self._update_infos(kind, *_key(obj), obj)
        self._dedup(hosts)
        tasks: set[tuple[str, str, str]] = set()
        for obj in self.store.list(AUTHORIZATION_POLICY):
            tasks.add(("authz", *_key(obj)))
        for obj in self.store.list(PEER_AUTHENTICATION):
            self._update_peer_auth(*_key(obj), obj)
        tasks |= {("pa", ns, name) for ns, name in self._pas}
        tasks.add(("static", "", ""))
        self._policies(tasks)
        srcs: set[Src] = set()
        for kind in (POD, WORKLOAD_ENTRY, SERVICE_ENTRY, ENDPOINT_SLICE):
            srcs |= {(kind.kind, *_key(o)) for o in self.store.list(kind)}
        self._sources(srcs)
        # What differs from before is the change (at the start: everything).
        converted, d = self._delta, Delta()
        self._delta = d
        d.removed_workloads.update(k for k in old[0] if k not in self.wire)
        # Every workload converted above is in `converted` (the table started empty).
        d.workloads.update({k: converted.workloads[k] for k, b in self.wire.items()
                            if old[0].get(k) != b})
        _diff(old[1], self.services, d.services, d.removed_services)
        _diff(old[2], self.policies, d.policies, d.removed_policies)
        self.recomputed = {"full": 1}

    # ---- the change handler -----------------------------------------------------------------

    def _on_event(self, kind: Kind, ns: str, name: str, obj: dict[str, Any] | None) -> None:
        self._delta = Delta()
        try:
            self._apply(kind, ns, name, obj)
        except Exception:
            # Never leave the index half-updated: convert everything again. What the failed
            # update already changed plus what the full conversion changes is the delta.
            log.exception("ambient_index_update_failed", kind=kind.kind, namespace=ns,
                          name=name)
            partial = self._delta
            try:
                self._full()
            except Exception:  # pragma: no cover - the conversions themselves never raise
                log.exception("ambient_index_rebuild_failed")
                self._delta = Delta()
            partial.merge(self._delta)
            self._delta = partial
        delta, self._delta = self._delta, Delta()
        if delta:
            self.pending.merge(delta)
            for fn in self._listeners:
                fn(delta)

    def _apply(self, kind: Kind, ns: str, name: str, obj: dict[str, Any] | None) -> None:
        hosts: set[str] = set()
        srcs: set[Src] = set()
        tasks: set[tuple[str, str, str]] = set()
        npolicies = 0
        k = kind.kind
        if kind == NAMESPACE:
            if name == self.opts.system_namespace and self._network_changed(obj):
                self._full()
                return
            labels_changed, td_changed = self._update_namespace(name, obj)
            if labels_changed:
                srcs |= {(POD.kind, name, p) for p in self._names[POD.kind].get(name, ())}
            if td_changed:
                for sk in (SERVICE_KIND, SERVICE_ENTRY):
                    for n in list(self._names[sk.kind].get(name, ())):
                        hosts |= self._update_infos(sk, name, n, self.store.get(sk, name, n))
        elif kind == NODE:
            if self._update_node(name, obj):
                # A scan of every pod's record (milliseconds for 100k pods) rather than a
                # table of pods per node kept for it: nodes change topology (almost) never.
                srcs |= {(POD.kind, pns, p) for pns, pods in self._names[POD.kind].items()
                         for p, rec in pods.items() if rec[1] == name}
        elif kind in (POD, WORKLOAD_ENTRY):
            self._update_names(kind, ns, name, obj)
            srcs.add((k, ns, name))
        elif kind in (SERVICE_KIND, SERVICE_ENTRY):
            self._update_names(kind, ns, name, obj)
            hosts |= self._update_infos(kind, ns, name, obj)
            if kind == SERVICE_ENTRY:
                srcs.add((k, ns, name))
        elif kind == ENDPOINT_SLICE:
            before = self._slice_meta.get((ns, name))
            self._update_names(kind, ns, name, obj)
            after = self._slice_meta.get((ns, name))
            srcs.add((k, ns, name))
            for meta in (before, after):
                if meta is not None:
                    srcs |= {(POD.kind, tns, tname) for tns, tname, _ in meta[1]}
        elif kind == AUTHORIZATION_POLICY:
            old = self._authz.get((ns, name))
            new = self._policies({("authz", ns, name)}).get((ns, name))
            npolicies = 1
            nss = None if ns == self.opts.root_namespace else [ns]
            for info in (old, new):
                if info is not None and info.selector is not None:
                    srcs |= self._matching(_WORKLOAD_KINDS, nss, info.selector)
        elif kind == PEER_AUTHENTICATION:
            old_pa = self._pas.get((ns, name))
            self._update_peer_auth(ns, name, obj)
            new_pa = self._pas.get((ns, name))
            tasks |= {("pa", ns, name), ("static", "", "")}
            root = ns == self.opts.root_namespace
            wide = any(p is not None and p.selector is None for p in (old_pa, new_pa))
            if wide:  # a namespace/mesh policy: every converted policy below it
                tasks |= {("pa", pns, pname) for pns, pname in self._pas
                          if root or pns == ns}
                srcs |= self._matching(_WORKLOAD_KINDS, None if root else [ns], ())
            else:
                for p in (old_pa, new_pa):
                    if p is not None and p.selector is not None:
                        srcs |= self._matching(_WORKLOAD_KINDS, [ns], p.selector)
        srcs |= self._dedup(hosts)
        self._policies(tasks)
        self._sources(srcs)
        self.recomputed = {"hostnames": len(hosts), "policies": npolicies + len(tasks),
                           "workload_sources": len(srcs)}

    # ---- layer 1: per-object facts ----------------------------------------------------------

    def _read_network(self) -> None:
        self._network = self._network_of(self.store.get(NAMESPACE, "",
                                                        self.opts.system_namespace))

    def _network_of(self, obj: dict[str, Any] | None) -> str:
        if obj is None:
            return ""
        try:
            return read.labels_of(obj).get(lbl.NETWORK_LABEL, "")
        except read.Bad:
            return ""

    def _network_changed(self, obj: dict[str, Any] | None) -> bool:
        return self._network_of(obj) != self._network

    def _update_namespace(self, name: str, obj: dict[str, Any] | None) -> tuple[bool, bool]:
        """Cache a namespace's labels and traffic-distribution annotation; which changed."""
        src = (NAMESPACE.kind, "", name)
        before = self._ns_meta.get(name, ({}, ""))
        after: tuple[dict[str, str], str] = ({}, "")
        if obj is not None:
            def get(_: Notes) -> tuple[dict[str, str], str]:
                return (read.labels_of(obj), read.annotations_of(obj).get(
                    services.TRAFFIC_DISTRIBUTION, ""))
            after = self._guard("ns", src, get) or ({}, "")
        else:
            self._note(self._errors, "ns", src, [])
        if after == ({}, ""):
            self._ns_meta.pop(name, None)
        else:
            self._ns_meta[name] = after
        return before[0] != after[0], before[1] != after[1]

    def _update_node(self, name: str, obj: dict[str, Any] | None) -> bool:
        src = (NODE.kind, "", name)
        before = self._node_locality.get(name, NO_LOCALITY)
        after = NO_LOCALITY
        if obj is not None:
            after = self._guard("node", src,
                                lambda _: lbl.node_locality(read.labels_of(obj))) or NO_LOCALITY
        else:
            self._note(self._errors, "node", src, [])
        if after == NO_LOCALITY:
            self._node_locality.pop(name, None)
        else:
            self._node_locality[name] = after
        return before != after

    def _update_names(self, kind: Kind, ns: str, name: str, obj: dict[str, Any] | None) -> None:
        """Namespace membership, labels, a pod's node and uid, a slice's service and pods."""
        by_ns = self._names[kind.kind]
        if obj is None:
            names = by_ns.get(ns)
            if names is not None:
                names.pop(name, None)
                if not names:
                    del by_ns[ns]
        else:
            rec: Any = None
            if kind in (POD, WORKLOAD_ENTRY, SERVICE_ENTRY):
                try:
                    rec = self.sharing.labels(workloads.entry_labels(obj)
                                              if kind == WORKLOAD_ENTRY else read.labels_of(obj))
                except read.Bad:
                    rec = None  # the conversion reports it
                if kind == POD:
                    rec = self.sharing.pod(rec, sys.intern(_pod_node(obj)))
            names = by_ns.get(ns)
            if names is None:
                names = by_ns[ns] = {}
            names[name] = rec
        if kind == ENDPOINT_SLICE:
            old = self._slice_meta.pop((ns, name), None)
            if old is not None:
                svc, targets = old
                if svc is not None:
                    _discard(self._slices_by_svc, (ns, svc), name)
                for t in targets:
                    _discard(self._slices_by_target, t, (ns, name))
            if obj is not None:
                try:
                    svc = workloads.slice_service(obj)
                    targets = frozenset(workloads.slice_pod_targets(obj)) if svc else \
                        frozenset()
                except read.Bad:
                    svc, targets = None, frozenset()  # the conversion reports it
                self._slice_meta[(ns, name)] = (svc, targets)
                if svc is not None:
                    self._slices_by_svc[(ns, svc)].add(name)
                for t in targets:
                    self._slices_by_target[t].add((ns, name))

    def _update_infos(self, kind: Kind, ns: str, name: str,
                      obj: dict[str, Any] | None) -> set[str]:
        """Convert a Service or ServiceEntry; the hostnames whose claims changed."""
        src = (kind.kind, ns, name)
        old = self._infos.pop(src, ())
        new: tuple[ServiceInfo, ...] = ()
        if obj is not None:
            ns_annotations = {}
            td = self._ns_meta.get(ns, ({}, ""))[1]
            if td:
                ns_annotations[services.TRAFFIC_DISTRIBUTION] = td

            def conv(_: Notes) -> tuple[ServiceInfo, ...]:
                if kind == SERVICE_KIND:
                    info = services.service_info(obj, ns_annotations, self._network, self.opts)
                    return () if info is None else (info,)
                self._se_resolution[(ns, name)] = services.resolution(read.spec(obj))
                return services.service_entry_infos(obj, ns_annotations, self._network,
                                                    self.opts)
            new = self._guard("svc", src, conv) or ()
        else:
            self._note(self._errors, "svc", src, [])
        if kind == SERVICE_ENTRY and (obj is None or not new):
            self._se_resolution.pop((ns, name), None)
        if new:
            self._infos[src] = new
        for info in old:
            _discard(self._host_srcs, info.service.hostname, src)
        for info in new:
            self._host_srcs[info.service.hostname].add(src)
        if old == new:
            return set()
        return {i.service.hostname for i in old} | {i.service.hostname for i in new}

    def _update_peer_auth(self, ns: str, name: str, obj: dict[str, Any] | None) -> None:
        src = (PEER_AUTHENTICATION.kind, ns, name)
        self._pas.pop((ns, name), None)
        _discard(self._pas_by_ns, ns, name)
        if obj is None:
            self._note(self._errors, "pa", src, [])
            return
        pa = self._guard("pa", src, lambda _: peerauth.parse(obj))
        if pa is not None:
            self._pas[(ns, name)] = pa
            self._pas_by_ns[ns].add(name)

    # ---- layer 2: services per hostname -----------------------------------------------------

    def _dedup(self, hosts: set[str]) -> set[Src]:
        """Pick the served service of each namespace for these hostnames; the workload
        sources whose services may have changed."""
        affected: set[Src] = set()
        for host in hosts:
            claims = [i for src in self._host_srcs.get(host, ()) for i in self._infos[src]
                      if i.service.hostname == host]
            new = services.select(claims)
            for ns in self._host_nss.get(host, set()) | set(new):
                old_info, new_info = self._winners.get((ns, host)), new.get(ns)
                if old_info == new_info:
                    continue
                if new_info is None:
                    del self._winners[(ns, host)]
                    _discard(self._host_nss, host, ns)
                    _discard(self._selecting, ns, host)
                else:
                    self._winners[(ns, host)] = new_info
                    self._host_nss[host].add(ns)
                    if new_info.selector:
                        self._selecting[ns].add(host)
                    else:
                        _discard(self._selecting, ns, host)
                self._alloc.stage(f"{ns}/{host}", autoallocate.claim_of(new_info))
                for info in (old_info, new_info):
                    if info is not None:
                        affected |= self._served_by(ns, info)
        # Served with their auto-allocated VIPs; a key whose VIPs moved is served anew.
        for key, svc in self._alloc.commit(self._network):
            self._set_service(key, svc)
        return affected

    def _served_by(self, ns: str, info: ServiceInfo) -> set[Src]:
        """The workload sources that can join this service."""
        out: set[Src] = set()
        if info.selector:
            if info.kind == SERVICE:
                kinds = [POD.kind] + ([WORKLOAD_ENTRY.kind]
                                      if self.opts.service_selects_workload_entries else [])
            else:
                kinds = ([POD.kind] if self.opts.service_entry_selects_pods else []) + \
                    [WORKLOAD_ENTRY.kind]
            out |= self._matching(kinds, [ns], info.selector)
        if info.kind == SERVICE:
            for slice_name in self._slices_by_svc.get((ns, info.source[1]), ()):
                out.add((ENDPOINT_SLICE.kind, ns, slice_name))
                meta = self._slice_meta.get((ns, slice_name))
                if meta is not None:
                    out |= {(POD.kind, tns, tname) for tns, tname, _ in meta[1]}
        else:
            out.add((SERVICE_ENTRY.kind, *info.source))
        return out

    def _matching(self, kinds: Iterable[str], nss: Iterable[str] | None,
                  selector: tuple[tuple[str, str], ...]) -> set[Src]:
        """Labelled sources of these kinds in these namespaces (None: all) that the selector
        selects (an empty selector: all of them)."""
        out: set[Src] = set()
        for k in kinds:
            by_ns = self._names[k]
            for ns in (list(by_ns) if nss is None else nss):
                for name, rec in by_ns.get(ns, {}).items():
                    labels = rec[0] if k == POD.kind else rec
                    if labels is None or read.selects(selector, labels):
                        out.add((k, ns, name))
        return out

    # ---- policies ---------------------------------------------------------------------------

    def _policies(self, tasks: set[tuple[str, str, str]]) -> dict[Key, AuthzInfo]:
        """Recompute these policies: ("authz", ns, name), ("pa", ns, name), ("static", ...)."""
        out: dict[Key, AuthzInfo] = {}
        for what, ns, name in tasks:
            if what == "authz":
                info = self._authz_info(ns, name)
                if info is not None:
                    out[(ns, name)] = info
                self._set_policy(f"{ns}/{name}", None if info is None else info.policy)
            elif what == "pa":
                pa = self._pas.get((ns, name))
                pol = None
                if pa is not None:
                    pol = peerauth.convert(pa, self._oldest_wide(ns), self._oldest_wide(
                        self.opts.root_namespace), self.opts.root_namespace)
                self._set_policy(f"{ns}/{peerauth.CONVERTED_PREFIX}{name}", pol)
            else:
                self._set_policy(f"{self.opts.root_namespace}/{peerauth.STATIC_STRICT}",
                                 peerauth.static_strict(self.opts.root_namespace)
                                 if self._pas else None)
        return out

    def _authz_info(self, ns: str, name: str) -> AuthzInfo | None:
        src = (AUTHORIZATION_POLICY.kind, ns, name)
        self._authz.pop((ns, name), None)
        _discard(self._authz_selecting, ns, name)
        obj = self.store.get(AUTHORIZATION_POLICY, ns, name)
        if obj is None:
            self._note(self._errors, "authz", src, [])
            self._note(self._warnings, "authz", src, [])
            return None
        info: AuthzInfo | None = self._guard("authz", src, lambda n: (
            policies.authorization_policy(obj, self.opts, n.warnings, n.errors)))
        if info is not None:
            self._authz[(ns, name)] = info
            if info.selector is not None:
                self._authz_selecting[ns].add(name)
        return info

    def _oldest_wide(self, ns: str) -> peerauth.PeerAuth | None:
        return peerauth.oldest([p for n in self._pas_by_ns.get(ns, ())
                                if (p := self._pas[(ns, n)]).selector is None])

    def _policy_keys(self, ns: str, labels: dict[str, str]) -> tuple[str, ...]:
        root = self.opts.root_namespace
        candidates = [self._authz[(pns, n)] for pns in {ns, root}
                      for n in self._authz_selecting.get(pns, ())]
        keys = policies.workload_policies(ns, labels, candidates, self.opts)
        in_ns = [self._pas[(ns, n)] for n in self._pas_by_ns.get(ns, ())]
        in_root = [self._pas[(root, n)] for n in self._pas_by_ns.get(root, ())]
        pas = peerauth.applicable(ns, labels, in_ns, in_root, root)
        return tuple(keys + peerauth.workload_keys(root, pas))

    # ---- layer 3: workloads -----------------------------------------------------------------

    def _sources(self, srcs: set[Src]) -> None:
        for src in srcs:
            kind, ns, name = src
            obj = self.store.get({POD.kind: POD, WORKLOAD_ENTRY.kind: WORKLOAD_ENTRY,
                                  SERVICE_ENTRY.kind: SERVICE_ENTRY,
                                  ENDPOINT_SLICE.kind: ENDPOINT_SLICE}[kind], ns, name)
            if obj is None:
                self._note(self._errors, "wl", src, [])
                self._note(self._warnings, "wl", src, [])
                self._set_workloads(src, [])
                continue
            def convert(notes: Notes, src: Src = src,
                        obj: dict[str, Any] = obj) -> list[Workload]:
                return self._convert(src, obj, notes)
            self._set_workloads(src, self._guard("wl", src, convert) or [])

    def _services_for(self, ns: str, labels: dict[str, str], kinds: set[str]) -> list[
            ServiceInfo]:
        out = []
        for host in self._selecting.get(ns, ()):
            info = self._winners[(ns, host)]
            if info.kind in kinds and read.selects(info.selector, labels):
                out.append(info)
        return out

    def _convert(self, src: Src, obj: dict[str, Any], notes: Notes) -> list[Workload]:
        kind, ns, name = src
        if kind == ENDPOINT_SLICE.kind:
            svc_name = workloads.slice_service(obj)
            if svc_name is None:
                return []
            info = self._winners.get((ns, services.hostname(svc_name, ns, self.opts)))
            if info is None or info.kind != SERVICE:
                return []
            return workloads.endpoint_slice_workloads(
                obj, service=info, network=self._network, opts=self.opts,
                warnings=notes.warnings, errors=notes.errors)
        if kind == SERVICE_ENTRY.kind:
            labels = read.labels_of(obj)
            mine = sorted({i.service.hostname: win for i in self._infos.get(src, ())
                           if (win := self._winners.get((ns, i.service.hostname))) is not None
                           and win.kind == services.SERVICE_ENTRY and win.source == (ns, name)
                           }.items())
            return workloads.service_entry_workloads(
                obj, services=[w for _, w in mine],
                resolution=self._se_resolution.get((ns, name), "NONE"),
                policies=self._policy_keys(ns, labels), network=self._network,
                opts=self.opts, warnings=notes.warnings)
        if kind == WORKLOAD_ENTRY.kind:
            labels = workloads.entry_labels(obj)
            kinds = {services.SERVICE_ENTRY}
            if self.opts.service_selects_workload_entries:
                kinds.add(SERVICE)
            return [workloads.workload_entry_workload(
                obj, services=self._services_for(ns, labels, kinds),
                policies=self._policy_keys(ns, labels), network=self._network,
                opts=self.opts)]
        # a Pod
        labels = read.labels_of(obj)
        kinds = {SERVICE}
        if self.opts.service_entry_selects_pods:
            kinds.add(services.SERVICE_ENTRY)
        infos = self._services_for(ns, labels, kinds)
        seen = {i.service.hostname for i in infos}
        meta = obj.get("metadata")
        uid = meta.get("uid") if isinstance(meta, dict) else None
        target = (ns, name, uid if isinstance(uid, str) else "")
        for sns, slice_name in sorted(self._slices_by_target.get(target, ())):
            svc_name = self._slice_meta[(sns, slice_name)][0]
            if svc_name is None:
                continue
            host = services.hostname(svc_name, sns, self.opts)
            info = self._winners.get((sns, host))
            if host not in seen and info is not None and info.kind == SERVICE:
                seen.add(host)
                infos.append(info)
        node = _pod_node(obj)
        w = workloads.pod_workload(
            obj, ns_labels=self._ns_meta.get(ns, ({}, ""))[0],
            locality=self._node_locality.get(node, NO_LOCALITY), services=infos,
            policies=self._policy_keys(ns, labels), network=self._network, opts=self.opts)
        return [] if w is None else [w]


def _discard(index: dict[Any, set[Any]], key: Any, value: Any) -> None:
    """Remove value from index[key], and the key once its set is empty (no slow growth)."""
    values = index.get(key)
    if values is not None:
        values.discard(value)
        if not values:
            del index[key]


def _pod_node(obj: dict[str, Any]) -> str:
    """spec.nodeName, "" if absent or malformed (the conversion reports that)."""
    spec = obj.get("spec")
    node = spec.get("nodeName") if isinstance(spec, dict) else None
    return node if isinstance(node, str) else ""


def _key(obj: dict[str, Any]) -> Key:
    meta = obj.get("metadata") or {}
    if not isinstance(meta, dict):
        return "", ""
    return str(meta.get("namespace") or ""), str(meta.get("name") or "")


def build(store: ObjectStore, options: Options | None = None) -> MeshState:
    """The full conversion of the store's current objects."""
    return Index(store, options, watch=False).state()
