"""Sockets made inside a lab netns (the socket keeps its netns after we leave)."""

from __future__ import annotations

import socket

from core.bpf import default_pin_dir
from core.netns import entered
from core.ports import INBOUND_PORT
from proxy import bpf


def tcp_listener(ns: str, port: int, host: str = "::") -> socket.socket:
    with entered(ns):
        s = socket.create_server((host, port), family=socket.AF_INET6 if ":" in host
                                 else socket.AF_INET, dualstack_ipv6=host == "::",
                                 reuse_port=False)
    if port == INBOUND_PORT:
        # Standing in for the proxy's inbound listener: with the eBPF backend loaded, do
        # what the proxy does, or sk_lookup has nowhere to send inbound connections.
        bpf.register_inbound(default_pin_dir(), s)
    s.settimeout(2)
    return s


def udp_socket(ns: str, port: int = 0, host: str = "0.0.0.0") -> socket.socket:
    v6 = ":" in host
    with entered(ns):
        s = socket.socket(socket.AF_INET6 if v6 else socket.AF_INET, socket.SOCK_DGRAM)
        if v6:
            s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        s.bind((host, port))
    s.settimeout(2)
    return s


def tcp_connect(ns: str, ip: str, port: int, mark: int | None = None,
                timeout: float = 2) -> socket.socket:
    fam = socket.AF_INET6 if ":" in ip else socket.AF_INET
    with entered(ns):
        s = socket.socket(fam, socket.SOCK_STREAM)
    if mark is not None:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_MARK, mark)
    s.settimeout(timeout)
    s.connect((ip, port))
    return s


def accepted_by(listener: socket.socket, timeout: float = 2) -> socket.socket | None:
    """The next connection on `listener`, or None if none arrives in time."""
    listener.settimeout(timeout)
    try:
        conn, _ = listener.accept()
    except TimeoutError:
        return None
    return conn
