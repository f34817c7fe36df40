"""The DNS proxy answers mesh names itself over TCP too (proxy/inpod/dnstcp.py), as over UDP.

The lab of test_dns_proxy.py: a client pod with meshnode's redirection (DNS capture on) and a
resolver netns. The client dials the resolver's IP on TCP 53; the rules send that to the
proxy on 15053. A query for a mesh name must be answered by the proxy (the resolver sees
nothing, and no connection to it is made), the other queries of the same connection must
reach the resolver and come back whole, and what a client in the pod can do to the stream
(half a message, garbage, a connection straight to 15053) must not make the proxy dial
itself, stall or stop answering.
"""

from __future__ import annotations

import asyncio
import socket
import struct
from collections.abc import Iterator

import pytest

from core.ports import DNS_PORT
from testing.lab import Lab, Node
from tests.dns.resolver import ANSWER_IP, Resolver, build_query
from tests.dns.test_dns_proxy import NOBODY, eventually, record_loop_errors, running_proxy
from tests.kernel.netutil import tcp_connect

pytestmark = pytest.mark.kernel

VIPS = {"api.external.test": ["240.240.3.7", "2001:2::307"]}
A, AAAA = 1, 28


def lookup(name: str) -> list[str] | None:
    return VIPS.get(name)


def loop_guard(upstream: tuple[str, int]) -> bool:
    """The pod proxy's guard: 15053 on loopback is the proxy itself."""
    return upstream[1] == DNS_PORT


@pytest.fixture
def dnslab() -> Iterator[tuple[Node, Node, Resolver]]:
    with Lab("dnt") as lab:
        from agent.redirect import backend as engine
        from agent.redirect.spec import RedirectSpec

        client, resolver = lab.node("client"), lab.node("resolver")
        lab.link(client, resolver)
        engine.apply(client.path, RedirectSpec(), engine.make_backend("nftables"))
        with Resolver(resolver.path) as server:
            yield client, resolver, server


def query(name: str, qid: int, qtype: int = A) -> bytes:
    return build_query(name, qid)[:-4] + struct.pack("!HH", qtype, 1)


def read_answers(s: socket.socket, n: int) -> dict[int, bytes]:
    """`n` framed messages from `s`, by message ID."""
    out: dict[int, bytes] = {}
    buf = b""
    while len(out) < n:
        while len(buf) < 2 or len(buf) < 2 + struct.unpack_from("!H", buf)[0]:
            data = s.recv(4096)
            if not data:
                raise ConnectionError(f"closed after {len(out)} answers")
            buf += data
        size = struct.unpack_from("!H", buf)[0]
        msg, buf = buf[2:2 + size], buf[2 + size:]
        out[struct.unpack_from("!H", msg)[0]] = msg
    return out


def addresses(msg: bytes) -> list[str]:
    """The A/AAAA data of an answer (one question; answers are name pointers)."""
    _qid, flags, _qd, an = struct.unpack_from("!HHHH", msg)
    assert flags & 0x8000 and flags & 0xF == 0, hex(flags)
    i = 12
    while msg[i]:
        i += msg[i] + 1
    i += 5
    out = []
    for _ in range(an):
        _ptr, rtype, _cls, _ttl, size = struct.unpack_from("!HHHIH", msg, i)
        data = msg[i + 12:i + 12 + size]
        out.append(socket.inet_ntop(socket.AF_INET if rtype == A else socket.AF_INET6, data))
        i += 12 + size
    return out


def test_a_mesh_name_is_answered_over_tcp_without_the_resolver(
        dnslab: tuple[Node, Node, Resolver]) -> None:
    client, resolver, server = dnslab

    def ask() -> dict[int, bytes]:
        with tcp_connect(client.path, resolver.ip4, 53) as s:
            s.settimeout(3)
            s.sendall(b"".join(struct.pack("!H", len(q)) + q for q in (
                query("api.external.test", 1), query("api.external.test", 2, AAAA))))
            got = read_answers(s, 2)
            s.shutdown(socket.SHUT_WR)
            assert s.recv(1) == b""  # the proxy closes once the client is done
            return got

    async def main() -> None:
        errors = record_loop_errors()
        async with running_proxy(client.path, lookup=lookup, refuse=loop_guard) as proxy:
            got = await asyncio.to_thread(ask)
            assert addresses(got[1]) == ["240.240.3.7"]
            assert addresses(got[2]) == ["2001:2::307"]
            assert got[1][2] & 0x04, "authoritative: the mesh owns its names"
            await eventually(lambda: proxy.tcp.answered == 1)
            assert proxy.local_answers == 2
            assert (proxy.tcp.queries, proxy.tcp.failed) == (1, 0)
        assert server.tcp_queries == 0
        assert errors == []

    asyncio.run(main())


def test_pipelined_mesh_and_other_names_on_one_connection(
        dnslab: tuple[Node, Node, Resolver]) -> None:
    """Mesh name, other name, mesh name, other name, sent at once: four answers, the two
    others from the resolver over one upstream connection."""
    client, resolver, server = dnslab
    names = {1: "api.external.test", 2: "svc.example", 3: "API.External.Test",
             4: "other.example"}

    def ask() -> dict[int, bytes]:
        with tcp_connect(client.path, resolver.ip4, 53) as s:
            s.settimeout(3)
            s.sendall(b"".join(struct.pack("!H", len(q)) + q
                               for q in (query(n, i) for i, n in names.items())))
            return read_answers(s, 4)

    async def main() -> None:
        errors = record_loop_errors()
        async with running_proxy(client.path, lookup=lookup, refuse=loop_guard) as proxy:
            got = await asyncio.to_thread(ask)
            assert {i: addresses(m) for i, m in got.items()} == {
                1: ["240.240.3.7"], 2: [ANSWER_IP], 3: ["240.240.3.7"], 4: [ANSWER_IP]}
            assert proxy.local_answers == 2
            await eventually(lambda: proxy.tcp.answered == 1)
        assert server.tcp_queries == 2
        assert errors == []

    asyncio.run(main())


def test_what_a_pod_can_send_to_15053_over_tcp(dnslab: tuple[Node, Node, Resolver]) -> None:
    """Straight to 127.0.0.1:15053 (the proxy would be its own resolver): closed at once,
    even before a mesh name is asked, as the loop guard wants (no answer, no fd held).
    Through capture: half a message then EOF, and a stalled half message, are dropped
    without a dial; garbage is relayed as a message, not answered; the proxy then answers
    the next client as before."""
    client, resolver, server = dnslab

    def direct() -> bytes:
        with tcp_connect(client.path, "127.0.0.1", DNS_PORT) as s:
            s.settimeout(3)
            q = query("api.external.test", 9)
            try:  # closed with our query unread: a reset, on the send or on the read
                s.sendall(struct.pack("!H", len(q)) + q)
                return s.recv(100)
            except ConnectionResetError:
                return b""

    def half_then_eof() -> bytes:
        with tcp_connect(client.path, resolver.ip4, 53) as s:
            s.settimeout(3)
            s.sendall(b"\x00\x40" + b"x" * 10)  # says 64 bytes, sends 10
            s.shutdown(socket.SHUT_WR)
            return s.recv(100)

    def stalled() -> bytes:
        with tcp_connect(client.path, resolver.ip4, 53) as s:
            s.settimeout(5)
            s.sendall(b"\x00\x40" + b"x" * 10)
            return s.recv(100)  # the proxy gives up after its idle timeout

    def garbage() -> bytes:
        with tcp_connect(client.path, NOBODY, 53) as s:  # its resolver never answers
            s.settimeout(5)
            s.sendall(b"\x00\x02xx")
            return s.recv(100)

    async def main() -> None:
        errors = record_loop_errors()
        async with running_proxy(client.path, lookup=lookup, refuse=loop_guard,
                                 timeout=1.0) as proxy:
            assert await asyncio.to_thread(direct) == b""
            assert await asyncio.to_thread(half_then_eof) == b""
            assert await asyncio.to_thread(stalled) == b""
            assert await asyncio.to_thread(garbage) == b""
            await eventually(lambda: proxy.tcp.queries == 4 and proxy.tcp.failed == 4)
            assert proxy.local_answers == 0

            def again() -> list[str]:
                with tcp_connect(client.path, resolver.ip4, 53) as s:
                    s.settimeout(3)
                    q = query("api.external.test", 11)
                    s.sendall(struct.pack("!H", len(q)) + q)
                    return addresses(read_answers(s, 1)[11])

            assert await asyncio.to_thread(again) == ["240.240.3.7"]
        assert server.tcp_queries == 0  # nothing of the above was the resolver's business
        assert errors == []

    asyncio.run(main())
