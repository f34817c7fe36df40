"""Locality preference (istio.workload LoadBalancing, as ztunnel applies it), the same rule
as proxy/meshconfig/table.py's `MeshTable.route`, as a function of the candidate list so that
it composes with ejection and retries (proxy/traffic/cluster.py):

- modes strict and failover with a routing preference rank endpoints by how many listed
  scopes match the source in order, stopping at the first mismatch;
- strict keeps the endpoints matching every scope (none: nothing to pick), failover the best
  rank present;
- without a source, strict has nothing and failover everything; other modes ignore the
  preference.

The candidates given are already the usable, non-ejected ones, so an ejected local endpoint
fails over to the next rank as an unhealthy one does. proxy/meshconfig/table.py's
`MeshTable.route` ranks with `rank` and `scope_value` from here; tests/traffic/test_locality.py
checks `preferred` against MeshTable on random meshes. This package never imports meshconfig
(meshconfig imports it)."""

from __future__ import annotations

from collections.abc import Sequence

from core.mesh.model import LbMode, LbScope, Service, Workload


def scope_value(w: Workload, scope: int) -> str | None:
    """A workload's value for a scope; None for one we do not know (it matches nothing)."""
    if scope == LbScope.REGION:
        return w.locality[0]
    if scope == LbScope.ZONE:
        return w.locality[1]
    if scope == LbScope.SUBZONE:
        return w.locality[2]
    if scope == LbScope.NODE:
        return w.node
    if scope == LbScope.CLUSTER:
        return w.cluster
    if scope == LbScope.NETWORK:
        return w.network
    return None


def rank(routing: tuple[int, ...], src: Workload, w: Workload) -> int:
    """How many of the listed scopes match, counting in order and stopping at the first
    mismatch (ztunnel: [network, region, zone] matching network and zone but not region
    ranks 1). Each scope compares only its own field: subzone compares subzones."""
    n = 0
    for scope in routing:
        mine = scope_value(src, scope)
        if mine is None or mine != scope_value(w, scope):
            break
        n += 1
    return n


def preferred(svc: Service, src: Workload | None,
              candidates: Sequence[Workload]) -> tuple[Workload, ...]:
    """The candidates `src` should spread its connections over."""
    if not svc.by_locality or not candidates:
        return tuple(candidates)
    if src is None:
        return () if svc.lb_mode == LbMode.STRICT else tuple(candidates)
    routing = svc.lb_routing_preference
    ranked = [(rank(routing, src, w), w) for w in candidates]
    want = len(routing) if svc.lb_mode == LbMode.STRICT else max(r for r, _ in ranked)
    return tuple(w for r, w in ranked if r == want)


_SCOPE_NAMES = {s.value: s.name.lower() for s in LbScope if s != LbScope.UNSPECIFIED_SCOPE}


def describe(svc: Service) -> str:
    """"zone/subzone (strict)", for a refusal's detail."""
    names = "/".join(_SCOPE_NAMES.get(s, str(s)) for s in svc.lb_routing_preference)
    return f"{names} ({'strict' if svc.lb_mode == LbMode.STRICT else 'failover'})"
