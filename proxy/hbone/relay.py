"""Relay between a plain TCP socket (the application side) and an HBONE stream.

TCP semantics survive the tunnel, as RFC 9113 §8.5 asks of a CONNECT proxy: EOF from the
socket becomes END_STREAM and END_STREAM becomes shutdown(SHUT_WR) (half-close, both ways);
a reset on the socket becomes RST_STREAM(CONNECT_ERROR) and a RST_STREAM, or the loss of the
tunnel's connection, becomes a TCP reset (SO_LINGER 0) on the socket. Which side did it first
is recorded (Traffic.reset_by, as proxy/forward.py): `sock_is_a` says whether the socket is
the side that opened the connection (the client) or the upstream.

Driven by readiness callbacks, not coroutines (as proxy/forward.py's splice pump): the
socket stays registered for reads, and one wake-up does recv (into a buffer that leaves room
for the frame header) → DATA header → one TLS write; DATA from the link is sent to the
socket from the link's own read callback.
The coroutine version (two tasks with sock_recv_into / sock_sendall) cost two task
switches and four epoll_ctl calls per chunk, which dominated small-message latency.

Backpressure, both ways, as before:
- socket → stream: we read at most what the stream's send window allows, and stop reading
  (drop read interest) while the window is closed or the TLS transport is paused; the link
  calls `on_writable` when either re-opens.
- stream → socket: a chunk is acknowledged (re-opening the peer's window) only once fully
  written to the socket; what the socket does not take stays in `stream._chunks`, and we
  wait for write readiness.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading

from proxy.forward import CLIENT, PROXY, UPSTREAM, ResetBy, Traffic, reset
from proxy.hbone.frames import HEADER
from proxy.hbone.h2link import Stream, StreamReset

# Up to 1 MiB per DATA frame (the SETTINGS_MAX_FRAME_SIZE both ztunnel and we announce;
# sendable() keeps to the peer's): measured, 64 KiB frames capped one stream at ~3 Gbit/s,
# 256 KiB reached ~3-5, 1 MiB another ~25% at ~10% less CPU per byte (per-frame Python and
# syscall costs; docs/benchmarks.md). A read takes what the socket has, so small messages
# still go out at once in small frames.
CHUNK = 1 << 20
_buffers = threading.local()


def _frame_buffer() -> tuple[memoryview, memoryview]:
    """The thread's (whole frame, payload) buffer. One per thread, not per connection: a
    relay reads into it, frames it and hands it to the TLS transport, which sends it or
    copies what it cannot send, all in one callback; so a tunnelled connection holds no
    read buffer of its own (256 KiB each would be 256 MB for 1000 connections)."""
    views: tuple[memoryview, memoryview] | None = getattr(_buffers, "views", None)
    if views is None:
        whole = memoryview(bytearray(HEADER + CHUNK))
        views = _buffers.views = (whole, whole[HEADER:])
    return views


class _Relay:
    """Both directions of one tunnelled connection; `done` resolves with the side that reset
    it ("" when both directions ended cleanly)."""

    def __init__(self, loop: asyncio.AbstractEventLoop, sock: socket.socket, stream: Stream,
                 t: Traffic, sock_is_a: bool) -> None:
        self.loop, self.sock, self.stream, self.t = loop, sock, stream, t
        self.sock_is_a = sock_is_a  # Traffic counts a->b / b->a by who opened the connection
        self.sock_side, self.stream_side = (CLIENT, UPSTREAM) if sock_is_a else (UPSTREAM, CLIENT)
        self.fd = sock.fileno()
        self.reading = False
        self.writing = False
        self.up_done = False    # the socket's EOF was forwarded as END_STREAM
        self.down_done = False  # the peer's END_STREAM was forwarded as SHUT_WR
        self.done: asyncio.Future[ResetBy] = loop.create_future()

    def start(self) -> None:
        self.sock.setblocking(False)  # recv/send below must never block the loop
        self.stream.sink = self
        if self.stream.error is not None:
            self._finish(self.stream_side)
            return
        self._want_read(True)
        self.on_data()  # whatever arrived before we were attached (then maybe EOF)

    # -- socket → stream ---------------------------------------------------------------------

    def _want_read(self, on: bool) -> None:
        if on != self.reading:
            self.reading = on
            if on:
                self.loop.add_reader(self.fd, self._readable)
            else:
                self.loop.remove_reader(self.fd)

    def _readable(self) -> None:
        try:
            self._read_once()
        except Exception:  # a bug here must reset the connection, not leave it hanging
            self._finish(PROXY)

    def _read_once(self) -> None:
        s = self.stream
        link = s.link
        if self.done.done():
            return
        if s.error is not None or link.lost is not None:
            self._finish(self.stream_side)
            return
        if link.paused:
            self._want_read(False)  # on_writable (resume_writing) turns it back on
            return
        window = s.sendable()
        if window <= 0:
            if s.error is not None or s.local_ended:
                self._finish(self.stream_side)
            else:
                self._want_read(False)  # on_writable (WINDOW_UPDATE) turns it back on
            return
        try:
            # DATA frames are built in place: the header goes in front of what was read.
            frame, payload = _frame_buffer()
            n = self.sock.recv_into(payload, min(window, CHUNK))
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            self._finish(self.sock_side)
            return
        if n == 0:
            self._want_read(False)
            self.up_done = True
            s.end()
            self._maybe_finish()
            return
        link.send_data(s, frame, n)  # the transport copies what it cannot send now
        self._count(n, True)

    def on_writable(self) -> None:
        if not self.reading and not self.up_done and not self.done.done():
            self._want_read(True)

    # -- stream → socket ---------------------------------------------------------------------

    def on_data(self) -> None:
        if not self.writing:  # else the write-readiness callback drains
            self._drain()

    def on_eof(self) -> None:
        if not self.writing:
            self._drain()

    def _writable(self) -> None:
        try:
            self._drain()
        except Exception:  # as in _readable
            self._finish(PROXY)

    def _drain(self) -> None:
        if self.done.done():
            return
        s = self.stream
        chunks = s._chunks
        while chunks:
            data, flow_len = chunks[0]
            try:
                sent = self.sock.send(data)
            except (BlockingIOError, InterruptedError):
                sent = 0
            except OSError:
                self._finish(self.sock_side)
                return
            if sent:
                self._count(sent, False)
            if sent < len(data):
                # Not acknowledged until all of it is written: the peer's window stays
                # closed by what we hold, so a slow app slows the sender.
                chunks[0] = (memoryview(data)[sent:], flow_len)
                if not self.writing:
                    self.writing = True
                    self.loop.add_writer(self.fd, self._writable)
                return
            chunks.popleft()
            s.link.acknowledge(s.id, flow_len)
        if self.writing:
            self.writing = False
            self.loop.remove_writer(self.fd)
        if s.remote_ended and not self.down_done:
            self.down_done = True
            with contextlib.suppress(OSError):
                self.sock.shutdown(socket.SHUT_WR)
            self._maybe_finish()

    def on_reset(self) -> None:
        self._finish(self.stream_side)

    # -- the end -----------------------------------------------------------------------------

    def _count(self, n: int, to_stream: bool) -> None:
        if to_stream == self.sock_is_a:
            self.t.a_to_b += n
        else:
            self.t.b_to_a += n

    def _maybe_finish(self) -> None:
        if self.up_done and self.down_done:
            self._finish("")

    def upstream_ended(self) -> bool:
        """Whether the upstream's EOF was seen: the peer's END_STREAM when the stream is the
        upstream, the socket's EOF when the socket is."""
        return self.down_done if self.sock_is_a else self.up_done

    def _finish(self, by: ResetBy) -> None:
        if self.done.done():
            return
        self._want_read(False)
        if self.writing:
            self.writing = False
            self.loop.remove_writer(self.fd)
        self.stream.sink = None
        self.done.set_result(by)


async def relay(sock: socket.socket, stream: Stream, traffic: Traffic | None = None,
                sock_is_a: bool = True) -> Traffic:
    """Until both directions ended; closes the socket (with RST if either side reset) and
    leaves the stream closed or reset. Never raises for I/O errors."""
    t = traffic or Traffic()
    r = _Relay(asyncio.get_running_loop(), sock, stream, t, sock_is_a)
    try:
        r.start()
        by = await r.done
        t.upstream_ended = r.upstream_ended()
        if by:
            t.ended_by(by)
    except BaseException:  # cancelled (idle sweep, pod going away): reset both sides
        r._finish(PROXY)
        t.upstream_ended = r.upstream_ended()
        t.ended_by(PROXY)
        raise
    finally:
        if t.reset:
            stream.reset()
            reset(sock)
        else:
            sock.close()
    return t


__all__ = ["StreamReset", "relay"]
