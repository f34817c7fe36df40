"""The eBPF backend redirects outbound IPv4 TCP like iptables does, proven with real sockets.

Every proof comes from the kernel: a listener accepted (or did not accept) the connection,
getsockopt(SO_ORIGINAL_DST) answered, map entry counts read back from the kernel.

The programs are attached to the cgroup v2 root for the duration of this module only, with
their links and maps pinned in a private bpffs mounted for the test; teardown detaches the
links (BPF_LINK_DETACH), unpins and unmounts, also when tests fail.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator

import pytest

from agent.redirect import backend as engine
from agent.redirect.ebpf.backend import POD_KEY, EbpfBackend
from agent.redirect.ebpf.loader import Loader, LoadError, PodOpts, netns_cookie
from agent.redirect.spec import RedirectSpec
from core.ports import PROXY_MARK
from proxy.origdst import original_dst
from testing.lab import Lab, Node
from tests.ebpf.netcheck import redirected
from tests.kernel.netutil import accepted_by, tcp_connect, tcp_listener

pytestmark = pytest.mark.kernel


@pytest.fixture
def enrolled(pods: tuple[Node, Node], loader: Loader) -> Iterator[tuple[Node, Node]]:
    client, _ = pods
    loader.enroll(client.path, RedirectSpec())
    try:
        yield pods
    finally:
        loader.unenroll(client.path)


def test_outbound_tcp_lands_on_15001_with_original_dst(enrolled: tuple[Node, Node],
                                                       loader: Loader) -> None:
    client, server = enrolled
    before = loader.map_counts()
    proxy = tcp_listener(client.path, 15001, "127.0.0.1")
    app = tcp_listener(server.path, 80)
    with proxy, app, tcp_connect(client.path, server.ip4, 80) as c:
        conn = accepted_by(proxy)
        assert conn is not None, "connection was not redirected to 15001"
        with conn:
            assert original_dst(conn) == (server.ip4, 80)
            assert conn.getpeername() == c.getsockname()
            # the app's own view: its peer is where it connected (getpeername4)
            assert c.getpeername() == (server.ip4, 80)
            assert loader.map_counts()["pair_origin"] == before["pair_origin"] + 1
            assert accepted_by(app, 0.2) is None, "the server saw the captured connection"
            conn.sendall(b"ping")
            assert c.recv(4) == b"ping"
    # the accepted socket's close removed the hand-over entry; the cookie entry was moved
    assert loader.map_counts() == before


def test_dual_stack_proxy_listener_gets_original_dst(enrolled: tuple[Node, Node],
                                                      loader: Loader) -> None:
    client, server = enrolled
    before = loader.map_counts()
    proxy = tcp_listener(client.path, 15001, "::")
    with proxy, tcp_connect(client.path, server.ip4, 443):
        conn = accepted_by(proxy)
        assert conn is not None, "connection was not redirected to 15001"
        with conn:
            assert conn.family == socket.AF_INET6
            assert original_dst(conn) == (server.ip4, 443)
    assert loader.map_counts() == before


def test_proxy_marked_socket_goes_direct(enrolled: tuple[Node, Node]) -> None:
    client, server = enrolled
    assert not redirected(client, server, server.ip4, 80, mark=PROXY_MARK)
    # only the masked bits count, like `-m mark ! --mark 0x539/0xfff`
    assert not redirected(client, server, server.ip4, 80, mark=0x7000 | PROXY_MARK)
    assert redirected(client, server, server.ip4, 80, mark=0x538)


def test_loopback_is_notredirected(enrolled: tuple[Node, Node]) -> None:
    client, _ = enrolled
    proxy = tcp_listener(client.path, 15001, "127.0.0.1")
    local = tcp_listener(client.path, 8080, "127.0.0.1")
    with proxy, local, tcp_connect(client.path, "127.0.0.1", 8080):
        conn = accepted_by(local)
        assert conn is not None
        # not ours: the getsockopt program leaves the kernel's error in place
        with conn, pytest.raises(OSError):
            original_dst(conn)
        assert accepted_by(proxy, 0.2) is None


def test_excluded_port_and_cidr_are_notredirected(pods: tuple[Node, Node],
                                                   loader: Loader) -> None:
    client, server = pods
    loader.enroll(client.path, RedirectSpec(exclude_outbound_ports=(81, 9000)))
    try:
        assert not redirected(client, server, server.ip4, 81)
        assert redirected(client, server, server.ip4, 80)
        loader.enroll(client.path, RedirectSpec(exclude_outbound_cidrs=(f"{server.ip4}/32",)))
        assert not redirected(client, server, server.ip4, 80)
        loader.enroll(client.path, RedirectSpec(exclude_outbound_cidrs=("198.19.0.0/16",)))
        assert redirected(client, server, server.ip4, 80)
    finally:
        loader.unenroll(client.path)


def test_non_enrolled_netns_is_not_affected(enrolled: tuple[Node, Node]) -> None:
    client, server = enrolled
    # the server netns is not enrolled: it connects to the client directly, even with a
    # listener on its own 127.0.0.1:15001
    assert not redirected(server, client, client.ip4, 80)


def test_unenroll_restores_direct_connectivity(pods: tuple[Node, Node],
                                               loader: Loader) -> None:
    client, server = pods
    loader.enroll(client.path, RedirectSpec())
    assert redirected(client, server, server.ip4, 80)
    assert loader.unenroll(client.path)
    assert not redirected(client, server, server.ip4, 80)
    assert not loader.unenroll(client.path)


def test_1000_enroll_cycles_leave_map_counts(pods: tuple[Node, Node], loader: Loader) -> None:
    """Every enroll writes the pod's options and addresses and attaches its sk_lookup link;
    every removal takes all of it back: after 1000 cycles the maps and pins are as before."""
    client, server = pods
    before = loader.map_counts()
    cookie = netns_cookie(client.path)
    spec = RedirectSpec(exclude_outbound_ports=(1, 2, 3), exclude_inbound_ports=(22,))
    opts = PodOpts.from_spec(spec)
    for _ in range(1000):
        loader.enroll(client.path, spec, addrs=(client.ip4, client.ip6))
        assert loader.read_cookie(cookie) == opts
        assert loader.netns_linked(cookie)
        assert loader.unenroll_cookie(cookie)
    assert loader.map_counts() == before
    assert os.listdir(loader.netns_dir) == []
    assert not redirected(client, server, server.ip4, 80)


def test_engine_apply_diff_remove(pods: tuple[Node, Node], loader: Loader) -> None:
    client, server = pods
    impl = EbpfBackend(loader)
    spec = RedirectSpec(exclude_outbound_ports=(81,), exclude_outbound_cidrs=("10.0.0.0/8",))
    engine.apply(client.path, spec, impl)
    try:
        assert engine.diff(client.path, spec, impl).in_sync
        assert redirected(client, server, server.ip4, 80)
        drift = engine.diff(client.path, spec.with_(exclude_outbound_ports=(82,)), impl)
        assert not drift.in_sync
        live = engine.read(client.path, spec, impl).rules.texts(POD_KEY)
        assert live == [PodOpts.from_spec(spec).describe()]
    finally:
        removed = engine.remove(client.path, spec, impl)
    assert any("pods map entry" in r for r in removed)
    assert not engine.read(client.path, spec, impl).rules
    assert not redirected(client, server, server.ip4, 80)


def test_spec_beyond_map_capacity_is_refused(pods: tuple[Node, Node], loader: Loader) -> None:
    client, _ = pods
    too_many = RedirectSpec(exclude_outbound_ports=tuple(range(1000, 1020)))
    with pytest.raises(engine.RedirectError, match="at most 16"):
        engine.apply(client.path, too_many, EbpfBackend(loader))
    assert loader.read_cookie(netns_cookie(client.path)) is None


def test_restart_reuses_pinned_links_and_maps(enrolled: tuple[Node, Node],
                                              loader: Loader) -> None:
    client, server = enrolled
    first = loader.status()
    again = Loader(pin_dir=loader.pin_dir)
    try:
        again.load()  # a restarted agent: same links (program swapped in place), same maps
        second = again.status()
        assert [p.get("link_id") for p in second["programs"]] == \
               [p.get("link_id") for p in first["programs"]]
        # the pod's sk_lookup link too: same link, same netns, the new program swapped in
        same = ("link_id", "netns_ino", "attached")
        assert [{k: n[k] for k in same} for n in second["netns_links"]] == \
               [{k: n[k] for k in same} for n in first["netns_links"]] != []
        assert {n["prog_id"] for n in second["netns_links"]}.isdisjoint(
            {n["prog_id"] for n in first["netns_links"]})
        assert [m["id"] for m in second["maps"]] == [m["id"] for m in first["maps"]]
        assert all(p["attached"] for p in second["programs"])
        assert again.read_cookie(netns_cookie(client.path)) is not None
        assert redirected(client, server, server.ip4, 80)
    finally:
        again.close()  # drop fds only: the pinned links stay attached
    assert redirected(client, server, server.ip4, 80)


def test_destroy_detaches_from_the_cgroup(bpffs: str) -> None:
    with Lab("e") as lab:
        client, server = lab.node("client"), lab.node("server")
        lab.link(client, server)
        own = Loader(pin_dir=os.path.join(bpffs, f"meshnode-test-{os.getpid()}-destroy"))
        try:
            own.load()
            own.enroll(client.path, RedirectSpec(outbound_port=15001))
            assert redirected(client, server, server.ip4, 80)
        finally:
            own.destroy()
        assert not os.path.exists(own.pin_dir)
        assert not redirected(client, server, server.ip4, 80)


def test_load_error_names_the_cause(tmp_path: object) -> None:
    with pytest.raises(LoadError, match="bpffs is not mounted"):
        Loader(pin_dir=os.path.join(str(tmp_path), "meshnode")).load()


def test_netns_cookie_differs_per_netns(pods: tuple[Node, Node]) -> None:
    client, server = pods
    ours = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    with ours:
        assert len({netns_cookie(client.path), netns_cookie(server.path),
                    netns_cookie()}) == 3
