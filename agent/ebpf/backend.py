"""The eBPF redirection backend, behind the same `RuleBackend` protocol as iptables/nftables.

The engine (`agent.redirect.backend`) calls every method from inside the pod's netns, so the
pod is identified by the netns cookie of the calling thread. "Rules" here are the pod's entry
in the `pods` map, shown as one line, so read/expected/diff work unchanged.

Milestone 2 covers outbound TCP over IPv4 and, with `ipv6=True`, IPv6 (answering
SO_ORIGINAL_DST and IP6T_SO_ORIGINAL_DST); DNS and inbound capture are not implemented by
this backend yet, whatever the spec says about them.
"""

from __future__ import annotations

from agent.ebpf.loader import Loader, LoadError, PodOpts, netns_cookie
from agent.redirect.errors import RedirectError
from agent.redirect.rules import ChainKey, LiveRule, OwnRules
from agent.redirect.spec import RedirectSpec

POD_KEY = ChainKey("ebpf", "maps", "pods")


class EbpfBackend:
    name = "ebpf"

    def __init__(self, loader: Loader | None = None) -> None:
        self.loader = loader or Loader()

    def _opts(self, label: str, spec: RedirectSpec) -> PodOpts:
        try:
            return PodOpts.from_spec(spec)
        except ValueError as exc:
            raise RedirectError(label, "ebpf spec", str(exc)) from None

    def _loaded(self, label: str) -> Loader:
        try:
            self.loader.load()
        except LoadError as exc:
            raise RedirectError(label, "load ebpf programs", str(exc)) from None
        return self.loader

    def apply(self, label: str, spec: RedirectSpec) -> None:
        opts = self._opts(label, spec)
        self._loaded(label).enroll_cookie(netns_cookie(), opts)

    def read(self, label: str, spec: RedirectSpec) -> OwnRules:
        rules = OwnRules()
        opts = self._loaded(label).read_cookie(netns_cookie())
        if opts is not None:
            rules.add(POD_KEY, LiveRule(opts.describe()))
        return rules

    def remove(self, label: str, spec: RedirectSpec) -> list[str]:
        cookie = netns_cookie()
        if self._loaded(label).unenroll_cookie(cookie):
            return [f"pods map entry for netns cookie {cookie}"]
        return []

    def expected(self, spec: RedirectSpec) -> OwnRules:
        rules = OwnRules()
        rules.add(POD_KEY, LiveRule(self._opts("-", spec).describe()))
        return rules
