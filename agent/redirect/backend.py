"""The redirect engine's entry points: pick a backend, enter the netns, apply or inspect.

Apply order is routes first, then the netfilter rules: the fwmark rule and local route do
nothing until rules mark packets, so a failure between the two steps never leaves a pod
half-captured; on any failure what this call added is taken back.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Protocol

from agent.redirect import routes
from agent.redirect.ebpf.backend import EbpfBackend
from agent.redirect.ebpf.loader import Loader
from agent.redirect.errors import RedirectError
from agent.redirect.iptables_backend import IptablesBackend, detect_flavour
from agent.redirect.nftables_backend import NftablesBackend
from agent.redirect.rules import Drift, OwnRules, compare
from agent.redirect.spec import Backend, RedirectSpec
from core.bpf import default_pin_dir
from core.netns import entered, netns_label


class RuleBackend(Protocol):
    name: str

    def apply(self, label: str, spec: RedirectSpec) -> None: ...
    def read(self, label: str, spec: RedirectSpec) -> OwnRules: ...
    def remove(self, label: str, spec: RedirectSpec) -> list[str]: ...
    def expected(self, spec: RedirectSpec) -> OwnRules: ...


_LOADERS: dict[tuple[str, str], Any] = {}


def make_backend(backend: Backend | str, iptables_flavour: str = "auto") -> RuleBackend:
    backend = Backend(backend)
    if backend is Backend.NFTABLES:
        return NftablesBackend()
    if backend is Backend.EBPF:
        # MESHNODE_BPF_CGROUP: the host's cgroup v2 root as mounted in a container (found
        # from mountinfo otherwise, which inside a container is the container's own cgroup)
        where = (default_pin_dir(), os.environ.get("MESHNODE_BPF_CGROUP", ""))
        # One loaded program set per pin dir and process: loading compiles (~1 s) and holds
        # a few dozen descriptors, so backends made one after another share it.
        loader = _LOADERS.get(where)
        if loader is None:
            loader = _LOADERS[where] = Loader(pin_dir=where[0], cgroup=where[1])
        return EbpfBackend(loader)
    flavour = detect_flavour() if iptables_flavour == "auto" else iptables_flavour
    return IptablesBackend(flavour)


@dataclass
class LiveState:
    rules: OwnRules
    routes: list[routes.RouteState]


@contextmanager
def _inside(netns: str | int) -> Iterator[str]:
    label = netns_label(netns)
    if isinstance(netns, str) and not os.path.exists(netns):
        raise RedirectError(label, "open netns", "no such network namespace")
    try:
        ctx = entered(netns)
        ctx.__enter__()
    except OSError as exc:
        raise RedirectError(label, "enter netns", exc.strerror or str(exc)) from None
    try:
        yield label
    finally:
        ctx.__exit__(None, None, None)


def apply(netns: str | int, spec: RedirectSpec, impl: RuleBackend) -> None:
    with _inside(netns) as label:
        added = routes.apply(label, spec)
        try:
            impl.apply(label, spec)
        except RedirectError:
            routes.undo(spec, added)
            raise


def remove(netns: str | int, spec: RedirectSpec, impl: RuleBackend) -> list[str]:
    with _inside(netns) as label:
        removed = impl.remove(label, spec)
        n = routes.remove(label, spec)
        return removed + ([f"{n} ip rule/route entries"] if n else [])


def read(netns: str | int, spec: RedirectSpec, impl: RuleBackend) -> LiveState:
    with _inside(netns) as label:
        return LiveState(impl.read(label, spec), routes.read(spec))


def diff(netns: str | int, spec: RedirectSpec, impl: RuleBackend) -> Drift:
    expected = impl.expected(spec)  # canonicalised outside the pod's netns
    state = read(netns, spec, impl)
    drift = compare(expected, state.rules)
    for rs in state.routes:
        if not rs.rule:
            drift.missing.append(rs.rule_text(spec))
        if not rs.route:
            drift.missing.append(rs.route_text(spec))
    return drift
