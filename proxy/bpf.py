"""The proxy's side of the eBPF backend, used only when the agent has loaded it.

Two pinned maps (under the agent's pin dir) need the proxy:
- `listeners` (sockhash): sk_lookup hands a pod's inbound connections to the socket found
  there under the pod's netns cookie, and only the proxy holds that socket, so the proxy
  registers its inbound listener when it starts serving a pod. The kernel drops the entry
  when the socket closes; a newer proxy's registration simply replaces it.
- `cookie_origin`: the resolver a pod's app sent a DNS datagram to, by the app socket's
  cookie. There is no NAT and no conntrack entry to ask, so the DNS proxy finds the app's
  socket with sock_diag (by the address and port the datagram came from), which reports its
  cookie, the same one the eBPF programs key by.

Blocking calls (setns, netlink): run them on worker threads.
"""

from __future__ import annotations

import ipaddress
import os
import socket
import struct

from core import bpf as sc
from core.addr import unmap
from core.bpf import SO_NETNS_COOKIE
from core.netns import entered

NETLINK_SOCK_DIAG = 4
SOCK_DIAG_BY_FAMILY = 20
NLM_F_REQUEST = 1
NLMSG_ERROR = 2
_ORIGIN = struct.Struct("=Q16sHH4x")  # struct origin in bpf/redirect.c (padded to 8)
_AF_INET = 2


def netns_cookie_of(sock: socket.socket) -> int:
    return int(struct.unpack("=Q", sock.getsockopt(socket.SOL_SOCKET, SO_NETNS_COOKIE, 8))[0])


def register_inbound(pin_dir: str, listener: socket.socket) -> bool:
    """Put `listener` in the pinned `listeners` sockhash under its netns cookie. False when
    the eBPF backend is not loaded (no such map): the pod is captured by netfilter rules."""
    path = os.path.join(pin_dir, "listeners")
    if not os.path.exists(path):
        return False
    fd = sc.obj_get(path)
    try:
        sc.map_update(fd, struct.pack("=Q", netns_cookie_of(listener)),
                      struct.pack("=Q", listener.fileno()))
    finally:
        os.close(fd)
    return True


def _diag_request(family: int, peer: tuple[str, int], local: tuple[str, int]) -> bytes:
    def addr(ip: str) -> bytes:
        return ipaddress.ip_address(ip).packed.ljust(16, b"\0")

    # inet_diag_req_v2 + inet_diag_sockid. For a single-socket UDP query the kernel looks
    # the socket up as the receiver of a packet from idiag_src:sport to idiag_dst:dport.
    sockid = (struct.pack("!HH", peer[1], local[1]) + addr(peer[0]) + addr(local[0])
              + struct.pack("=III", 0, 0xFFFFFFFF, 0xFFFFFFFF))
    body = struct.pack("=BBBxI", family, socket.IPPROTO_UDP, 0, 0xFFFFFFFF) + sockid
    return struct.pack("=IHHII", 16 + len(body), SOCK_DIAG_BY_FAMILY, NLM_F_REQUEST, 1, 0) + body


def udp_socket_cookie(netns_fd: int, peer: tuple[str, int], local: tuple[str, int]
                      ) -> int | None:
    """The cookie of the UDP socket in `netns_fd` bound to `local` that a datagram from
    `peer` would reach, or None when there is no such socket."""
    family = socket.AF_INET6 if ipaddress.ip_address(local[0]).version == 6 else socket.AF_INET
    with entered(netns_fd):
        nl = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC,
                           NETLINK_SOCK_DIAG)
    with nl:
        nl.settimeout(1.0)
        nl.send(_diag_request(family, peer, local))
        reply = nl.recv(65536)
    _, kind = struct.unpack_from("=IH", reply, 0)
    if kind == NLMSG_ERROR or kind != SOCK_DIAG_BY_FAMILY:
        return None
    lo, hi = struct.unpack_from("=II", reply, 16 + 4 + 40)  # inet_diag_msg: id.idiag_cookie
    return int(lo | (hi << 32))


def dns_origin(pin_dir: str, netns_fd: int, client: tuple[str, int], local: tuple[str, int]
               ) -> tuple[str, int] | None:
    """The resolver the app at `client` sent its query to (the eBPF backend rewrote it to
    `local`, the DNS proxy's address), or None when the eBPF backend did not redirect it."""
    path = os.path.join(pin_dir, "cookie_origin")
    if not os.path.exists(path):
        return None
    cookie = udp_socket_cookie(netns_fd, local, client)
    if cookie is None:
        return None
    fd = sc.obj_get(path)
    try:
        raw = sc.map_lookup(fd, struct.pack("=Q", cookie), _ORIGIN.size)
    finally:
        os.close(fd)
    if raw is None:
        return None
    _, ip, port_be, family = _ORIGIN.unpack(raw)
    addr = ipaddress.IPv6Address(ip)
    host = str(unmap(addr)) if family == _AF_INET else str(addr)
    return host, socket.ntohs(port_be)
