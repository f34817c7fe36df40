"""The traffic index: VirtualServices, DestinationRules and Sidecars (and the services and
workload labels they refer to) -> ServiceTraffic, EgressPolicy and WorkloadLabels records,
kept current as objects change.

There are few traffic rules in a mesh, and a rule's effect crosses objects (a route names a
subset of another service's DestinationRule; a host stands for services of any namespace),
so every change of a rule, or of the set of served hostnames, converts the rules again
(O(rules)); what differs from before is the change. Workload labels are kept per workload:
a pod's change costs that pod, and a mesh with no label-reading rule costs nothing.

Bad input never raises: a refused object's reason, `Kind ns/name: field: reason`, is in
`errors` (logged once as `object_not_converted` and counted in
meshnode_controlplane_traffic_objects_refused) until it is fixed or deleted, and **the last
version of that object that converted stays in force** (converted again against the current
services and rules; if that fails too, the object has no effect). A restarted control plane
has no last good version: a refused object then has no effect.

Precedence where several rules claim one service: per service, the rule for its exact host
before a wildcard one; then a rule in the service's namespace, then one in the root
namespace, then the oldest (creation time, then namespace/name). Istio picks per client
namespace first; a rule here applies to every client of the service.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, TypeVar

import structlog

from controlplane import metrics
from controlplane.ambient import read
from controlplane.ambient import workloads as wl
from controlplane.ambient.index import Delta, Index
from controlplane.kube.objects import (
    DESTINATION_RULE,
    POD,
    SIDECAR,
    VIRTUAL_SERVICE,
    WORKLOAD_ENTRY,
    Kind,
    ObjectStore,
    key_of,
)
from controlplane.traffic import destinationrule, labels, sidecar, virtualservice
from controlplane.traffic.hosts import Registry
from core.mesh.traffic import (
    EgressPolicy,
    OutboundMode,
    ServiceTraffic,
    Subset,
    TrafficPolicy,
    WorkloadLabels,
)

log = structlog.get_logger("controlplane.traffic")

T = TypeVar("T")
Src = tuple[str, str, str]      # (kind, namespace, name)
TrafficRecord = ServiceTraffic | EgressPolicy | WorkloadLabels
RULE_KINDS = (VIRTUAL_SERVICE, DESTINATION_RULE, SIDECAR)


@dataclass
class TrafficDelta:
    """Records added or changed, and (kind, key) of those removed; kind as XdsState's:
    "traffic", "egress", "labels"."""

    updated: list[TrafficRecord] = field(default_factory=list)
    removed: list[tuple[str, str]] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.updated or self.removed)


def _diff(kind: str, before: dict[str, T], after: dict[str, T], out: TrafficDelta) -> None:
    out.removed.extend((kind, k) for k in before if k not in after)
    out.updated.extend(v for k, v in after.items() if before.get(k) != v)  # type: ignore[misc]


def _order(obj: dict[str, Any]) -> tuple[datetime, str, str]:
    return (read.created(obj), *key_of(obj))


class TrafficIndex:
    def __init__(self, store: ObjectStore, ambient: Index, *,
                 mesh_mode: OutboundMode | None = None, watch: bool = True) -> None:
        self.store = store
        self.ambient = ambient
        self.opts = ambient.opts
        # MeshConfig's outboundTrafficPolicy (the control plane's --outbound-traffic-policy).
        self.mesh_mode = self.opts.outbound_traffic_policy if mesh_mode is None else mesh_mode
        self.traffic: dict[str, ServiceTraffic] = {}
        self.egress: dict[str, EgressPolicy] = {}
        self.labels: dict[str, WorkloadLabels] = {}
        self._registry = Registry(ambient.services)
        self._errors: dict[Src, list[str]] = {}
        self._warnings: dict[Src, list[str]] = {}
        self._good: dict[Src, dict[str, Any]] = {}   # the last version that converted
        self._keys: frozenset[str] = frozenset()      # label keys the rules read
        self._listeners: list[Callable[[TrafficDelta], None]] = []
        self._rules()
        self._all_labels()
        if watch:
            store.subscribe(self._on_object)
            ambient.subscribe(self._on_delta)

    # ---- public -----------------------------------------------------------------------------

    def subscribe(self, fn: Callable[[TrafficDelta], None]) -> None:
        self._listeners.append(fn)

    @property
    def errors(self) -> tuple[str, ...]:
        return tuple(sorted({m for ms in self._errors.values() for m in ms}))

    @property
    def warnings(self) -> tuple[str, ...]:
        return tuple(sorted({m for ms in self._warnings.values() for m in ms}))

    def records(self) -> list[TrafficRecord]:
        return [*self.traffic.values(), *self.egress.values(), *self.labels.values()]

    # ---- events -----------------------------------------------------------------------------

    def _on_object(self, kind: Kind, ns: str, name: str, obj: dict[str, Any] | None) -> None:
        delta = TrafficDelta()
        if kind in RULE_KINDS:
            if obj is None:
                self._good.pop((kind.kind, ns, name), None)
            delta = self._rules()
        elif kind in (POD, WORKLOAD_ENTRY) and self._keys:
            uid = (wl.pod_uid if kind == POD else wl.workload_entry_uid)(self.opts, ns, name)
            self._set_labels(uid, obj, delta)
        self._emit(delta)

    def _on_delta(self, d: Delta) -> None:
        hosts_changed = False
        for key in d.services:
            hosts_changed |= self._registry.add(key)
        for key in d.removed_services:
            hosts_changed |= self._registry.remove(key)
        delta = self._rules() if hosts_changed else TrafficDelta()
        if self._keys:  # a workload that appeared or went: its labels record follows
            for uid in (*d.workloads, *d.removed_workloads):
                if uid in d.removed_workloads or uid not in self.labels:
                    self._set_labels(uid, self._source(uid), delta)
        self._emit(delta)

    def _emit(self, delta: TrafficDelta) -> None:
        if delta:
            for fn in self._listeners:
                fn(delta)

    # ---- conversion of one object -----------------------------------------------------------

    def _convert(self, kind: Kind, obj: dict[str, Any],
                 fn: Callable[[dict[str, Any], list[str]], T]) -> T | None:
        """fn(obj, warnings); on refusal the error is noted and the last good version of the
        object is converted instead."""
        ns, name = key_of(obj)
        src = (kind.kind, ns, name)
        ref = f"{kind.kind} {ns}/{name}"
        warnings: list[str] = []
        errors: list[str] = []
        result: T | None = None
        try:
            result = fn(obj, warnings)
            self._good[src] = obj
        except read.Bad as e:
            good = self._good.get(src)
            kept = ""
            if good is not None:
                try:
                    result = fn(good, [])
                    kept = " (the last good version stays in force)"
                except read.Bad:
                    pass
                except Exception:  # pragma: no cover - a conversion bug
                    log.exception("traffic_convert_failed", object=ref)
            errors.append(f"{ref}: {e}{kept}")
        except Exception as e:  # a bug must not take the other objects down
            log.exception("traffic_convert_failed", object=ref)
            errors.append(f"{ref}: cannot convert: {e!r}")
        self._note(src, errors, warnings)
        return result

    def _note(self, src: Src, errors: list[str], warnings: list[str]) -> None:
        for book, msgs, event in ((self._errors, errors, "object_not_converted"),
                                  (self._warnings, warnings, "object_converted_with_warning")):
            old = book.get(src, [])
            prefix = f"{src[0]} {src[1]}/{src[2]}: "
            new = [m if m.startswith(prefix) else prefix + m for m in msgs]
            if new:
                book[src] = new
            else:
                book.pop(src, None)
            for m in new:
                if m not in old:
                    log.warning(event, detail=m)
                    if book is self._errors:
                        metrics.TRAFFIC_REFUSED.labels(kind=src[0]).inc()

    # ---- all rules --------------------------------------------------------------------------

    def _rules(self) -> TrafficDelta:
        opts = self.opts
        live: set[Src] = set()
        # DestinationRules -> per service key, the winning rule's subsets and policy.
        rules: dict[str, tuple[tuple[int, int, datetime, str, str], str,
                               destinationrule.Rule]] = {}
        for obj in sorted(self.store.list(DESTINATION_RULE), key=_order):
            ns, name = key_of(obj)
            live.add((DESTINATION_RULE.kind, ns, name))
            rule = self._convert(DESTINATION_RULE, obj, lambda o, w: (
                destinationrule.destination_rule(o, opts.domain_suffix, w)))
            if rule is None:
                continue
            for key in self._registry.keys(rule.host):
                rank = self._rank(key, rule.host, ns, obj)
                if key not in rules or rank < rules[key][0]:
                    rules[key] = (rank, f"{ns}/{name}", rule)

        def subsets_of(key: str) -> tuple[Subset, ...] | None:
            got = rules.get(key)
            return None if got is None else got[2].subsets

        # VirtualServices -> per service key, the winning service's routes.
        routes: dict[str, tuple[tuple[int, int, datetime, str, str], str,
                                virtualservice.Routes]] = {}
        for obj in sorted(self.store.list(VIRTUAL_SERVICE), key=_order):
            ns, name = key_of(obj)
            live.add((VIRTUAL_SERVICE.kind, ns, name))
            vs = self._convert(VIRTUAL_SERVICE, obj, lambda o, w: (
                virtualservice.virtual_service(o, opts.domain_suffix, self._registry,
                                               subsets_of, w)))
            if vs is None or not vs.routes:
                continue
            for host in vs.hosts:
                for key in self._registry.keys(host):
                    rank = self._rank(key, host, ns, obj)
                    if key not in routes or rank < routes[key][0]:
                        routes[key] = (rank, f"{ns}/{name}", vs)
        traffic: dict[str, ServiceTraffic] = {}
        for key in sorted(set(rules) | set(routes)):
            r, v = rules.get(key), routes.get(key)
            tp: TrafficPolicy | None = None if r is None else r[2].traffic_policy
            traffic[key] = ServiceTraffic(
                key, () if v is None else v[2].routes, () if r is None else r[2].subsets, tp,
                "" if v is None else v[1], "" if r is None else r[1])
        # Sidecars.
        egress: dict[str, EgressPolicy] = {}
        for obj in sorted(self.store.list(SIDECAR), key=_order):
            ns, name = key_of(obj)
            live.add((SIDECAR.kind, ns, name))
            pol = self._convert(SIDECAR, obj, lambda o, w: sidecar.sidecar(
                o, opts.root_namespace, self.mesh_mode, w))
            if pol is None:
                continue
            rival = next((e for e in egress.values() if e.namespace == pol.namespace
                          and e.selector == pol.selector), None) if not pol.selector else None
            if rival is not None:  # Istio: the oldest selector-less one of a namespace
                self._warnings.setdefault((SIDECAR.kind, ns, name), []).append(
                    f"Sidecar {ns}/{name}: another Sidecar without workloadSelector applies "
                    f"to {pol.namespace or 'the mesh'}: {rival.key} (older) is used")
                continue
            egress[pol.key] = pol
        if "mesh default" not in egress and self.mesh_mode != OutboundMode.ALLOW_ANY:
            egress["mesh default"] = EgressPolicy("", mode=self.mesh_mode)
        # Objects gone: their notes go.
        for book in (self._errors, self._warnings):
            for src in [s for s in book if s not in live]:
                del book[src]
        delta = TrafficDelta()
        _diff("traffic", self.traffic, traffic, delta)
        _diff("egress", self.egress, egress, delta)
        self.traffic, self.egress = traffic, egress
        keys = labels.keys_read(traffic.values(), egress.values())
        if keys != self._keys:
            self._keys = keys
            self._all_labels(delta)
        return delta

    def _rank(self, key: str, host: str, ns: str,
              obj: dict[str, Any]) -> tuple[int, int, datetime, str, str]:
        svc_ns = key.partition("/")[0]
        place = 0 if ns == svc_ns else 1 if ns == self.opts.root_namespace else 2
        return (int("*" in host), place, *_order(obj))

    # ---- labels -----------------------------------------------------------------------------

    def _source(self, uid: str) -> dict[str, Any] | None:
        """The Pod or WorkloadEntry behind a workload uid, if it is one of those."""
        prefix = f"{self.opts.cluster_id}/"
        if not uid.startswith(prefix):
            return None
        rest = uid[len(prefix):]
        for kind, tag in ((POD, "/Pod/"), (WORKLOAD_ENTRY, "networking.istio.io/WorkloadEntry/")):
            if rest.startswith(tag):
                ns, _, name = rest[len(tag):].partition("/")
                return self.store.get(kind, ns, name)
        return None

    def _set_labels(self, uid: str, obj: dict[str, Any] | None, delta: TrafficDelta) -> None:
        rec = None
        if obj is not None and uid in self.ambient.workloads and self._keys:
            try:
                found = wl.entry_labels(obj) if "/WorkloadEntry/" in uid else read.labels_of(obj)
            except read.Bad:
                found = {}  # the ambient index reports the object
            rec = labels.workload_labels(uid, found, self._keys)
        old = self.labels.get(uid)
        if rec is None:
            if old is not None:
                del self.labels[uid]
                delta.removed.append(("labels", uid))
        elif rec != old:
            self.labels[uid] = rec
            delta.updated.append(rec)

    def _all_labels(self, delta: TrafficDelta | None = None) -> None:
        delta = delta if delta is not None else TrafficDelta()
        if not self._keys:
            for uid in list(self.labels):
                self._set_labels(uid, None, delta)
            return
        seen: set[str] = set()
        for kind, uid_of in ((POD, wl.pod_uid), (WORKLOAD_ENTRY, wl.workload_entry_uid)):
            for obj in self.store.list(kind):
                uid = uid_of(self.opts, *key_of(obj))
                seen.add(uid)
                self._set_labels(uid, obj, delta)
        for uid in [u for u in self.labels if u not in seen]:
            self._set_labels(uid, None, delta)


def convert_all(records: Iterable[TrafficRecord]) -> dict[str, dict[str, TrafficRecord]]:
    """Records by XdsState kind and key (tests, debugging)."""
    out: dict[str, dict[str, TrafficRecord]] = {"traffic": {}, "egress": {}, "labels": {}}
    for r in records:
        if isinstance(r, ServiceTraffic):
            out["traffic"][r.service] = r
        elif isinstance(r, EgressPolicy):
            out["egress"][r.key] = r
        else:
            out["labels"][r.uid] = r
    return out
