"""Which IP families a pod's capture covers when `capture.ipv6` is `auto` (the default).

Capture follows the pod's addresses: a pod with an IPv6 address is captured on both
families, an IPv4-only pod on IPv4 only. Half-capturing a dual-stack pod would send its
IPv6 traffic around the proxy; capturing IPv6 for a pod that has none would install rules
for nothing. The decision is made once, at enrollment, and stored in the pod's record
(`capture.ipv6: true|false`), so CHECK, drift repair and release use the same rule set.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Callable
from typing import Any

from pyroute2 import IPRoute

from core.netns import entered

AUTO = "auto"


def _v6_global(addr: str) -> bool | None:
    """True/False for an IPv6/IPv4 address (with or without /prefix); None if not one."""
    try:
        ip = ipaddress.ip_interface(addr.strip()).ip
    except ValueError:
        return None
    return ip.version == 6 and not (ip.is_link_local or ip.is_loopback)


def netns_has_ipv6(netns: str) -> bool:
    """Whether the netns has a global IPv6 address on any interface but lo."""
    with entered(netns), IPRoute() as ipr:
        for msg in ipr.get_addr(family=socket.AF_INET6):
            if msg["index"] != 1 and _v6_global(str(msg.get_attr("IFA_ADDRESS") or "")):
                return True
    return False


def pod_has_ipv6(ips: list[str], netns: str,
                 probe: Callable[[str], bool] = netns_has_ipv6) -> bool:
    """From the addresses the runtime reported (prevResult / pod status); without any, from
    the pod's netns itself (`probe`; the primary CNI has set it up before we run)."""
    seen = [v for v in (_v6_global(str(ip)) for ip in ips) if v is not None]
    if seen:
        return any(seen)
    try:
        return probe(netns)
    except OSError:
        return False  # no such netns: the ADD fails on that a moment later


def resolve(capture: dict[str, Any], default: bool | str, ips: list[str],
            netns: str, probe: Callable[[str], bool] = netns_has_ipv6) -> dict[str, Any]:
    """`capture` (the pod's overrides) with `ipv6` made a bool when it is, or defaults to,
    `auto`. An explicit true/false (config or per pod) is kept as it is."""
    want = capture.get("ipv6", default)
    if want != AUTO:
        return capture
    return {**capture, "ipv6": pod_has_ipv6(ips, netns, probe)}
