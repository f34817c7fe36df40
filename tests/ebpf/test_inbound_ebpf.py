"""Inbound capture with sk_lookup, proven with real sockets: the proxy's listener gets the
connection with the true local address; the probe source, the tunnel port and excluded
ports pass; with no listener registered the connection is refused, never let through."""

from __future__ import annotations

import socket
import struct
import subprocess
from collections.abc import Iterator

import pytest

from agent.redirect.ebpf.loader import Loader
from agent.redirect.spec import PROBE_SOURCE_V4, RedirectSpec
from core.bpf import SO_NETNS_COOKIE
from core.netns import entered
from proxy import bpf
from proxy.origdst import original_dst
from testing.lab import Node
from tests.kernel.netutil import accepted_by, tcp_connect, tcp_listener

pytestmark = pytest.mark.kernel


@pytest.fixture
def enrolled(pods: tuple[Node, Node], loader: Loader) -> Iterator[tuple[Node, Node]]:
    """The *server* pod (pods[1]) is enrolled: inbound to it is what is captured."""
    _, server = pods
    loader.enroll(server.path, RedirectSpec(exclude_inbound_ports=(2222,)),
                  addrs=(server.ip4, server.ip6))
    try:
        yield pods
    finally:
        loader.unenroll(server.path)


def proxy_listener(loader: Loader, node: Node) -> socket.socket:
    s = tcp_listener(node.path, 15006, "::")
    assert bpf.register_inbound(loader.pin_dir, s)
    return s


def test_inbound_is_handed_to_the_proxy_with_the_true_local_address(
        enrolled: tuple[Node, Node], loader: Loader) -> None:
    client, server = enrolled
    before = loader.stats()["inbound"]
    proxy = proxy_listener(loader, server)
    app = tcp_listener(server.path, 8080, "::")
    with proxy, app, tcp_connect(client.path, server.ip4, 8080) as c:
        conn = accepted_by(proxy)
        assert conn is not None, "inbound was not given to the proxy's listener"
        with conn:
            # no NAT: the accepted socket is addressed as the client asked
            assert conn.getsockname()[:2] == (f"::ffff:{server.ip4}", 8080)
            assert conn.getpeername()[:2] == (f"::ffff:{client.ip4}", c.getsockname()[1])
            assert original_dst(conn) == (server.ip4, 8080)
        assert accepted_by(app, 0.2) is None
    assert loader.stats()["inbound"] == before + 1


def test_probe_source_tunnel_port_and_excluded_ports_pass(
        enrolled: tuple[Node, Node], loader: Loader) -> None:
    client, server = enrolled
    # the kubelet's probes come from the probe source (the host SNATs them to it)
    with entered(client.path):
        subprocess.run(["ip", "addr", "add", f"{PROBE_SOURCE_V4}/32", "dev", client.ifname],
                       check=True)
    with entered(server.path):
        subprocess.run(["ip", "route", "add", f"{PROBE_SOURCE_V4}/32", "dev", server.ifname],
                       check=True)
    proxy = proxy_listener(loader, server)
    with proxy:
        for port, src in ((15008, None), (2222, None), (8080, PROBE_SOURCE_V4)):
            app = tcp_listener(server.path, port, "::")
            with entered(client.path):
                s = socket.socket()
            if src:
                s.bind((src, 0))
            s.settimeout(2)
            with app, s:
                s.connect((server.ip4, port))
                assert accepted_by(app) is not None, (port, src)
        assert accepted_by(proxy, 0.2) is None


def test_no_registered_listener_refuses_instead_of_bypassing(
        enrolled: tuple[Node, Node], loader: Loader) -> None:
    client, server = enrolled
    before = loader.stats()["inbound_no_listener"]
    app = tcp_listener(server.path, 8080, "::")
    with app:
        with pytest.raises(ConnectionRefusedError):
            tcp_connect(client.path, server.ip4, 8080)
        assert accepted_by(app, 0.2) is None
    assert loader.stats()["inbound_no_listener"] == before + 1
    # the kernel drops a closed listener from the sockhash: registration does not outlive it
    proxy = proxy_listener(loader, server)
    cookie = struct.unpack("=Q", proxy.getsockopt(socket.SOL_SOCKET, SO_NETNS_COOKIE, 8))[0]
    assert cookie in loader.listener_cookies()
    proxy.close()
    assert cookie not in loader.listener_cookies()
