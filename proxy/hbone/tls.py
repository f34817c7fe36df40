"""TLS on a non-blocking `ssl.SSLSocket`, driven by the event loop's readiness callbacks, as
the transport of an asyncio BufferedProtocol (the HBONE link).

Why not the loop's own TLS (`create_connection(ssl=...)`): uvloop runs an SSLObject between
two memory BIOs, so each record costs a socket read, a BIO write, an SSL read and a BIO read
(four C calls from a Cython state machine) and each write the same again. Here OpenSSL reads
from and writes to the socket itself: one `recv_into` per record, one `send` per frame.
See "Performance" in docs/hbone.md for the measurements.

Semantics the link relies on, as asyncio transports have them:
- `write` never blocks; what the socket does not take is kept, in order, and the protocol's
  `pause_writing`/`resume_writing` bound it.
- `close` sends what is pending, then close_notify; `abort` resets the connection.
- `connection_lost` is called once, from the loop (never from inside a call the protocol
  made), after the socket is closed.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
import struct
from typing import Any, Protocol

HIGH_WATER = 1 << 20
# A full TLS record is 16 KiB of plaintext: a read that filled one likely has more behind it
# (bulk transfer), so read on instead of going back to the loop; a shorter one (request /
# response traffic) is usually all there is, and an extra read would only cost an EAGAIN.
_FULL_RECORD = 16 * 1024


class Receiver(Protocol):
    """The protocol side (asyncio.BufferedProtocol's methods; the link implements them)."""

    def connection_made(self, transport: Any) -> None: ...
    def get_buffer(self, sizehint: int) -> memoryview: ...
    def buffer_updated(self, nbytes: int) -> None: ...
    def connection_lost(self, exc: Exception | None) -> None: ...
    def pause_writing(self) -> None: ...
    def resume_writing(self) -> None: ...


class TlsTransport:
    def __init__(self, loop: asyncio.AbstractEventLoop, sock: ssl.SSLSocket) -> None:
        self._loop, self._sock = loop, sock
        self._fd = sock.fileno()
        self._proto: Receiver | None = None
        self._out = bytearray()  # written by the protocol, not yet taken by OpenSSL
        self._reading = self._writing = False
        self._paused = False
        self._closing = False
        self._closed = False
        self._peername: Any = None

    @classmethod
    async def open(cls, sock: socket.socket, ctx: ssl.SSLContext, *, server_side: bool,
                   timeout: float) -> TlsTransport:
        """Handshake on a connected TCP socket, which is owned from here: on failure it is
        closed. Raises ssl.SSLError, OSError or TimeoutError."""
        loop = asyncio.get_running_loop()
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            ssock = ctx.wrap_socket(sock, server_side=server_side,
                                    do_handshake_on_connect=False)
        except BaseException:
            sock.close()
            raise
        t = cls(loop, ssock)
        try:
            async with asyncio.timeout(timeout):
                await t._handshake()
            t._peername = ssock.getpeername()
        except BaseException:
            t._release()
            raise
        return t

    async def _handshake(self) -> None:
        while True:
            try:
                self._sock.do_handshake()
                return
            except ssl.SSLWantReadError:
                await self._ready(self._loop.add_reader, self._loop.remove_reader)
            except ssl.SSLWantWriteError:
                await self._ready(self._loop.add_writer, self._loop.remove_writer)

    async def _ready(self, add: Any, remove: Any) -> None:
        fut: asyncio.Future[None] = self._loop.create_future()

        def wake() -> None:
            if not fut.done():
                fut.set_result(None)
        add(self._fd, wake)
        try:
            await fut
        finally:
            remove(self._fd)

    def start(self, protocol: Receiver) -> None:
        """Hand the connection to `protocol` (connection_made, then reads)."""
        self._proto = protocol
        protocol.connection_made(self)
        if not self._closing:
            self._want_read(True)
            # OpenSSL may already hold decrypted bytes from the handshake's last read.
            self._loop.call_soon(self._on_readable)

    # -- reading -----------------------------------------------------------------------------

    def _want_read(self, on: bool) -> None:
        if on != self._reading:
            self._reading = on
            if on:
                self._loop.add_reader(self._fd, self._on_readable)
            else:
                self._loop.remove_reader(self._fd)

    def _on_readable(self) -> None:
        proto = self._proto
        while not self._closing and proto is not None:
            buf = proto.get_buffer(-1)
            try:
                n = self._sock.recv_into(buf)
            except (ssl.SSLWantReadError, BlockingIOError, InterruptedError):
                return
            except ssl.SSLWantWriteError:  # OpenSSL must write first (e.g. a KeyUpdate reply)
                self._want_write(True)
                return
            except (OSError, ValueError) as exc:  # ssl.SSLError is an OSError
                self._lose(exc)
                return
            if n == 0:  # close_notify or FIN: the peer is gone, there is nothing to finish
                self._lose(None)
                return
            proto.buffer_updated(n)
            if n < _FULL_RECORD and len(buf) > _FULL_RECORD:
                return  # the whole record fitted: nothing left in OpenSSL

    # -- writing -----------------------------------------------------------------------------

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if self._closing or not data:
            return
        if self._out:
            self._out += data
        else:
            try:
                n = self._sock.send(data)
            except (ssl.SSLWantWriteError, ssl.SSLWantReadError, BlockingIOError):
                n = 0
            except (OSError, ValueError) as exc:
                self._lose(exc)
                return
            if n == len(data):
                return
            # Kept as written: OpenSSL may hold part of it in a record it must finish, and a
            # retry must present at least the same bytes (it accepts a moved buffer).
            self._out += memoryview(data)[n:] if n else data
            self._want_write(True)
        if not self._paused and len(self._out) > HIGH_WATER and self._proto is not None:
            self._paused = True
            self._proto.pause_writing()

    def _want_write(self, on: bool) -> None:
        if on != self._writing:
            self._writing = on
            if on:
                self._loop.add_writer(self._fd, self._on_writable)
            else:
                self._loop.remove_writer(self._fd)

    def _on_writable(self) -> None:
        if self._closed:
            return
        if self._out:
            try:
                n = self._sock.send(self._out)
            except (ssl.SSLWantWriteError, ssl.SSLWantReadError, BlockingIOError):
                return
            except (OSError, ValueError) as exc:
                self._lose(exc)
                return
            del self._out[:n]
            if self._out:
                return
        self._want_write(False)
        if self._closing:
            self._shutdown()
            return
        self._on_readable()  # in case a read was waiting for this write
        if self._paused and self._proto is not None:
            self._paused = False
            self._proto.resume_writing()

    def get_write_buffer_size(self) -> int:
        return len(self._out)

    # -- the end -----------------------------------------------------------------------------

    def is_closing(self) -> bool:
        return self._closing

    def close(self) -> None:
        """Send what is pending, then close_notify, then close."""
        if self._closing:
            return
        self._closing = True
        self._want_read(False)
        if not self._out:
            self._shutdown()

    def abort(self) -> None:
        """Close at once with a TCP reset; pending bytes are dropped."""
        if self._closed:
            return
        self._closing = True
        with contextlib.suppress(OSError):
            self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self._lose(None)

    def _shutdown(self) -> None:
        with contextlib.suppress(OSError, ValueError):
            self._sock.unwrap()  # sends close_notify; does not wait for the peer's
        # Unread bytes in the receive queue would make close() send a RST, not a FIN.
        with contextlib.suppress(OSError):
            for _ in range(16):  # bounded: a peer that keeps sending gets its RST
                if not socket.socket.recv(self._sock, 65536, socket.MSG_DONTWAIT):
                    break
        self._lose(None)

    def _lose(self, exc: Exception | None) -> None:
        if self._closed:
            return
        self._closing = True
        self._release()
        if self._proto is not None:
            self._loop.call_soon(self._proto.connection_lost, exc)

    def _release(self) -> None:
        self._closed = True
        self._want_read(False)
        self._want_write(False)
        self._out.clear()
        self._sock.close()

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        if name in ("ssl_object", "socket"):
            return self._sock
        if name == "peername":
            return self._peername
        if name == "cipher":
            return self._sock.cipher()
        return default
