"""Which listener took a connection: the proxy's in-pod port, or the app it was meant for."""

from __future__ import annotations

from testing.lab import Node
from tests.kernel.netutil import accepted_by, tcp_connect, tcp_listener


def redirected(client: Node, server: Node, ip: str, port: int, mark: int | None = None,
               proxy_host: str = "127.0.0.1") -> bool:
    """Connect from client to ip:port with a proxy on proxy_host:15001 and the app on
    server:port (dual stack); say which one accepted, and insist exactly one did."""
    proxy = tcp_listener(client.path, 15001, proxy_host)
    app = tcp_listener(server.path, port, "::")
    with proxy, app, tcp_connect(client.path, ip, port, mark=mark):
        via_proxy = accepted_by(proxy, 0.5)
        direct = accepted_by(app, 0.5 if via_proxy is None else 0.2)
        assert (via_proxy is None) != (direct is None), "exactly one listener must accept"
        for s in (via_proxy, direct):
            if s is not None:
                s.close()
        return via_proxy is not None
