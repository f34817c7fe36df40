"""The eBPF redirection backend, behind the same `RuleBackend` protocol as iptables/nftables.

The engine (`agent.redirect.backend`) calls every method from inside the pod's netns, so the
pod is identified by the netns cookie of the calling thread, and its own addresses and its
netns fd are read from there too. "Rules" here are the pod's entry in the `pods` map, its
sk_lookup link and the reply-routing rule, one line each, so read/expected/diff work
unchanged.

`prepare()` loads and attaches the programs and forgets pods whose netns died while no agent
ran; every other method loads them too if that has not happened yet (the CLI), so prepare
is where a host that cannot run them is found (BackendUnavailable), before the first pod.
The backend owns its loader; the pin dir and cgroup come from whoever makes it (the agent's
config, the CLI's environment: agent/redirect/backend.py).

Besides the maps, inbound capture with the client's address preserved needs two things in
the pod's netns that conntrack gives the iptables backends for free (see TRANSPARENT_MARK):
`net.ipv4.tcp_fwmark_accept=1` and `ip rule fwmark 0x1000/0x1000 lookup <route_table>`.
"""

from __future__ import annotations

import contextlib
import errno
import ipaddress
import os
import socket

import structlog
from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from agent.redirect import routes
from agent.redirect.ebpf.loader import Loader, LoadError, PodOpts, netns_cookie
from agent.redirect.errors import BackendUnavailable, RedirectError
from agent.redirect.rules import ChainKey, LiveRule, OwnRules
from agent.redirect.spec import RedirectSpec
from core import sysctl
from core.ports import TRANSPARENT_MARK

POD_KEY = ChainKey("ebpf", "maps", "pods")
LINK_KEY = ChainKey("ebpf", "links", "sk_lookup")
RULE_KEY = ChainKey("ebpf", "netns", "reply-routing")
_FWMARK_ACCEPT = "net.ipv4.tcp_fwmark_accept"
_AF = {4: socket.AF_INET, 6: socket.AF_INET6}

log = structlog.get_logger("ebpf")


def _addr_dump(ipr: IPRoute) -> tuple[tuple[str, ...], bool]:
    """One address dump of this netns: its own global addresses (the CNI has set them up
    before we run), and whether lo has an IPv6 address (`routes.families`' test for IPv6
    being usable here), so an enroll needs a single round trip for both."""
    out = []
    v6_on_lo = False
    for msg in ipr.get_addr():
        ip = msg.get_attr("IFA_ADDRESS")
        if msg["index"] == routes.LOOPBACK_IFINDEX:
            v6_on_lo = v6_on_lo or msg["family"] == socket.AF_INET6
        elif ip:
            a = ipaddress.ip_address(ip)
            if not (a.is_link_local or a.is_loopback):
                out.append(str(a))
    return tuple(sorted(out)), v6_on_lo


def pod_addresses(ipr: IPRoute | None = None) -> tuple[str, ...]:
    """This netns's own global addresses, over `ipr` if given (else a socket of its own)."""
    if ipr is not None:
        return _addr_dump(ipr)[0]
    with IPRoute() as own:
        return _addr_dump(own)[0]


def _rule_text(spec: RedirectSpec, fam: int) -> str:
    return (f"ipv{fam} rule pref {spec.rule_priority} fwmark {TRANSPARENT_MARK:#x}"
            f"/{TRANSPARENT_MARK:#x} lookup {spec.route_table}")


def _rule(ipr: IPRoute, op: str, spec: RedirectSpec, fam: int) -> None:
    ipr.rule(op, family=_AF[fam], table=spec.route_table, priority=spec.rule_priority,
             fwmark=TRANSPARENT_MARK, fwmask=TRANSPARENT_MARK)


def _has_rule(ipr: IPRoute, spec: RedirectSpec, fam: int) -> bool:
    return any(r.get_attr("FRA_FWMARK") == TRANSPARENT_MARK
               and r.get_attr("FRA_FWMASK") == TRANSPARENT_MARK
               and r.get_attr("FRA_TABLE") == spec.route_table
               for r in ipr.get_rules(family=_AF[fam]))


class EbpfBackend:
    name = "ebpf"

    def __init__(self, loader: Loader | None = None) -> None:
        self.loader = loader or Loader()

    def prepare(self) -> None:
        """Load and attach the programs (or take over pinned ones), then forget the pods
        whose netns is gone. Idempotent."""
        try:
            self.loader.load()
            dead = self.loader.prune()
        except LoadError as exc:
            raise BackendUnavailable(str(exc)) from None
        log.info("ebpf_loaded", pin_dir=self.loader.pin_dir, cgroup=self.loader.cgroup,
                 pruned_dead_pods=len(dead))

    def close(self) -> None:
        """Drop this process's program and map fds; pinned links and maps stay."""
        self.loader.close()

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
        """One netlink socket, in the pod's netns (the calling thread's), for everything:
        the address dump (the pod's addresses and which families are usable) and the reply
        routing rules; it is closed on every path."""
        opts = self._opts(label, spec)
        loader = self._loaded(label)
        try:
            with IPRoute() as ipr:
                try:
                    addrs, v6_on_lo = _addr_dump(ipr)
                    fams = [f for f in spec.families if f == 4 or v6_on_lo]
                    if opts.inbound_port:
                        self._reply_routing(ipr, spec, fams, on=True)
                    fd = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
                    try:
                        loader.enroll_cookie(netns_cookie(), opts, addrs, fd)
                    finally:
                        os.close(fd)
                except (OSError, NetlinkError, LoadError):
                    with contextlib.suppress(OSError, NetlinkError):  # report the first
                        self._reply_routing(ipr, spec, routes.families(ipr, spec), on=False)
                    raise
        except (OSError, NetlinkError, LoadError) as exc:
            raise RedirectError(label, "ebpf enroll", str(exc)) from None

    @staticmethod
    def _reply_routing(ipr: IPRoute, spec: RedirectSpec, fams: list[int], on: bool) -> None:
        for fam in fams:
            try:
                _rule(ipr, "add" if on else "del", spec, fam)
            except NetlinkError as exc:
                if exc.code not in (errno.EEXIST, errno.ENOENT):
                    raise
        if on or os.path.exists(sysctl.path(_FWMARK_ACCEPT)):
            sysctl.write(_FWMARK_ACCEPT, "1" if on else "0")

    def read(self, label: str, spec: RedirectSpec) -> OwnRules:
        rules = OwnRules()
        loader = self._loaded(label)
        cookie = netns_cookie()
        opts = loader.read_cookie(cookie)
        if opts is not None:
            # "packets": what the programs redirected for this pod (connections, DNS
            # datagrams), the closest thing to a rule counter
            rules.add(POD_KEY, LiveRule(opts.describe(), packets=loader.redirected(cookie)))
        if loader.netns_linked(cookie):
            rules.add(LINK_KEY, LiveRule("mn_sk_lookup attached to this netns"))
        with IPRoute() as ipr:
            for fam in routes.families(ipr, spec):
                if _has_rule(ipr, spec, fam):
                    rules.add(RULE_KEY, LiveRule(_rule_text(spec, fam)))
        with contextlib.suppress(OSError):
            if sysctl.read(_FWMARK_ACCEPT) == "1":
                rules.add(RULE_KEY, LiveRule("net.ipv4.tcp_fwmark_accept=1"))
        return rules

    def remove(self, label: str, spec: RedirectSpec) -> list[str]:
        cookie = netns_cookie()
        removed = []
        if self._loaded(label).unenroll_cookie(cookie):
            removed.append(f"pods map entry and sk_lookup link for netns cookie {cookie}")
        try:
            with IPRoute() as ipr:
                self._reply_routing(ipr, spec, routes.families(ipr, spec), on=False)
        except (OSError, NetlinkError) as exc:
            raise RedirectError(label, "ebpf remove", str(exc)) from None
        return removed

    def expected(self, spec: RedirectSpec) -> OwnRules:
        """What `read` shows for a captured pod. The pod's addresses in `pod_ips` are not
        part of it (they are whatever the netns has): `meshnode bpf maps` lists them."""
        rules = OwnRules()
        opts = self._opts("-", spec)
        rules.add(POD_KEY, LiveRule(opts.describe()))
        if opts.inbound_port:
            rules.add(LINK_KEY, LiveRule("mn_sk_lookup attached to this netns"))
            for fam in spec.families:
                rules.add(RULE_KEY, LiveRule(_rule_text(spec, fam)))
            rules.add(RULE_KEY, LiveRule("net.ipv4.tcp_fwmark_accept=1"))
        return rules
