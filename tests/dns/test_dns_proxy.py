"""The DNS proxy relays real queries, over UDP and TCP, to the resolver the pod asked.

Two lab namespaces: a client pod with meshnode's redirection (nftables or eBPF, DNS capture
on) and a resolver running a tiny DNS server. The client queries the resolver's IP:53; the rules
send that to the proxy on 15053, which must forward it to the resolver and relay the answer
so that the client sees it come from the resolver.
"""

from __future__ import annotations

import asyncio
import os
import socket
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from typing import Any

import pytest

from agent.redirect import backend as engine
from agent.redirect.spec import RedirectSpec
from core.netns import entered
from core.ports import DNS_PORT, PROXY_MARK
from proxy import bpf
from proxy.inpod.dns import DnsProxy, conntrack_original_dst
from proxy.sockets import listener_in
from testing.lab import Lab, Node
from tests.dns.resolver import ANSWER_IP, Resolver, answer_ip, build_query, tcp_ask, udp_ask
from tests.kernel.netutil import tcp_connect, udp_socket

pytestmark = pytest.mark.kernel

NOBODY = "198.18.0.99"  # on the lab subnet, but no host answers ARP for it


@pytest.fixture(params=["nftables", "ebpf"])
def backend(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """The client pod's redirection: netfilter (conntrack knows the resolver) or eBPF (its
    map does, and its recvmsg hook makes the answer come from the resolver)."""
    if request.param == "ebpf":
        monkeypatch.setenv("MESHNODE_BPF_PIN_DIR", request.getfixturevalue("ebpf_pin_dir"))
    return str(request.param)


@pytest.fixture
def dnslab(backend: str, request: pytest.FixtureRequest
           ) -> Iterator[tuple[Node, Node, Resolver]]:
    """Client pod (redirected) and resolver netns; all deleted even if the test fails."""
    with Lab("dns") as lab:
        client, resolver = lab.node("client"), lab.node("resolver")
        lab.link(client, resolver)
        impl = (request.getfixturevalue("ebpf_impl") if backend == "ebpf"
                else engine.make_backend(backend))
        engine.apply(client.path, RedirectSpec(), impl)
        with Resolver(resolver.path) as server:
            yield client, resolver, server


@asynccontextmanager
async def running_proxy(ns_path: str, **kw: Any) -> AsyncIterator[DnsProxy]:
    """A started DnsProxy for the pod, made the way the proxy makes one."""
    loop = asyncio.get_running_loop()
    fd = os.open(ns_path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        udp = await loop.run_in_executor(None, listener_in, fd, DNS_PORT, socket.SOCK_DGRAM)
        tcp = await loop.run_in_executor(None, listener_in, fd, DNS_PORT)
        kw.setdefault("bpf_pin_dir", os.environ.get("MESHNODE_BPF_PIN_DIR", ""))
        proxy = DnsProxy(fd, udp, tcp, PROXY_MARK, **kw)
    finally:
        os.close(fd)  # the proxy keeps its own dup
    await proxy.start()
    try:
        yield proxy
    finally:
        await proxy.stop()


async def eventually(cond: Callable[[], bool], timeout: float = 3) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.02)


def record_loop_errors() -> list[dict[str, Any]]:
    errors: list[dict[str, Any]] = []
    asyncio.get_running_loop().set_exception_handler(lambda _loop, ctx: errors.append(ctx))
    return errors


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def test_udp_query_is_answered_by_the_original_resolver(
        dnslab: tuple[Node, Node, Resolver], backend: str) -> None:
    client, resolver, server = dnslab

    async def main() -> None:
        errors = record_loop_errors()
        async with running_proxy(client.path) as proxy:
            with udp_socket(client.path) as q:
                for qid in (0x1234, 0x1235):  # the second one hits the flow cache
                    got = await asyncio.to_thread(udp_ask, q, (resolver.ip4, 53),
                                                  build_query("svc.example.", qid))
                    assert got is not None, "no answer over UDP"
                    answer, peer = got
                    assert answer_ip(qid, answer) == ANSWER_IP
                    # conntrack un-NATed our reply (or the eBPF recvmsg hook rewrote
                    # its source): it looks like the resolver's own.
                    assert peer == (resolver.ip4, 53)
            assert (proxy.udp.queries, proxy.udp.answered, proxy.udp.failed) == (2, 2, 0)
            # conntrack answers are cached; the eBPF map is asked each time (it is cheap)
            assert proxy.config_dump()["cached_flows"] == (0 if backend == "ebpf" else 1)
        # The resolver saw the proxy's query, sent from inside the pod's netns.
        assert server.udp_queries == 2
        assert set(server.udp_peers) == {client.ip4}
        assert errors == []

    asyncio.run(main())


def test_tcp_query_is_answered_by_the_original_resolver(
        dnslab: tuple[Node, Node, Resolver]) -> None:
    client, resolver, server = dnslab

    def ask() -> tuple[bytes, tuple[str, int]]:
        with tcp_connect(client.path, resolver.ip4, 53) as s:
            answer = tcp_ask(s, build_query("svc.example.", 0x4242))
            return answer, s.getpeername()

    async def main() -> None:
        errors = record_loop_errors()
        async with running_proxy(client.path) as proxy:
            answer, peer = await asyncio.to_thread(ask)
            assert answer_ip(0x4242, answer) == ANSWER_IP
            assert peer == (resolver.ip4, 53)
            await eventually(lambda: proxy.tcp.answered == 1)
            assert (proxy.tcp.queries, proxy.tcp.failed) == (1, 0)
            assert proxy.udp.queries == 0
        assert server.tcp_queries == 1
        assert errors == []

    asyncio.run(main())


def test_unreachable_upstream_gets_no_answer_and_no_exception(
        dnslab: tuple[Node, Node, Resolver]) -> None:
    client, _resolver, server = dnslab

    def ask_tcp() -> bytes | None:
        with tcp_connect(client.path, NOBODY, 53) as s:
            try:
                return tcp_ask(s, build_query("svc.example.", 7))
            except (ConnectionError, TimeoutError):
                return None

    async def main() -> None:
        errors = record_loop_errors()
        async with running_proxy(client.path, timeout=0.4) as proxy:
            with udp_socket(client.path) as q:
                got = await asyncio.to_thread(udp_ask, q, (NOBODY, 53),
                                              build_query("svc.example.", 6), 1.0)
            assert got is None
            await eventually(lambda: proxy.udp.failed == 1)
            assert await asyncio.to_thread(ask_tcp) is None
            await eventually(lambda: proxy.tcp.failed == 1)
            assert proxy.udp.answered == proxy.tcp.answered == 0
        assert server.udp_queries == server.tcp_queries == 0
        assert errors == []

    asyncio.run(main())


def test_stop_leaves_no_open_fds(dnslab: tuple[Node, Node, Resolver]) -> None:
    client, resolver, _server = dnslab

    async def cycle(measure: bool) -> None:
        async with running_proxy(client.path, timeout=5) as proxy:
            for qid in range(10):  # a new flow each time: a conntrack lookup each time
                with udp_socket(client.path) as q:
                    assert await asyncio.to_thread(udp_ask, q, (resolver.ip4, 53),
                                                   build_query("a.example.", qid)) is not None
            with udp_socket(client.path) as q:
                # Left pending on purpose: stop() must close its upstream socket.
                q.sendto(build_query("b.example.", 2), (NOBODY, 53))
            stuck = tcp_connect(client.path, NOBODY, 53)
            await eventually(lambda: proxy.udp.queries == 11 and proxy.tcp.queries == 1)
        stuck.close()

    def touch() -> None:
        with entered(client.path):
            time.sleep(0.05)

    async def main() -> None:
        # Executor threads (each keeps its own netns fd open for its life) and the loop are
        # not the proxy's: start every executor thread first, and run one full cycle; a
        # second cycle must leave nothing behind.
        loop = asyncio.get_running_loop()
        await asyncio.gather(*(loop.run_in_executor(None, touch) for _ in range(64)))
        await cycle(False)
        before = open_fds()
        await cycle(True)
        assert open_fds() == before

    asyncio.run(main())


def test_udp_falls_back_when_conntrack_has_no_answer(dnslab: tuple[Node, Node, Resolver],
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    client, resolver, server = dnslab
    monkeypatch.setattr("proxy.inpod.dns.conntrack_original_dst", lambda *_a: None)
    monkeypatch.setattr("proxy.bpf.dns_origin", lambda *_a: None)

    async def main() -> None:
        async with running_proxy(client.path, fallback=[(resolver.ip4, 53)]) as proxy:
            with udp_socket(client.path) as q:
                got = await asyncio.to_thread(udp_ask, q, (NOBODY, 53),
                                              build_query("svc.example.", 9))
            assert got is not None, "the fallback resolver's answer did not arrive"
            assert answer_ip(9, got[0]) == ANSWER_IP
            assert got[1] == (NOBODY, 53)  # still from where the client asked
            assert proxy.udp.answered == 1
        assert server.udp_queries == 1

    asyncio.run(main())


@pytest.mark.parametrize("local", ["127.0.0.1", None], ids=["reply-tuple-get", "orig-dump"])
def test_the_kernel_names_the_resolver_a_udp_query_was_sent_to(
        dnslab: tuple[Node, Node, Resolver], backend: str, local: str | None) -> None:
    """conntrack (netfilter backends) or the eBPF map, found through the app socket's
    cookie (eBPF backend): both name the resolver, and nothing for an unknown client."""
    client, resolver, _server = dnslab
    pin_dir = os.environ.get("MESHNODE_BPF_PIN_DIR", "")
    with udp_socket(client.path, DNS_PORT) as proxy, udp_socket(client.path) as q:
        q.sendto(build_query("x.example.", 1), (resolver.ip4, 53))
        _, peer = proxy.recvfrom(512)
        fd = os.open(client.path, os.O_RDONLY | os.O_CLOEXEC)
        try:
            if backend == "ebpf":
                here = (local or "127.0.0.1", DNS_PORT)
                found = (bpf.dns_origin(pin_dir, fd, peer, here), 1)
                unknown = bpf.dns_origin(pin_dir, fd, (peer[0], peer[1] ^ 1), here)
            else:
                found = conntrack_original_dst(fd, peer[0], peer[1], DNS_PORT, local)
                unknown = conntrack_original_dst(fd, peer[0], peer[1] ^ 1, DNS_PORT, local)
        finally:
            os.close(fd)
    assert found is not None
    assert found[0] == (resolver.ip4, 53)
    assert 0 < found[1] <= 180
    assert unknown is None
