"""A two-proxy mesh on localhost: an app client → outbound listener → HboneClient ==mTLS==>
HboneServer → app server. Everything is real TCP and real TLS; only the pod netns are not."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import Awaitable, Callable, Coroutine, Iterator
from typing import Any

import pytest
import uvloop

from core.mesh import model
from core.spiffe import SpiffeId, parse
from proxy import authz
from proxy.forward import Traffic
from proxy.hbone import HboneClient, HboneServer
from proxy.hbone.server import InboundStream
from proxy.identity.certs import CertStore
from tests.hbone.pki import CA

CLIENT_ID = parse("spiffe://cluster.local/ns/a/sa/client")
SERVER_ID = parse("spiffe://cluster.local/ns/b/sa/server")


@pytest.fixture(scope="session")
def ca() -> CA:
    return CA.new()


@pytest.fixture
def run() -> Iterator[Callable[[Coroutine[Any, Any, Any]], Any]]:
    """Run a test body on uvloop with a deadline: a hang becomes a failure, not a stall."""
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as r:
        yield lambda coro, timeout=30.0: r.run(asyncio.wait_for(coro, timeout))


def _listener() -> socket.socket:
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("127.0.0.1", 0))
    s.listen(128)
    s.setblocking(False)
    return s


async def tcp_connect(addr: tuple[str, int]) -> socket.socket:
    s = socket.socket()
    s.setblocking(False)
    try:
        await asyncio.get_running_loop().sock_connect(s, addr)
    except BaseException:
        s.close()
        raise
    return s


AppHandler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


class Mesh:
    """Started inside the test's loop. `app` is what the destination app does per connection;
    `decide` is the inbound authorization."""

    def __init__(self, ca: CA, app: AppHandler) -> None:
        self.ca = ca
        self.client_certs, self.server_certs = CertStore(), CertStore()
        self.client_certs.put(ca.leaf(str(CLIENT_ID)))
        self.server_certs.put(ca.leaf(str(SERVER_ID)))
        self.app_handler = app
        self.policies: list[model.Policy] = []
        self.expect: SpiffeId = SERVER_ID
        self.inbound: list[InboundStream] = []
        self.outbound_errors: list[BaseException] = []
        self.outbound_traffic: list[Traffic] = []
        self._tasks: set[asyncio.Task[Any]] = set()
        self._socks: list[socket.socket] = []

    def decide(self, peer: SpiffeId, src_ip: str, dst_ip: str, port: int) -> authz.Decision:
        import ipaddress
        conn = authz.Connection(peer, ipaddress.ip_address(src_ip), ipaddress.ip_address(dst_ip),
                                port)
        return authz.evaluate(self.policies, authz.Workload("b"), conn)

    async def start(self) -> Mesh:
        self.app = await asyncio.start_server(self.app_handler, "127.0.0.1", 0)
        self.app_addr = self.app.sockets[0].getsockname()[:2]
        self.tunnel_l, self.outbound_l = _listener(), _listener()
        self._socks += [self.tunnel_l, self.outbound_l]
        tunnel_port = self.tunnel_l.getsockname()[1]
        self.server = HboneServer(self.server_certs, SERVER_ID, self.decide,
                                  lambda src, dst: tcp_connect(dst),
                                  on_close=self.inbound.append)
        self.client = HboneClient(self.client_certs, tcp_connect, tunnel_port=tunnel_port)
        self._spawn(self._accept(self.tunnel_l, self.server.serve))
        self._spawn(self._accept(self.outbound_l, self._outbound))
        self.outbound_addr = self.outbound_l.getsockname()[:2]
        return self

    def _spawn(self, coro: Coroutine[Any, Any, Any]) -> None:
        t = asyncio.create_task(coro)
        self._tasks.add(t)
        t.add_done_callback(self._tasks.discard)

    async def _accept(self, lst: socket.socket,
                      handler: Callable[[socket.socket], Awaitable[Any]]) -> None:
        loop = asyncio.get_running_loop()
        while True:
            sock, _ = await loop.sock_accept(lst)
            sock.setblocking(False)
            self._spawn(handler(sock))

    async def _outbound(self, sock: socket.socket) -> None:
        try:
            t = await self.client.proxy(sock, CLIENT_ID, self.expect, self.app_addr)
            self.outbound_traffic.append(t)
        except Exception as exc:
            self.outbound_errors.append(exc)

    async def connect(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        """An app's connection into the mesh (what the outbound capture would hand us)."""
        return await asyncio.open_connection(*self.outbound_addr)

    async def stop(self) -> None:
        await self.client.close()
        await self.server.close()
        for t in list(self._tasks):
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self.app.close()
        for s in self._socks:
            s.close()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.app.wait_closed(), 1)


async def echo(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
    """Echo until EOF, then close (the half-close round trip)."""
    with contextlib.suppress(ConnectionResetError):  # some tests reset on purpose
        while data := await r.read(1 << 16):
            w.write(data)
            await w.drain()
    w.close()
