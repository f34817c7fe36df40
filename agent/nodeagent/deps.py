"""What the Enroller is given rather than reaching for: the redirect engine, the netns
lookups and the hand-off to the proxy (the backend itself is a `RuleBackend`).

The real ones touch the kernel and need root (network namespaces, netfilter, bpf) or a
proxy; tests/unit/test_enroller.py gives the Enroller fakes of each, so its state logic
(ADD/DEL/CHECK/GC, pending → redirected → enrolled, rollback at the deadline, refusing the
host's netns, retries) runs in milliseconds without root.
"""

from __future__ import annotations

from typing import Protocol

from agent.nodeagent import hostns, ipfamily, netnsfind
from agent.nodeagent.pods import PodRecord
from agent.redirect.backend import RuleBackend
from agent.redirect.rules import Drift
from agent.redirect.spec import RedirectSpec


class Handoff(Protocol):
    """Pods to the node proxy (agent/nodeagent/handoff.py's ProxyHandoff, over ZDS)."""

    def ready(self) -> bool: ...

    def add(self, rec: PodRecord, budget: float | None = None) -> None:
        """Block until a proxy acked the pod; raise ZdsError otherwise."""

    def delete(self, rec: PodRecord) -> None:
        """Tell every proxy to let go; best effort."""


class RedirectEngine(Protocol):
    """A backend's rules in a netns: the module agent.redirect.backend is the real one."""

    def apply(self, netns: str | int, spec: RedirectSpec, impl: RuleBackend) -> None: ...

    def remove(self, netns: str | int, spec: RedirectSpec, impl: RuleBackend) -> list[str]: ...

    def diff(self, netns: str | int, spec: RedirectSpec, impl: RuleBackend) -> Drift: ...


class NetnsLookup(Protocol):
    """Finding and vetting a pod's netns."""

    def inode_of(self, path: str) -> int | None:
        """The netns's identity (None: no such netns)."""

    def forbidden(self, path: str) -> str | None:
        """Why it must never be captured ("the host's", "the agent's own"), or None."""

    def locate(self, path: str, inode: int, ips: list[str]) -> str | None:
        """Where a known pod's netns is now (None: gone, or no longer holding its IPs)."""

    def has_ipv6(self, path: str) -> bool:
        """Whether it has a global IPv6 address (for `capture.ipv6: auto`)."""


class HostNetns:
    """The real lookups, on this host's /proc and nsfs."""

    def inode_of(self, path: str) -> int | None:
        return netnsfind.inode_of(path)

    def forbidden(self, path: str) -> str | None:
        return hostns.forbidden(path)

    def locate(self, path: str, inode: int, ips: list[str]) -> str | None:
        return netnsfind.locate(path, inode, ips)

    def has_ipv6(self, path: str) -> bool:
        return ipfamily.netns_has_ipv6(path)
