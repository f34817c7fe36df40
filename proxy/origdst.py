"""Read a redirected connection's original destination.

iptables/nftables REDIRECT keep it in conntrack and answer `SO_ORIGINAL_DST`
(`IP6T_SO_ORIGINAL_DST` for IPv6); the eBPF backend answers the same call from a map, so
the proxy has one code path for every backend.
"""

from __future__ import annotations

import ipaddress
import socket
import struct

from core.addr import unmap

SO_ORIGINAL_DST = 80  # linux/netfilter_ipv4.h
IP6T_SO_ORIGINAL_DST = 80  # linux/netfilter_ipv6/ip6_tables.h


def original_dst(sock: socket.socket) -> tuple[str, int]:
    # A dual-stack listener's v4-mapped connection is tracked by IPv4 conntrack, so it must
    # be asked at SOL_IP even though the socket is AF_INET6.
    if sock.family == socket.AF_INET6 and not sock.getsockname()[0].startswith("::ffff:"):
        raw = sock.getsockopt(socket.IPPROTO_IPV6, IP6T_SO_ORIGINAL_DST, 28)
        port = struct.unpack_from("!H", raw, 2)[0]
        addr = ipaddress.IPv6Address(raw[8:24])
        return (str(unmap(addr)), port)
    raw = sock.getsockopt(socket.SOL_IP, SO_ORIGINAL_DST, 16)
    port = struct.unpack_from("!H", raw, 2)[0]
    return (socket.inet_ntoa(raw[4:8]), port)
