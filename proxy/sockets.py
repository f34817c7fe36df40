"""Create sockets inside a pod's network namespace.

A socket belongs to the netns it was created in, for its whole life, whichever thread uses
it later. So a short setns on a worker thread is enough: create, mark, leave. Every socket
the proxy owns carries the proxy mark, which is how the pod's rules let its traffic through.
"""

from __future__ import annotations

import socket

from core.netns import entered
from core.ports import PROXY_MARK


def socket_in(netns_fd: int, family: int, type_: int, mark: int = PROXY_MARK) -> socket.socket:
    with entered(netns_fd):
        s = socket.socket(family, type_)
    try:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_MARK, mark)
        s.setblocking(False)
    except OSError:
        s.close()
        raise
    return s


def listener_in(netns_fd: int, port: int, type_: int = socket.SOCK_STREAM,
                mark: int = PROXY_MARK, backlog: int = 1024) -> socket.socket:
    """A dual-stack listener on [::]:port in the pod's netns, SO_REUSEPORT so an old and a
    new proxy can serve the same pod during an upgrade."""
    s = socket_in(netns_fd, socket.AF_INET6, type_, mark)
    try:
        s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        s.bind(("::", port))
        if type_ == socket.SOCK_STREAM:
            s.listen(backlog)
    except OSError:
        s.close()
        raise
    return s
