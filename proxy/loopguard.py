"""Would this connection come straight back into the proxy?

The proxy's listeners (15001, 15006, 15008, 15053) are bound on every address of the pod's
netns, and the proxy's own sockets are marked, so they are never captured again. A
destination that is one of those listeners therefore reaches the proxy itself: one
unprivileged `connect()` to 127.0.0.1:15001, or to the pod's own IP on a capture port,
would make the proxy connect to itself, again and again, until the process runs out of
file descriptors (issue 12). ztunnel refuses the same destinations; so do we, before any
socket is made.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Collection

from core.addr import unmap

Addr = tuple[str, int]


def loop_reason(dst: Addr, local_ips: Collection[str], ports: Collection[int]) -> str | None:
    """Why dialling `dst` from inside the pod would reach one of the proxy's own listeners
    ("loopback", "unspecified", "pod_ip"), or None when it would not. `local_ips` are the
    pod netns' addresses, `ports` the proxy's capture ports."""
    if dst[1] not in ports:
        return None
    try:
        ip = ipaddress.ip_address(dst[0])
    except ValueError:
        return None  # not an address: nothing can be dialled, so nothing loops
    ip = unmap(ip)
    if ip.is_loopback:
        return "loopback"
    if ip.is_unspecified:
        return "unspecified"  # connect() to 0.0.0.0 or :: reaches the local host
    if str(ip) in local_ips:
        return "pod_ip"
    return None


def capture_ports(outbound: int, inbound: int, tunnel: int, dns: int) -> frozenset[int]:
    return frozenset((outbound, inbound, tunnel, dns))
