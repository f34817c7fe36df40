"""The eBPF backend redirects outbound IPv6 TCP (milestone 2), proven with real sockets.

An IPv6 connect from an enrolled pod (spec ipv6=True) lands on the proxy's [::1]:15001 and
getsockopt(SOL_IPV6, IP6T_SO_ORIGINAL_DST) gives back the original destination; a
dual-stack app's v4-mapped connect is captured as IPv4 whatever the ipv6 setting.
Uses the module-scoped private bpffs and loader of conftest.py.
"""

from __future__ import annotations

import functools
import socket
from collections.abc import Iterator

import pytest

from agent.redirect import backend as engine
from agent.redirect.ebpf.backend import EbpfBackend
from agent.redirect.ebpf.loader import Loader, PodOpts, netns_cookie
from agent.redirect.spec import RedirectSpec
from core.ports import PROXY_MARK
from proxy.origdst import original_dst
from testing.lab import Node
from tests.ebpf.netcheck import redirected
from tests.kernel.netutil import accepted_by, tcp_connect, tcp_listener

pytestmark = pytest.mark.kernel

V6 = RedirectSpec(ipv6=True)


@pytest.fixture
def enrolled6(pods: tuple[Node, Node], loader: Loader) -> Iterator[tuple[Node, Node]]:
    client, _ = pods
    loader.enroll(client.path, V6)
    try:
        yield pods
    finally:
        loader.unenroll(client.path)


# The proxy listens on [::1] for IPv6 (a call may still pass its own proxy_host).
redirected6 = functools.partial(redirected, proxy_host="::1")


def test_ipv6_outbound_lands_on_loopback_15001_with_original_dst(
        enrolled6: tuple[Node, Node], loader: Loader) -> None:
    client, server = enrolled6
    assert server.ip6
    before = loader.map_counts()
    proxy = tcp_listener(client.path, 15001, "::1")
    app = tcp_listener(server.path, 80, "::")
    with proxy, app, tcp_connect(client.path, server.ip6, 80) as c:
        conn = accepted_by(proxy)
        assert conn is not None, "IPv6 connection was not redirected to [::1]:15001"
        with conn:
            assert conn.family == socket.AF_INET6
            assert conn.getsockname()[0] == "::1"
            assert original_dst(conn) == (server.ip6, 80)
            assert conn.getpeername()[:2] == c.getsockname()[:2]
            assert c.getpeername()[:2] == (server.ip6, 80)  # getpeername6
            assert loader.map_counts()["pair_origin"] == before["pair_origin"] + 1
            assert accepted_by(app, 0.2) is None, "the server saw the captured connection"
            conn.sendall(b"ping")
            assert c.recv(4) == b"ping"
    assert loader.map_counts() == before


def test_ipv6_lands_on_dual_stack_listener(enrolled6: tuple[Node, Node],
                                          loader: Loader) -> None:
    client, server = enrolled6
    before = loader.map_counts()
    proxy = tcp_listener(client.path, 15001, "::")
    with proxy, tcp_connect(client.path, server.ip6, 443):
        conn = accepted_by(proxy)
        assert conn is not None
        with conn:
            assert original_dst(conn) == (server.ip6, 443)
    assert loader.map_counts() == before


def test_v4_mapped_connect_is_captured_as_ipv4(pods: tuple[Node, Node],
                                               loader: Loader) -> None:
    """A dual-stack app (AF_INET6 socket) connecting to ::ffff:a.b.c.d is IPv4 traffic:
    captured even without ipv6=True, answered at SOL_IP like conntrack would."""
    client, server = pods
    loader.enroll(client.path, RedirectSpec())
    try:
        for listen in ("127.0.0.1", "::"):
            before = loader.map_counts()
            proxy = tcp_listener(client.path, 15001, listen)
            with proxy, tcp_connect(client.path, f"::ffff:{server.ip4}", 8443) as c:
                assert c.family == socket.AF_INET6
                conn = accepted_by(proxy)
                assert conn is not None, f"v4-mapped connect not redirected ({listen})"
                assert c.getpeername()[:2] == (f"::ffff:{server.ip4}", 8443)
                with conn:
                    assert original_dst(conn) == (server.ip4, 8443)
                    if conn.family == socket.AF_INET6:
                        # asked at SOL_IPV6 it is answered v4-mapped
                        raw = conn.getsockopt(socket.IPPROTO_IPV6, 80, 28)
                        assert socket.inet_ntop(socket.AF_INET6, raw[8:24]) == \
                            f"::ffff:{server.ip4}"
            assert loader.map_counts() == before
    finally:
        loader.unenroll(client.path)


def test_ipv6_proxy_marked_socket_goes_direct(enrolled6: tuple[Node, Node]) -> None:
    client, server = enrolled6
    assert not redirected6(client, server, server.ip6, 80, mark=PROXY_MARK)
    assert not redirected6(client, server, server.ip6, 80, mark=0x7000 | PROXY_MARK)
    assert redirected6(client, server, server.ip6, 80, mark=0x538)


def test_ipv6_loopback_is_not_redirected(enrolled6: tuple[Node, Node]) -> None:
    client, _ = enrolled6
    proxy = tcp_listener(client.path, 15001, "::1")
    local = tcp_listener(client.path, 8080, "::1")
    with proxy, local, tcp_connect(client.path, "::1", 8080):
        conn = accepted_by(local)
        assert conn is not None
        with conn, pytest.raises(OSError):
            original_dst(conn)
        assert accepted_by(proxy, 0.2) is None


def test_ipv6_needs_ipv6_in_the_spec(pods: tuple[Node, Node], loader: Loader) -> None:
    client, server = pods
    loader.enroll(client.path, RedirectSpec())
    try:
        assert not redirected6(client, server, server.ip6, 80, proxy_host="::")
        assert redirected6(client, server, f"::ffff:{server.ip4}", 80, proxy_host="::")
    finally:
        loader.unenroll(client.path)


def test_ipv6_excluded_port_and_cidr(pods: tuple[Node, Node], loader: Loader) -> None:
    client, server = pods
    loader.enroll(client.path, V6.with_(exclude_outbound_ports=(81,)))
    try:
        assert not redirected6(client, server, server.ip6, 81)
        assert redirected6(client, server, server.ip6, 80)
        loader.enroll(client.path, V6.with_(exclude_outbound_cidrs=(f"{server.ip6}/128",)))
        assert not redirected6(client, server, server.ip6, 80)
        loader.enroll(client.path, V6.with_(exclude_outbound_cidrs=("fd00:6d6e::/32",)))
        assert not redirected6(client, server, server.ip6, 80)
        loader.enroll(client.path, V6.with_(exclude_outbound_cidrs=("fd01::/16", "10.0.0.0/8")))
        assert redirected6(client, server, server.ip6, 80)
    finally:
        loader.unenroll(client.path)


def test_ipv6_spec_round_trips_and_engine_diff(pods: tuple[Node, Node],
                                               loader: Loader) -> None:
    client, server = pods
    spec = V6.with_(exclude_outbound_cidrs=("fd01::/16", "10.0.0.0/8"),
                    exclude_outbound_ports=(81,))
    opts = PodOpts.from_spec(spec)
    assert opts.ipv6 and opts.cidrs6 == ("fd01::/16",) and opts.cidrs == ("10.0.0.0/8",)
    impl = EbpfBackend(loader)
    engine.apply(client.path, spec, impl)
    try:
        assert loader.read_cookie(netns_cookie(client.path)) == opts
        assert engine.diff(client.path, spec, impl).in_sync
        assert not engine.diff(client.path, spec.with_(ipv6=False), impl).in_sync
        assert redirected6(client, server, server.ip6, 80)
    finally:
        engine.remove(client.path, spec, impl)
    assert not redirected6(client, server, server.ip6, 80)


def test_too_many_ipv6_cidrs_are_refused() -> None:
    spec = V6.with_(exclude_outbound_cidrs=tuple(f"fd00:{i:x}::/32" for i in range(9)))
    with pytest.raises(ValueError, match="at most 8 IPv6"):
        PodOpts.from_spec(spec)
    # without ipv6 the IPv6 CIDRs are irrelevant, as for iptables
    assert PodOpts.from_spec(spec.with_(ipv6=False)).cidrs6 == ()
