"""The redirect engine's entry points: pick a backend, enter the netns, apply or inspect.

Every backend (iptables, nftables, eBPF) is a `RuleBackend`: `prepare()` once before the
first pod (load and attach what it needs; idempotent; BackendUnavailable when this host
cannot run it), then apply / read / remove / expected for one pod from inside its netns,
and `close()` to drop what this process holds (rules, pins and maps stay). `make_backend`
builds one from explicit settings; each call gives a new backend with its own state (an
eBPF backend owns its loader: make one per process and keep it).

Apply order is routes first, then the netfilter rules: the fwmark rule and local route do
nothing until rules mark packets, so a failure between the two steps never leaves a pod
half-captured; on any failure what this call added is taken back.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Protocol

from agent.redirect import routes
from agent.redirect.ebpf.backend import EbpfBackend
from agent.redirect.ebpf.loader import Loader, default_cgroup
from agent.redirect.errors import RedirectError
from agent.redirect.iptables_backend import IptablesBackend, detect_flavour
from agent.redirect.nftables_backend import NftablesBackend
from agent.redirect.rules import Drift, OwnRules, compare
from agent.redirect.spec import Backend, IptablesFlavour, RedirectSpec
from core.bpf import default_pin_dir
from core.netns import entered, netns_label


class RuleBackend(Protocol):
    name: str

    def prepare(self) -> None: ...
    def apply(self, label: str, spec: RedirectSpec) -> None: ...
    def read(self, label: str, spec: RedirectSpec) -> OwnRules: ...
    def remove(self, label: str, spec: RedirectSpec) -> list[str]: ...
    def expected(self, spec: RedirectSpec) -> OwnRules: ...
    def close(self) -> None: ...


def make_backend(backend: Backend | str, iptables_flavour: IptablesFlavour | str = "auto", *,
                 bpf_pin_dir: str | None = None, bpf_cgroup: str | None = None
                 ) -> RuleBackend:
    """A new backend. iptables: `auto` detects the flavour here, in the calling thread's
    (the host's) netns. eBPF: its own loader for `bpf_pin_dir` and `bpf_cgroup`; None takes
    them from the environment ($MESHNODE_BPF_PIN_DIR, $MESHNODE_BPF_CGROUP: the CLI and
    tests); the agent passes its config's. Loading compiles (~1 s) and holds a few dozen
    descriptors, so make one eBPF backend per process and pin dir, and keep it."""
    backend = Backend(backend)
    if backend is Backend.NFTABLES:
        return NftablesBackend()
    if backend is Backend.EBPF:
        return EbpfBackend(Loader(
            pin_dir=default_pin_dir() if bpf_pin_dir is None else bpf_pin_dir,
            cgroup=default_cgroup() if bpf_cgroup is None else bpf_cgroup))
    flavour = IptablesFlavour(iptables_flavour)
    return IptablesBackend(detect_flavour() if flavour is IptablesFlavour.AUTO
                          else flavour.value)


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
