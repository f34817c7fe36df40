"""The redirection does what the spec says, proven with real sockets in real namespaces."""

from __future__ import annotations

import subprocess

import pytest

from agent.redirect import backend as engine
from agent.redirect.backend import RuleBackend
from agent.redirect.spec import RedirectSpec
from core.netns import entered
from core.ports import PROXY_MARK
from proxy.origdst import original_dst
from testing.lab import Node
from tests.kernel.netutil import accepted_by, tcp_connect, tcp_listener, udp_socket


def test_outbound_tcp_lands_on_15001_with_original_dst(pods: tuple[Node, Node],
                                                       impl: RuleBackend) -> None:
    client, server = pods
    engine.apply(client.path, RedirectSpec(), impl)
    proxy = tcp_listener(client.path, 15001, "0.0.0.0")
    app = tcp_listener(server.path, 80)
    with tcp_connect(client.path, server.ip4, 80):
        conn = accepted_by(proxy)
        assert conn is not None, "connection was not redirected to 15001"
        assert original_dst(conn) == (server.ip4, 80)
        assert accepted_by(app, 0.2) is None, "the server saw the captured connection"


def test_proxy_marked_socket_goes_direct(pods: tuple[Node, Node], impl: RuleBackend) -> None:
    client, server = pods
    engine.apply(client.path, RedirectSpec(), impl)
    proxy = tcp_listener(client.path, 15001, "0.0.0.0")
    app = tcp_listener(server.path, 80)
    with tcp_connect(client.path, server.ip4, 80, mark=PROXY_MARK):
        assert accepted_by(app) is not None
        assert accepted_by(proxy, 0.2) is None


def test_inbound_lands_on_15006_and_tunnel_port_passes(pods: tuple[Node, Node],
                                                      impl: RuleBackend) -> None:
    client, server = pods
    engine.apply(client.path, RedirectSpec(), impl)
    inbound = tcp_listener(client.path, 15006)
    tunnel = tcp_listener(client.path, 15008)
    with tcp_connect(server.path, client.ip4, 8080):
        conn = accepted_by(inbound)
        assert conn is not None, "inbound connection was not redirected to 15006"
        assert original_dst(conn) == (client.ip4, 8080)
    with tcp_connect(server.path, client.ip4, 15008):
        assert accepted_by(tunnel) is not None
        assert accepted_by(inbound, 0.2) is None


def test_ingress_mode_leaves_inbound_alone(pods: tuple[Node, Node], impl: RuleBackend) -> None:
    client, server = pods
    engine.apply(client.path, RedirectSpec(inbound_capture=False), impl)
    inbound = tcp_listener(client.path, 15006)
    app = tcp_listener(client.path, 8080)
    with tcp_connect(server.path, client.ip4, 8080):
        assert accepted_by(app) is not None
        assert accepted_by(inbound, 0.2) is None


@pytest.mark.parametrize("dns", [True, False], ids=["dns-on", "dns-off"])
def test_dns_udp_and_tcp(pods: tuple[Node, Node], impl: RuleBackend, dns: bool) -> None:
    client, server = pods
    engine.apply(client.path, RedirectSpec(dns_capture=dns), impl)
    proxy_udp = udp_socket(client.path, 15053)
    proxy_tcp = tcp_listener(client.path, 15053)
    real_udp = udp_socket(server.path, 53)
    real_tcp = tcp_listener(server.path, 53)
    with udp_socket(client.path) as q:
        q.sendto(b"query", (server.ip4, 53))
        want, other = (proxy_udp, real_udp) if dns else (real_udp, proxy_udp)
        assert want.recvfrom(64)[0] == b"query"
        other.settimeout(0.2)
        with pytest.raises(TimeoutError):
            other.recvfrom(64)
    # Without DNS capture, TCP/53 is ordinary outbound TCP: it goes to 15001, not 15053.
    outbound = tcp_listener(client.path, 15001, "0.0.0.0")
    with tcp_connect(client.path, server.ip4, 53):
        want_t, other_t = (proxy_tcp, outbound) if dns else (outbound, proxy_tcp)
        assert accepted_by(want_t) is not None
        assert accepted_by(other_t, 0.2) is None
        assert accepted_by(real_tcp, 0.2) is None


def test_excluded_ports_and_cidrs_are_not_captured(pods: tuple[Node, Node],
                                                   impl: RuleBackend) -> None:
    client, server = pods
    spec = RedirectSpec(exclude_outbound_ports=(9000,), exclude_inbound_ports=(8081,),
                        exclude_outbound_cidrs=(f"{server.ip4}/32",))
    engine.apply(client.path, spec, impl)
    outbound = tcp_listener(client.path, 15001, "0.0.0.0")
    inbound = tcp_listener(client.path, 15006)
    srv_9000 = tcp_listener(server.path, 9000)
    srv_80 = tcp_listener(server.path, 80)
    app_8081 = tcp_listener(client.path, 8081)
    with tcp_connect(client.path, server.ip4, 9000):
        assert accepted_by(srv_9000) is not None
    with tcp_connect(client.path, server.ip4, 80):  # excluded by CIDR
        assert accepted_by(srv_80) is not None
    with tcp_connect(server.path, client.ip4, 8081):
        assert accepted_by(app_8081) is not None
    assert accepted_by(outbound, 0.2) is None
    assert accepted_by(inbound, 0.2) is None


def test_loopback_is_not_captured(pods: tuple[Node, Node], impl: RuleBackend) -> None:
    client, _ = pods
    engine.apply(client.path, RedirectSpec(), impl)
    outbound = tcp_listener(client.path, 15001, "0.0.0.0")
    local = tcp_listener(client.path, 7000, "0.0.0.0")
    for ip in ("127.0.0.1", client.ip4):  # own pod IP also travels over lo
        with tcp_connect(client.path, ip, 7000):
            assert accepted_by(local) is not None, ip
    assert accepted_by(outbound, 0.2) is None


def test_ipv6_behaves_like_ipv4_in_dual_stack(pods: tuple[Node, Node],
                                              impl: RuleBackend) -> None:
    client, server = pods
    engine.apply(client.path, RedirectSpec(ipv6=True), impl)
    outbound = tcp_listener(client.path, 15001, "::")
    inbound = tcp_listener(client.path, 15006, "::")
    app = tcp_listener(server.path, 80)
    with tcp_connect(client.path, server.ip6, 80):
        conn = accepted_by(outbound)
        assert conn is not None
        assert original_dst(conn) == (server.ip6, 80)
    with tcp_connect(client.path, server.ip6, 80, mark=PROXY_MARK):
        assert accepted_by(app) is not None
    with tcp_connect(server.path, client.ip6, 8080):
        conn = accepted_by(inbound)
        assert conn is not None
        assert original_dst(conn) == (client.ip6, 8080)
    with udp_socket(client.path, 0, "::") as q, udp_socket(client.path, 15053, "::") as dns:
        q.sendto(b"q6", (server.ip6, 53))
        assert dns.recvfrom(64)[0] == b"q6"


def test_ipv4_only_spec_leaves_ipv6_alone(pods: tuple[Node, Node], impl: RuleBackend) -> None:
    client, server = pods
    engine.apply(client.path, RedirectSpec(ipv6=False), impl)
    outbound = tcp_listener(client.path, 15001, "::")
    app = tcp_listener(server.path, 80)
    with tcp_connect(client.path, server.ip6, 80):
        assert accepted_by(app) is not None
    assert accepted_by(outbound, 0.2) is None


def test_reply_to_proxy_marked_inbound_routes_via_table_100(pods: tuple[Node, Node],
                                                            impl: RuleBackend) -> None:
    """The connmark path: a marked packet arriving sets connmark; replies take table 100."""
    client, _ = pods
    engine.apply(client.path, RedirectSpec(), impl)
    with entered(client.path):
        out = subprocess.run(["ip", "route", "get", "198.18.0.2", "mark", "0x111"],
                             capture_output=True, text=True, check=True).stdout
    assert out.startswith("local ") and "dev lo" in out and "table 100" in out, out
