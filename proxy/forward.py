"""Relay bytes between two connected TCP sockets, both directions, until both are done.

Zero-copy by default: each direction moves data socket → pipe → socket with splice(2), so
the payload never enters Python. Backpressure is natural: nothing more is read from the
source until the pipe has drained into the destination. A copy path (recv_into/send through
one buffer) is kept for comparison (`make bench`) and as a fallback.

Semantics, per direction: EOF is forwarded as a half-close (shutdown SHUT_WR), so request/
response protocols that rely on it work; a reset on one side is forwarded as a reset (close
with SO_LINGER 0) on the other, so the peer sees what a direct connection would show.

Which side ended the connection with a reset is recorded (Traffic.reset_by): `a` is the side
that opened the connection (the client), `b` the upstream. Outlier detection counts only an
upstream's reset as a 5xx; were a client's own resets (or the proxy's idle timeout) counted,
any client could push a healthy endpoint into ejection.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
import socket
import struct
import time
from dataclasses import dataclass, field
from typing import Literal

from core.aio import cancel_and_wait

PIPE_SIZE = 1 << 20  # bigger pipe: fewer splice round trips on fast streams
CHUNK = 1 << 20
F_SETPIPE_SZ = 1031
_SPLICE_FLAGS = os.SPLICE_F_MOVE | os.SPLICE_F_NONBLOCK
# Who ended a connection with a reset or an error: the side that opened it (a), the upstream
# (b), or the proxy itself (idle timeout, shutdown, a bug); "" while nobody has.
ResetBy = Literal["", "client", "upstream", "proxy"]
CLIENT: ResetBy = "client"
UPSTREAM: ResetBy = "upstream"
PROXY: ResetBy = "proxy"


@dataclass
class Traffic:
    """Bytes moved, and when they last moved (for the idle timeout)."""

    a_to_b: int = 0
    b_to_a: int = 0
    last_activity: float = field(default_factory=time.monotonic)
    reset: bool = False  # the connection ended with a reset from either side
    reset_by: ResetBy = ""  # who did, first (the other side is then reset by the relay)
    upstream_ended: bool = False  # the upstream's EOF was seen (and forwarded)
    _moved: int = field(default=0, repr=False)

    def ended_by(self, side: ResetBy) -> None:
        """Record a reset by `side`, unless one was recorded already: the first is the
        cause, the rest its echoes (the relay resets the other side itself)."""
        self.reset = True
        if not self.reset_by:
            self.reset_by = side

    @property
    def upstream_failed(self) -> bool:
        """Whether the upstream reset the connection while it still had its side open: what
        outlier detection counts as a 5xx at L4. An upstream that closed (FIN) answers the
        bytes that still reach it with a reset; that is the client writing to a closed
        peer, which any client can provoke against any server that closes first."""
        return self.reset_by == UPSTREAM and not self.upstream_ended

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


class _Ended(Exception):
    """One direction ended with a reset or an error on `by`'s socket."""

    def __init__(self, by: ResetBy, cause: OSError) -> None:
        super().__init__(by, cause)
        self.by = by
        self.cause = cause


def _sides(forward: bool) -> tuple[ResetBy, ResetBy]:
    """(the source's side, the destination's side) of one direction: `a` is the client."""
    return (CLIENT, UPSTREAM) if forward else (UPSTREAM, CLIENT)


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
        self.src_side, self.dst_side = _sides(forward)
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
            self._finish(_Ended(self.src_side, exc))
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
            self._finish(_Ended(self.dst_side, exc))
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
    src_side, dst_side = _sides(forward)
    while True:
        try:
            n = await loop.sock_recv_into(src, buf)
        except OSError as exc:
            raise _Ended(src_side, exc) from None
        if n == 0:
            _half_close(dst)
            return
        try:
            await loop.sock_sendall(dst, view[:n])
        except OSError as exc:
            raise _Ended(dst_side, exc) from None
        if forward:
            t.a_to_b += n
        else:
            t.b_to_a += n


async def relay(a: socket.socket, b: socket.socket, traffic: Traffic | None = None,
                zero_copy: bool = True) -> Traffic:
    """Relay until both directions ended; close both sockets. Never raises for I/O errors.
    `a` is the side that opened the connection, `b` the upstream (for Traffic.reset_by)."""
    t = traffic or Traffic()
    one_way = _splice_one_way if zero_copy else _copy_one_way
    forward, backward = (asyncio.ensure_future(one_way(a, b, t, True)),
                         asyncio.ensure_future(one_way(b, a, t, False)))
    tasks = [forward, backward]
    try:
        pending = set(tasks)
        while pending:
            done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
            # Both may be done in one wake-up: a clean EOF from b is taken first, so a reset
            # that answers the client's bytes after it is not the upstream's failure.
            for task in sorted(done, key=lambda x: x.exception() is not None):
                exc = task.exception()
                if exc is None:
                    if task is backward:
                        t.upstream_ended = True
                    continue
                # A reset (or any error) on one side ends the whole connection, and the
                # other side is told with a reset too.
                t.ended_by(exc.by if isinstance(exc, _Ended) else PROXY)
                await cancel_and_wait(pending)
                pending = set()
    except asyncio.CancelledError:
        await cancel_and_wait(tasks)
        t.ended_by(PROXY)  # the idle timeout or the pod going away, not either side
        raise
    finally:
        if t.reset:
            reset(a)
            reset(b)
        else:
            a.close()
            b.close()
    return t
