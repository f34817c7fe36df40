"""PeerAuthentication -> the DENY policies istiod gives ztunnel for it (istio/istio
pilot/pkg/serviceregistry/ambient/authorization.go: convertedSelectorPeerAuthentications,
convertPeerAuthentication; policies.go: PolicyCollections; workloads.go:
fetchPeerAuthentications; architecture/ambient/peer-authentication.md; testdata
peer-authn-*).

ztunnel gets no PeerAuthentication. Instead:
- while any PeerAuthentication exists, one static policy `<root>/istio_converted_static_strict`
  (WORKLOAD_SELECTOR, DENY when the peer has no identity: not_principals presence) is served;
  a workload whose effective mode (mesh -> namespace -> workload, oldest policy of each level
  wins) is STRICT lists it;
- a workload PeerAuthentication (selector, not in the root namespace) with port-level modes
  that differ from the effective mode becomes `<ns>/converted_peer_authentication_<name>`,
  a DENY policy with per-port exceptions or per-port STRICT groups, and the workloads it
  selects list it instead of (or besides) the static one.
The node proxy evaluates these on plaintext inbound (no peer identity), so STRICT refuses
plaintext and PERMISSIVE/DISABLE let it through.

Two deliberate differences, both where istiod's code disagrees with its own comments and
leaves a port open (fail-open), taking the commented intent (a namespace policy with mode
UNSET inherits the mesh mode):
- "this STRICT port is already enforced by the parent" reads `A || (B && C) || D` where the
  comments say the namespace/mesh cases need the workload mode UNSET; Go's precedence lets a
  STRICT mesh policy skip the STRICT port of a PERMISSIVE workload policy. Here those cases
  require UNSET, so that port gets its STRICT group.
- a PERMISSIVE port of an UNSET workload policy under an UNSET namespace policy and a STRICT
  mesh policy is skipped by istiod (it tests the namespace policy for "not STRICT" before
  inheriting), so no policy is served while the workload lists it and drops the static one.
  Here the parent mode is the inherited one, STRICT, so the exception policy is built.
istiod's other choices are kept, e.g. a DISABLE (not PERMISSIVE) port under a STRICT parent
with an UNSET workload mode stays STRICT (fail-closed).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from controlplane.ambient import read
from core.mesh.model import (
    Group,
    Match,
    Policy,
    PolicyAction,
    PolicyScope,
    Rule,
    StringKind,
    StringMatch,
)

STATIC_STRICT = "istio_converted_static_strict"
CONVERTED_PREFIX = "converted_peer_authentication_"
MODES = ("UNSET", "DISABLE", "PERMISSIVE", "STRICT")
_NO_IDENTITY = Match(not_principals=(StringMatch(StringKind.PRESENCE),))


@dataclass(frozen=True, slots=True)
class PeerAuth:
    name: str
    namespace: str
    # None: no `selector` (namespace- or mesh-wide); () a selector with no labels.
    selector: tuple[tuple[str, str], ...] | None
    mode: str                              # one of MODES
    ports: tuple[tuple[int, str], ...]     # portLevelMtls, sorted by port
    created: datetime = datetime.min

    @property
    def order(self) -> tuple[datetime, str]:
        return (self.created, self.name)

    @property
    def namespace_wide(self) -> bool:
        """No selector or no labels in it (istiod's test for a mesh/namespace policy)."""
        return not self.selector


def _mode(v: Any, field: str) -> str:
    m = read.string(read.mapping(v, field).get("mode"), f"{field}.mode", "UNSET")
    if m not in MODES:
        raise read.Bad(f"{field}.mode", f"{m!r} is not one of {', '.join(MODES)}")
    return m


def parse(obj: dict[str, Any]) -> PeerAuth:
    name = read.name(obj)
    ns = read.namespace(obj)
    spec = read.spec(obj)
    selector = None
    if spec.get("selector") is not None:
        selector = tuple(sorted(read.string_map(
            read.mapping(spec["selector"], "spec.selector").get("matchLabels"),
            "spec.selector.matchLabels").items()))
    ports = []
    for k, v in read.mapping(spec.get("portLevelMtls"), "spec.portLevelMtls").items():
        f = f"spec.portLevelMtls.{k}"
        ports.append((read.port_text(k, f), _mode(v, f)))
    return PeerAuth(name, ns, selector, _mode(spec.get("mtls"), "spec.mtls"),
                    tuple(sorted(ports)), read.created(obj))


def static_strict(root_namespace: str) -> Policy:
    return Policy(name=STATIC_STRICT, namespace=root_namespace,
                  scope=PolicyScope.WORKLOAD_SELECTOR, action=PolicyAction.DENY,
                  groups=(Group((Rule((_NO_IDENTITY,)),)),))


def converted_key(pa: PeerAuth) -> str:
    return f"{pa.namespace}/{CONVERTED_PREFIX}{pa.name}"


def oldest(pas: list[PeerAuth]) -> PeerAuth | None:
    return min(pas, key=lambda p: p.order, default=None)


def applicable(namespace: str, labels: dict[str, str], in_namespace: list[PeerAuth],
               in_root: list[PeerAuth], root_namespace: str) -> list[PeerAuth]:
    """The PeerAuthentications a workload is subject to: its namespace's without a selector or
    with one its labels match, and the root namespace's without a selector."""
    out = [p for p in in_namespace if p.selector is None or read.selects(p.selector, labels)]
    if namespace != root_namespace:
        out += [p for p in in_root if p.selector is None]
    return out


def workload_keys(root_namespace: str, pas: list[PeerAuth]) -> list[str]:
    """The policy keys a workload lists for the PeerAuthentications it is subject to."""
    mesh = oldest([p for p in pas if p.namespace_wide and p.namespace == root_namespace])
    nsp = oldest([p for p in pas if p.namespace_wide and p.namespace != root_namespace])
    wlp = oldest([p for p in pas if not p.namespace_wide and p.namespace != root_namespace])
    strict = mesh is not None and mesh.mode == "STRICT"
    if nsp is not None and nsp.mode != "UNSET":
        strict = nsp.mode == "STRICT"
    port_key = ""
    if wlp is not None:
        if wlp.mode == "STRICT":
            strict = True
        elif wlp.mode in ("PERMISSIVE", "DISABLE"):
            strict = False
        modes = [m for _, m in wlp.ports]
        if wlp.ports:
            if wlp.mode == "STRICT":
                if any(m in ("PERMISSIVE", "DISABLE") for m in modes):
                    port_key, strict = converted_key(wlp), False
            elif wlp.mode in ("PERMISSIVE", "DISABLE"):
                if "STRICT" in modes:
                    port_key = converted_key(wlp)
            elif strict:  # UNSET under a STRICT mesh/namespace
                if "PERMISSIVE" in modes:
                    port_key, strict = converted_key(wlp), False
            elif "STRICT" in modes:  # UNSET under a permissive parent
                port_key = converted_key(wlp)
    keys = set()
    if strict:
        keys.add(f"{root_namespace}/{STATIC_STRICT}")
    if port_key:
        keys.add(port_key)
    return sorted(keys)


def convert(pa: PeerAuth, ns_pa: PeerAuth | None, root_pa: PeerAuth | None,
            root_namespace: str) -> Policy | None:
    """The policy served for a workload PeerAuthentication with port-level modes, or None
    when none is needed. `ns_pa`/`root_pa`: the oldest selector-less policy of its namespace
    and of the root namespace."""
    if pa.namespace == root_namespace or pa.selector is None or not pa.ports:
        return None
    mode = pa.mode
    ns_strict = ns_pa is not None and ns_pa.mode == "STRICT"
    ns_unset = ns_pa is None or ns_pa.mode == "UNSET"
    root_strict = root_pa is not None and root_pa.mode == "STRICT"
    parent_strict = ns_strict or (ns_unset and root_strict)
    rules: list[Rule] = []
    groups: list[Group] = []
    if mode == "STRICT":
        rules.append(Rule((_NO_IDENTITY,)))
    non_strict_port = False
    for port, port_mode in pa.ports:
        if port_mode == "STRICT":
            if mode == "STRICT" or (mode == "UNSET" and parent_strict):
                continue  # the workload's or the parent's mode already enforces it
            groups.append(Group((Rule((Match(not_principals=_NO_IDENTITY.not_principals,
                                             destination_ports=(port,)),)),)))
        elif port_mode in ("PERMISSIVE", "DISABLE"):
            if mode in ("PERMISSIVE", "DISABLE") or (mode == "UNSET" and not parent_strict):
                continue  # not STRICT anyway
            non_strict_port = True
            # Connections to any other port are still denied without an identity.
            rules.append(Rule((Match(not_destination_ports=(port,)),)))
    if mode == "STRICT" and not non_strict_port:
        return None  # all STRICT: the static policy covers it
    if not rules and not groups:
        return None
    # Under a STRICT parent the exceptions carry the STRICT part themselves (the workload then
    # drops the static policy: one matching DENY would refuse the excepted port anyway).
    if parent_strict and non_strict_port:
        rules.append(Rule((_NO_IDENTITY,)))
    if rules:
        groups.append(Group(tuple(rules)))
    return Policy(name=CONVERTED_PREFIX + pa.name, namespace=pa.namespace,
                  scope=PolicyScope.WORKLOAD_SELECTOR, action=PolicyAction.DENY,
                  groups=tuple(groups))
