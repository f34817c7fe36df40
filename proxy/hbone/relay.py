"""Relay between a plain TCP socket (the application side) and an HBONE stream.

TCP semantics survive the tunnel, as RFC 9113 §8.5 asks of a CONNECT proxy: EOF from the
socket becomes END_STREAM and END_STREAM becomes shutdown(SHUT_WR) (half-close, both ways);
a reset on the socket becomes RST_STREAM(CONNECT_ERROR) and a RST_STREAM, or the loss of the
tunnel's connection, becomes a TCP reset (SO_LINGER 0) on the socket.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import socket
import time

from proxy.forward import Traffic, reset
from proxy.hbone.h2link import Stream, StreamReset

CHUNK = 256 * 1024
_RESET = (errno.ECONNRESET, errno.EPIPE, errno.ETIMEDOUT, errno.EHOSTUNREACH)


class _SocketReset(Exception):
    pass


def _count(t: Traffic, n: int, to_stream: bool, sock_is_a: bool) -> None:
    # Traffic counts a->b and b->a; which way is which depends on who opened the connection.
    if to_stream == sock_is_a:
        t.a_to_b += n
    else:
        t.b_to_a += n
    t.last_activity = time.monotonic()


async def _to_stream(sock: socket.socket, stream: Stream, t: Traffic, sock_is_a: bool) -> None:
    loop = asyncio.get_running_loop()
    buf = bytearray(CHUNK)
    while True:
        try:
            n = await loop.sock_recv_into(sock, buf)
        except OSError as exc:
            if exc.errno in _RESET:
                raise _SocketReset from None
            raise
        if n == 0:
            stream.end()
            return
        await stream.write(memoryview(buf)[:n])
        _count(t, n, True, sock_is_a)


async def _from_stream(stream: Stream, sock: socket.socket, t: Traffic, sock_is_a: bool) -> None:
    loop = asyncio.get_running_loop()
    while True:
        data = await stream.read()
        if data is None:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_WR)
            return
        try:
            await loop.sock_sendall(sock, data)
        except OSError as exc:
            if exc.errno in _RESET:
                raise _SocketReset from None
            raise
        _count(t, len(data), False, sock_is_a)


async def relay(sock: socket.socket, stream: Stream, traffic: Traffic | None = None,
                sock_is_a: bool = True) -> Traffic:
    """Until both directions ended; closes the socket (with RST if either side reset) and
    leaves the stream closed or reset. Never raises for I/O errors."""
    t = traffic or Traffic()
    tasks = [asyncio.ensure_future(_to_stream(sock, stream, t, sock_is_a)),
             asyncio.ensure_future(_from_stream(stream, sock, t, sock_is_a))]
    try:
        pending: set[asyncio.Future[None]] = set(tasks)
        while pending:
            done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
            if any(task.exception() is not None for task in done):
                t.reset = True
                for p in pending:
                    p.cancel()
                await asyncio.gather(*pending, return_exceptions=True)
                pending = set()
    except asyncio.CancelledError:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        t.reset = True
        raise
    finally:
        if t.reset:
            stream.reset()
            reset(sock)
        else:
            sock.close()
    return t


__all__ = ["StreamReset", "relay"]
