"""DNS over TCP, message by message, so that the proxy answers mesh names itself over TCP as
it does over UDP (dnsanswer.py), and relays the other queries to the pod's resolver.

Over TCP each message is a 2-byte length and the message (RFC 1035 4.2.2), and a client may
send several queries on one connection without waiting for the answers (RFC 7766 6.2.1).
Each query is answered here when it asks for a mesh name; the others go, in the order they
came, to the resolver the pod dialled, connected at the first of them (a connection that
only asks mesh names never leaves the pod). Answers go back to the client whole, one
message at a time, in the order they are ready (RFC 7766 allows answers out of order; the
message ID pairs them). A partial message when the client closes is dropped: it is no query.

Every read and write is bounded by the idle timeout, so a client that stops reading, or
sends half a message and waits, holds nothing for longer than that.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import Awaitable, Callable

from core.aio import cancel_and_wait
from proxy.inpod import dnsanswer

_READ = 65535


class FrameReader:
    """Whole DNS messages from a stream socket."""

    def __init__(self, loop: asyncio.AbstractEventLoop, sock: socket.socket) -> None:
        self._loop = loop
        self._sock = sock
        self._buf = bytearray()

    async def read(self) -> bytes | None:
        """The next message, or None at the end of the stream."""
        while True:
            if len(self._buf) >= 2:
                size = int.from_bytes(self._buf[:2], "big")
                if len(self._buf) >= 2 + size:
                    msg = bytes(self._buf[2:2 + size])
                    del self._buf[:2 + size]
                    return msg
            data = await self._loop.sock_recv(self._sock, _READ)
            if not data:
                return None
            self._buf += data


def frame(msg: bytes) -> bytes:
    return len(msg).to_bytes(2, "big") + msg


class TcpSession:
    """One client connection. `connect` dials the pod's resolver (None: it cannot be
    reached); `on_local` is called for each query answered here."""

    def __init__(self, client: socket.socket, lookup: dnsanswer.Lookup,
                 connect: Callable[[], Awaitable[socket.socket | None]],
                 on_local: Callable[[], None], timeout: float) -> None:
        self._loop = asyncio.get_running_loop()
        self._client = client
        self._lookup = lookup
        self._connect = connect
        self._on_local = on_local
        self._timeout = timeout
        self._write = asyncio.Lock()
        self.answers = 0        # messages sent back to the client

    async def run(self) -> None:
        upstream: socket.socket | None = None
        relay: asyncio.Task[None] | None = None
        reader = FrameReader(self._loop, self._client)
        try:
            while True:
                async with asyncio.timeout(self._timeout):
                    query = await reader.read()
                if query is None:
                    break
                answer = dnsanswer.answer(query, self._lookup)
                if answer is not None:
                    await self._send(answer)
                    self._on_local()
                    continue
                if upstream is None:
                    upstream = await self._connect()
                    if upstream is None:
                        # The resolver cannot be reached: end the connection, as a
                        # resolver that went away would; the client retries elsewhere.
                        break
                    relay = asyncio.create_task(self._relay(upstream), name="dns-tcp-relay")
                async with asyncio.timeout(self._timeout):
                    await self._loop.sock_sendall(upstream, frame(query))
            if upstream is not None and relay is not None:
                # The client is done asking: pass its half-close on, and wait for the
                # resolver's remaining answers (the relay ends at its EOF or idle timeout).
                with contextlib.suppress(OSError):
                    upstream.shutdown(socket.SHUT_WR)
                await asyncio.wait([relay])
        except (TimeoutError, OSError):
            pass  # an idle, reset or vanished peer ends the session
        finally:
            if relay is not None:
                await cancel_and_wait([relay])
            if upstream is not None:
                upstream.close()
            with contextlib.suppress(OSError):
                self._client.shutdown(socket.SHUT_WR)

    async def _send(self, msg: bytes) -> None:
        if len(msg) > 0xFFFF:
            return  # cannot be framed (a local answer with thousands of VIPs): no answer
        async with self._write, asyncio.timeout(self._timeout):
            await self._loop.sock_sendall(self._client, frame(msg))
        self.answers += 1

    async def _relay(self, upstream: socket.socket) -> None:
        reader = FrameReader(self._loop, upstream)
        with contextlib.suppress(TimeoutError, OSError):
            while True:
                async with asyncio.timeout(self._timeout):
                    msg = await reader.read()
                if msg is None:
                    return
                await self._send(msg)
