"""Relay bytes between two connected TCP sockets, both directions, until both are done.

Zero-copy by default: each direction moves data socket → pipe → socket with splice(2), so
the payload never enters Python. Backpressure is natural: nothing more is read from the
source until the pipe has drained into the destination. A copy path (recv_into/send through
one buffer) is kept for comparison (`make bench`) and as a fallback.

Semantics, per direction: EOF is forwarded as a half-close (shutdown SHUT_WR), so request/
response protocols that rely on it work; a reset on one side is forwarded as a reset (close
with SO_LINGER 0) on the other, so the peer sees what a direct connection would show.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import fcntl
import os
import socket
import struct
import time
from dataclasses import dataclass, field

from core.aio import cancel_and_wait

PIPE_SIZE = 1 << 20  # bigger pipe: fewer splice round trips on fast streams
CHUNK = 1 << 20
F_SETPIPE_SZ = 1031
_SPLICE_FLAGS = os.SPLICE_F_MOVE | os.SPLICE_F_NONBLOCK
_RESET = (errno.ECONNRESET, errno.EPIPE, errno.ETIMEDOUT, errno.EHOSTUNREACH)


@dataclass
class Traffic:
    """Bytes moved, and when they last moved (for the idle timeout)."""

    a_to_b: int = 0
    b_to_a: int = 0
    last_activity: float = field(default_factory=time.monotonic)
    reset: bool = False  # the connection ended with a reset from either side
    _moved: int = field(default=0, repr=False)

    def idle_for(self, now: float) -> float:
        """Seconds since bytes last moved, as seen by successive calls (the idle sweep). The
        data path only counts bytes: a clock read per chunk cost more than the sweep."""
        moved = self.a_to_b + self.b_to_a
        if moved != self._moved:
            self._moved, self.last_activity = moved, now
        return now - self.last_activity


def reset(sock: socket.socket) -> None:
    """Close with RST rather than FIN."""
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


def _half_close(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_WR)


class _Reset(Exception):
    pass


class _SplicePump:
    """One direction, driven by readiness callbacks rather than a coroutine: the source stays
    registered for reads while idle and each wake-up splices straight away, so a small
    message costs two splices and no task switch or epoll re-registration. Only when the
    destination is full does the pump swap its read interest for write interest."""

    def __init__(self, loop: asyncio.AbstractEventLoop, src: socket.socket,
                 dst: socket.socket, t: Traffic, forward: bool) -> None:
        self.loop, self.t, self.forward = loop, t, forward
        self.sfd, self.dfd = src.fileno(), dst.fileno()
        self.dst = dst
        self.r, self.w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        with contextlib.suppress(OSError):  # the default 64 KiB pipe still works
            fcntl.fcntl(self.w, F_SETPIPE_SZ, PIPE_SIZE)
        self.in_pipe = 0
        self.done: asyncio.Future[None] = loop.create_future()
        loop.add_reader(self.sfd, self._readable)

    def _finish(self, exc: BaseException | None = None) -> None:
        self.loop.remove_reader(self.sfd)
        self.loop.remove_writer(self.dfd)
        if not self.done.done():
            if exc is None:
                self.done.set_result(None)
            else:
                self.done.set_exception(exc)

    def _readable(self) -> None:
        try:
            n = os.splice(self.sfd, self.w, CHUNK, flags=_SPLICE_FLAGS)
        except BlockingIOError:
            return
        except OSError as exc:
            self._finish(_Reset() if exc.errno in _RESET else exc)
            return
        if n == 0:
            _half_close(self.dst)
            self._finish()
            return
        self.in_pipe = n
        self._drain()

    def _drain(self) -> None:
        moved = 0
        try:
            while self.in_pipe:
                m = os.splice(self.r, self.dfd, self.in_pipe, flags=_SPLICE_FLAGS)
                self.in_pipe -= m
                moved += m
        except BlockingIOError:
            # Destination full: stop reading (backpressure) until it can take more.
            self.loop.remove_reader(self.sfd)
            self.loop.add_writer(self.dfd, self._writable)
        except OSError as exc:
            self._finish(_Reset() if exc.errno in _RESET else exc)
            return
        finally:
            if moved:
                if self.forward:
                    self.t.a_to_b += moved
                else:
                    self.t.b_to_a += moved

    def _writable(self) -> None:
        self._drain()
        if not self.in_pipe and not self.done.done():
            self.loop.remove_writer(self.dfd)
            self.loop.add_reader(self.sfd, self._readable)

    def close(self) -> None:
        self._finish()
        os.close(self.r)
        os.close(self.w)


async def _splice_one_way(src: socket.socket, dst: socket.socket, t: Traffic,
                          forward: bool) -> None:
    pump = _SplicePump(asyncio.get_running_loop(), src, dst, t, forward)
    try:
        await pump.done
    finally:
        pump.close()


async def _copy_one_way(src: socket.socket, dst: socket.socket, t: Traffic,
                        forward: bool) -> None:
    loop = asyncio.get_running_loop()
    buf = bytearray(256 * 1024)
    view = memoryview(buf)
    while True:
        try:
            n = await loop.sock_recv_into(src, buf)
        except OSError as exc:
            if exc.errno in _RESET:
                raise _Reset from None
            raise
        if n == 0:
            _half_close(dst)
            return
        try:
            await loop.sock_sendall(dst, view[:n])
        except OSError as exc:
            if exc.errno in _RESET:
                raise _Reset from None
            raise
        if forward:
            t.a_to_b += n
        else:
            t.b_to_a += n


async def relay(a: socket.socket, b: socket.socket, traffic: Traffic | None = None,
                zero_copy: bool = True) -> Traffic:
    """Relay until both directions ended; close both sockets. Never raises for I/O errors."""
    t = traffic or Traffic()
    one_way = _splice_one_way if zero_copy else _copy_one_way
    tasks = [asyncio.ensure_future(one_way(a, b, t, True)),
             asyncio.ensure_future(one_way(b, a, t, False))]
    try:
        pending = set(tasks)
        while pending:
            done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                exc = task.exception()
                if exc is not None:
                    # A reset (or any error) on one side ends the whole connection, and the
                    # other side is told with a reset too.
                    t.reset = True
                    await cancel_and_wait(pending)
                    pending = set()
    except asyncio.CancelledError:
        await cancel_and_wait(tasks)
        t.reset = True
        raise
    finally:
        if t.reset:
            reset(a)
            reset(b)
        else:
            a.close()
            b.close()
    return t
