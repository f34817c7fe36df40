"""The policy routing half of redirection: `ip rule fwmark CONNMARK lookup TABLE` and a
`local` default route on lo in that table, so replies to proxy-marked flows are delivered
locally. Done over netlink (pyroute2) in the current thread's netns.
"""

from __future__ import annotations

import errno
import socket
from collections.abc import Callable
from dataclasses import dataclass

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from agent.redirect.errors import RedirectError
from agent.redirect.spec import RedirectSpec

_AF = {4: socket.AF_INET, 6: socket.AF_INET6}
LOOPBACK_IFINDEX = 1
_ANY = {4: "0.0.0.0", 6: "::"}


@dataclass(frozen=True)
class RouteState:
    family: int
    rule: bool   # the fwmark rule is present
    route: bool  # the local default route on lo is present in the table

    def describe(self, spec: RedirectSpec) -> list[str]:
        return [self.rule_text(spec), self.route_text(spec)]

    def rule_text(self, spec: RedirectSpec) -> str:
        return (f"ipv{self.family} rule pref {spec.rule_priority} fwmark "
                f"{spec.connmark:#x}/{spec.mark_mask:#x} lookup {spec.route_table}")

    def route_text(self, spec: RedirectSpec) -> str:
        return f"ipv{self.family} route local {_ANY[self.family]}/0 dev lo table {spec.route_table}"


def _has_rule(ipr: IPRoute, spec: RedirectSpec, fam: int) -> bool:
    for r in ipr.get_rules(family=_AF[fam]):
        if (r.get_attr("FRA_TABLE") == spec.route_table
                and r.get_attr("FRA_FWMARK") == spec.connmark
                and r.get_attr("FRA_FWMASK") == spec.mark_mask
                and r.get_attr("FRA_PRIORITY") == spec.rule_priority):
            return True
    return False


def _has_route(ipr: IPRoute, spec: RedirectSpec, fam: int, lo: int) -> bool:
    for r in ipr.get_routes(family=_AF[fam], table=spec.route_table):
        if (r["dst_len"] == 0 and r.get_attr("RTA_OIF") == lo
                and r.get_attr("RTA_TABLE") == spec.route_table and r["type"] == 2):
            return True
    return False


def _lo(ipr: IPRoute) -> int:
    # lo is the first device of every netns and the kernel pins it to index 1
    # (LOOPBACK_IFINDEX): no netlink round trip needed.
    return LOOPBACK_IFINDEX


def _v6_usable(ipr: IPRoute, lo: int) -> bool:
    # With IPv6 disabled in the netns there is nothing to route; istio-cni skips it too.
    return bool(ipr.get_addr(family=socket.AF_INET6, index=lo))


def families(ipr: IPRoute, spec: RedirectSpec) -> list[int]:
    return [f for f in spec.families if f == 4 or _v6_usable(ipr, _lo(ipr))]


def read(spec: RedirectSpec) -> list[RouteState]:
    with IPRoute() as ipr:
        lo = _lo(ipr)
        return [RouteState(f, _has_rule(ipr, spec, f), _has_route(ipr, spec, f, lo))
                for f in families(ipr, spec)]


def apply(netns: str, spec: RedirectSpec) -> list[tuple[int, str]]:
    """Install what is missing; return what was added, so a failed apply can undo it.

    Adds are exclusive (NLM_F_EXCL), so EEXIST means "already there": no dump needed, which
    keeps this at a few netlink round trips on the pod start-up path.
    """
    added: list[tuple[int, str]] = []
    with IPRoute() as ipr:
        lo = _lo(ipr)
        try:
            for f in families(ipr, spec):
                if _add(ipr.route, family=_AF[f], dst=_ANY[f], dst_len=0, type="local",
                        scope="host", oif=lo, table=spec.route_table):
                    added.append((f, "route"))
                if _add(ipr.rule, family=_AF[f], table=spec.route_table,
                        priority=spec.rule_priority, fwmark=spec.connmark,
                        fwmask=spec.mark_mask):
                    added.append((f, "rule"))
        except NetlinkError as exc:
            _undo(ipr, spec, added, lo)
            raise RedirectError(netns, "ip rule/route", f"netlink: {exc}") from None
    return added


def _add(call: Callable[..., object], **attrs: object) -> bool:
    """An exclusive netlink add; False if the object already existed."""
    try:
        call("add", **attrs)
    except NetlinkError as exc:
        if exc.code == errno.EEXIST:
            return False
        raise
    return True


def _undo(ipr: IPRoute, spec: RedirectSpec, items: list[tuple[int, str]], lo: int) -> int:
    """Delete the given items; ones already gone are fine. Returns how many were deleted."""
    deleted = 0
    for f, kind in reversed(items):
        try:
            if kind == "route":
                ipr.route("del", family=_AF[f], dst=_ANY[f], dst_len=0, type="local",
                          scope="host", oif=lo, table=spec.route_table)
            else:
                ipr.rule("del", family=_AF[f], table=spec.route_table,
                         priority=spec.rule_priority, fwmark=spec.connmark,
                         fwmask=spec.mark_mask)
        except NetlinkError as exc:
            if exc.code not in (errno.ENOENT, errno.ESRCH, errno.EAFNOSUPPORT):
                raise
            continue
        deleted += 1
    return deleted


def undo(spec: RedirectSpec, items: list[tuple[int, str]]) -> None:
    with IPRoute() as ipr:
        _undo(ipr, spec, items, _lo(ipr))


def remove(netns: str, spec: RedirectSpec) -> int:
    """Remove our rule and route if present; return how many objects were removed."""
    removed = 0
    with IPRoute() as ipr:
        lo = _lo(ipr)
        try:
            for f in (4, 6):  # both, so a spec narrowed to IPv4 still cleans up IPv6
                for kind in ("rule", "route"):
                    removed += _undo(ipr, spec, [(f, kind)], lo)
        except NetlinkError as exc:
            raise RedirectError(netns, "ip rule/route remove", f"netlink: {exc}") from None
    return removed
