"""Who reset a relayed connection (proxy/forward.py's Traffic.reset_by), in both relay paths
(splice and copy), on real loopback TCP sockets: outlier detection counts only the upstream's
own resets, so a client resetting its connections must never be read as the upstream's.

    client c ──▶ a [relay] b ──▶ u upstream app

A reset is a real RST: close() with SO_LINGER 0."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass

import pytest

from proxy.forward import Traffic, relay

Scenario = Callable[["Pair"], Awaitable[None]]


def rst(sock: socket.socket) -> None:
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


@dataclass
class Pair:
    """The client's and the upstream app's ends of one relayed connection."""

    c: socket.socket
    u: socket.socket

    async def recv(self, sock: socket.socket) -> bytes:
        return await asyncio.wait_for(asyncio.get_running_loop().sock_recv(sock, 4096), 5)

    async def send(self, sock: socket.socket, data: bytes) -> None:
        await asyncio.get_running_loop().sock_sendall(sock, data)


def listener() -> socket.socket:
    s = socket.create_server(("127.0.0.1", 0))
    s.setblocking(False)
    return s


async def connected() -> tuple[socket.socket, socket.socket]:
    """A connected TCP pair on loopback: (the connecting end, the accepted end)."""
    loop = asyncio.get_running_loop()
    with listener() as lst:
        out = socket.socket()
        out.setblocking(False)
        await loop.sock_connect(out, lst.getsockname())
        got, _ = await loop.sock_accept(lst)
    got.setblocking(False)
    return out, got


async def relayed(zero_copy: bool, scenario: Scenario) -> Traffic:
    """Relay c ↔ u through a ↔ b, run `scenario` on (c, u), and return what the relay
    recorded once it ended."""
    c, a = await connected()
    b, u = await connected()
    t = Traffic()
    task = asyncio.create_task(relay(a, b, t, zero_copy=zero_copy))
    try:
        await scenario(Pair(c, u))
        await asyncio.wait_for(task, 5)
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        c.close()
        u.close()
    return t


@pytest.fixture(params=[True, False], ids=["splice", "copy"])
def zero_copy(request: pytest.FixtureRequest) -> Iterator[bool]:
    yield bool(request.param)


def run(coro: Awaitable[Traffic]) -> Traffic:
    async def go() -> Traffic:
        return await coro
    return asyncio.run(go())


def test_a_client_reset_is_the_clients_and_the_upstream_is_reset_for_it(
        zero_copy: bool) -> None:
    async def scenario(p: Pair) -> None:
        await p.send(p.c, b"hello")
        assert await p.recv(p.u) == b"hello"
        rst(p.c)
        with pytest.raises(ConnectionResetError):  # told with a reset, as the client did
            while await p.recv(p.u):
                pass

    t = run(relayed(zero_copy, scenario))
    assert (t.reset, t.reset_by, t.upstream_failed) == (True, "client", False)


def test_a_client_reset_while_the_upstream_streams_is_still_the_clients(
        zero_copy: bool) -> None:
    """The upstream keeps writing after the client's RST: the relay's writes to the client
    fail too, and none of that may be put on the upstream."""
    async def scenario(p: Pair) -> None:
        async def stream() -> None:
            with contextlib.suppress(OSError):
                for _ in range(2000):
                    await p.send(p.u, b"x" * 65536)
        writer = asyncio.create_task(stream())
        assert await p.recv(p.c)
        rst(p.c)
        await asyncio.wait_for(writer, 5)

    t = run(relayed(zero_copy, scenario))
    assert (t.reset, t.reset_by, t.upstream_failed) == (True, "client", False)


def test_an_upstream_reset_is_the_upstreams_failure(zero_copy: bool) -> None:
    async def scenario(p: Pair) -> None:
        await p.send(p.c, b"hello")
        assert await p.recv(p.u) == b"hello"
        rst(p.u)
        with pytest.raises(ConnectionResetError):
            while await p.recv(p.c):
                pass

    t = run(relayed(zero_copy, scenario))
    assert (t.reset, t.reset_by, t.upstream_failed) == (True, "upstream", True)


def test_an_upstream_reset_after_the_clients_half_close_is_the_upstreams(
        zero_copy: bool) -> None:
    async def scenario(p: Pair) -> None:
        p.c.shutdown(socket.SHUT_WR)
        assert await p.recv(p.u) == b""
        rst(p.u)
        with pytest.raises(ConnectionResetError):
            while await p.recv(p.c):
                pass

    t = run(relayed(zero_copy, scenario))
    assert (t.reset_by, t.upstream_failed) == ("upstream", True)


def test_bytes_sent_after_the_upstream_closed_are_not_its_failure(zero_copy: bool) -> None:
    """The upstream answers and closes (FIN); the client keeps sending, so the upstream's
    kernel answers with RST. Any client could do that to any server that closes first: the
    reset is the upstream's, but not a failure of it."""
    async def scenario(p: Pair) -> None:
        await p.send(p.u, b"bye")
        p.u.close()
        assert await p.recv(p.c) == b"bye"
        assert await p.recv(p.c) == b""  # the upstream's FIN, forwarded
        with contextlib.suppress(OSError):
            for _ in range(200):  # until a write to the closed upstream fails
                await p.send(p.c, b"more")
                await asyncio.sleep(0.01)

    t = run(relayed(zero_copy, scenario))
    assert (t.reset, t.reset_by, t.upstream_ended) == (True, "upstream", True)
    assert not t.upstream_failed


def test_a_clean_close_both_ways_is_no_reset(zero_copy: bool) -> None:
    async def scenario(p: Pair) -> None:
        await p.send(p.c, b"ping")
        p.c.shutdown(socket.SHUT_WR)
        assert await p.recv(p.u) == b"ping"
        assert await p.recv(p.u) == b""
        await p.send(p.u, b"pong")
        p.u.shutdown(socket.SHUT_WR)
        assert await p.recv(p.c) == b"pong"
        assert await p.recv(p.c) == b""

    t = run(relayed(zero_copy, scenario))
    assert (t.reset, t.reset_by, t.upstream_failed) == (False, "", False)
    assert (t.a_to_b, t.b_to_a) == (4, 4)


def test_cancelled_by_the_proxy_is_neither_sides(zero_copy: bool) -> None:
    """The idle timeout (or the pod going away) cancels the relay: both sides are reset,
    and the reset is the proxy's."""
    async def go() -> Traffic:
        c, a = await connected()
        b, u = await connected()
        t = Traffic()
        task = asyncio.create_task(relay(a, b, t, zero_copy=zero_copy))
        try:
            await asyncio.sleep(0.05)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            loop = asyncio.get_running_loop()
            for sock in (c, u):
                with pytest.raises(ConnectionResetError):
                    await asyncio.wait_for(loop.sock_recv(sock, 10), 5)
        finally:
            c.close()
            u.close()
        return t

    t = asyncio.run(go())
    assert (t.reset, t.reset_by, t.upstream_failed) == (True, "proxy", False)
