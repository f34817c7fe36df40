"""One protobuf message per SOCK_SEQPACKET datagram, with optional fds as SCM_RIGHTS.

Asyncio-friendly: sockets are non-blocking and we wait for readiness with add_reader /
add_writer (the loop has no recvmsg/sendmsg helpers). Rules every caller relies on:

* at most one coroutine receives on a socket at a time (add_reader keeps one callback per
  fd), and a socket is closed with `close()` here, which unregisters it first: closing an fd
  the selector still watches breaks the next socket that gets the same fd number;
* fds received are returned only on success; on every error path they are closed here, so
  a bad peer cannot leak fds into us.
"""

from __future__ import annotations

import array
import asyncio
import contextlib
import os
import socket
from collections.abc import Callable, Sequence
from typing import Protocol, TypeVar

# istio reads into a 1024-byte buffer (ztunnel too): a bigger datagram would arrive
# truncated, so refuse to send one. Real messages are far smaller (names are <= 253 bytes).
MAX_DATAGRAM = 1024
# Where the agent listens and the proxy connects unless their configs say otherwise.
DEFAULT_SOCKET = "/var/run/meshnode/zds.sock"
_FD_SIZE = array.array("i").itemsize



class Message(Protocol):
    """The part of a generated protobuf message we use (no protobuf stubs are installed)."""

    def SerializeToString(self, *, deterministic: bool = ...) -> bytes: ...
    def ParseFromString(self, serialized: bytes) -> int: ...


M = TypeVar("M", bound=Message)


class WireError(Exception):
    """The connection can no longer be trusted; drop it."""


class PeerClosed(WireError):
    """The peer closed the connection (a zero-length read)."""


class Truncated(WireError):
    """The datagram or its ancillary data did not fit: MSG_TRUNC / MSG_CTRUNC."""


class ProtocolError(WireError):
    """Undecodable or unexpected message."""


def seqpacket() -> socket.socket:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET | socket.SOCK_CLOEXEC)
    s.setblocking(False)
    return s


def close(sock: socket.socket) -> None:
    """Unregister from the running loop (if any), then close."""
    fd = sock.fileno()
    if fd >= 0:
        with contextlib.suppress(RuntimeError):
            loop = asyncio.get_running_loop()
            loop.remove_reader(fd)
            loop.remove_writer(fd)
    sock.close()


def close_fds(fds: Sequence[int]) -> None:
    for fd in fds:
        with contextlib.suppress(OSError):
            os.close(fd)


async def _ready(sock: socket.socket, writable: bool) -> None:
    loop = asyncio.get_running_loop()
    fd = sock.fileno()
    if fd < 0:
        raise PeerClosed("socket closed")
    fut: asyncio.Future[None] = loop.create_future()

    def wake() -> None:
        if not fut.done():
            fut.set_result(None)

    add: Callable[..., None] = loop.add_writer if writable else loop.add_reader
    remove: Callable[[int], bool] = loop.remove_writer if writable else loop.remove_reader
    add(fd, wake)
    try:
        await fut
    finally:
        # Still ours only while the socket is open: close() already unregistered it.
        if sock.fileno() == fd:
            remove(fd)


async def send(sock: socket.socket, msg: Message, fds: Sequence[int] = ()) -> None:
    """Send `msg` as one datagram, `fds` attached. The fds stay the caller's (the kernel
    duplicates them into the peer)."""
    data = msg.SerializeToString()
    if len(data) > MAX_DATAGRAM:
        raise ProtocolError(f"message of {len(data)} bytes exceeds {MAX_DATAGRAM}")
    anc = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds).tobytes())] if fds else []
    while True:
        try:
            sent = sock.sendmsg([data], anc)
        except (BlockingIOError, InterruptedError):
            await _ready(sock, writable=True)
            continue
        except (BrokenPipeError, ConnectionResetError) as e:
            raise PeerClosed(str(e)) from e
        if sent != len(data):  # cannot happen on SEQPACKET, but never ack half a message
            raise WireError(f"short send: {sent} of {len(data)} bytes")
        return


def _fds_from(ancdata: list[tuple[int, int, bytes]]) -> list[int]:
    fds: list[int] = []
    for level, kind, data in ancdata:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            # A truncated control message can end in a partial int: take whole ones only.
            arr = array.array("i")
            arr.frombytes(data[: len(data) - len(data) % _FD_SIZE])
            fds.extend(arr)
    return fds


async def recv_raw(sock: socket.socket, max_fds: int = 1) -> tuple[bytes, list[int], int]:
    """One datagram: (data, fds, flags). The caller owns the fds. Room is made for
    `max_fds` fds; more is a ProtocolError (fds closed), or MSG_CTRUNC if even the room
    CMSG_SPACE rounds up to is exceeded (the kernel drops those extras)."""
    anc = socket.CMSG_SPACE(max_fds * _FD_SIZE) if max_fds > 0 else 0
    while True:
        try:
            # MSG_CMSG_CLOEXEC: received fds must not leak into child processes.
            data, ancdata, flags, _ = sock.recvmsg(MAX_DATAGRAM, anc, socket.MSG_CMSG_CLOEXEC)
        except (BlockingIOError, InterruptedError):
            await _ready(sock, writable=False)
            continue
        except ConnectionResetError as e:
            raise PeerClosed(str(e)) from e
        fds = _fds_from(ancdata)
        # CMSG_SPACE rounds up to 8 bytes, so room for one fd fits two: count them too.
        if len(fds) > max_fds and not flags & socket.MSG_CTRUNC:  # decode() reports CTRUNC
            close_fds(fds)
            raise ProtocolError(f"{len(fds)} fds attached, at most {max_fds} expected")
        return data, fds, flags


def decode(msg_type: type[M], data: bytes, fds: list[int], flags: int) -> M:
    """Check one received datagram and parse it; on any error the fds are closed."""
    try:
        if not data and not fds and not flags & (socket.MSG_TRUNC | socket.MSG_CTRUNC):
            raise PeerClosed("peer closed the connection")
        if flags & socket.MSG_TRUNC:
            raise Truncated(f"datagram longer than {MAX_DATAGRAM} bytes")
        if flags & socket.MSG_CTRUNC:
            raise Truncated("ancillary data truncated (too many fds?)")
        msg = msg_type()
        try:
            msg.ParseFromString(data)
        except Exception as e:  # DecodeError, or whatever the C backend raises on garbage
            raise ProtocolError(f"undecodable {msg_type.__name__}: {e}") from e
        return msg
    except BaseException:
        close_fds(fds)
        raise


async def recv(sock: socket.socket, msg_type: type[M], max_fds: int = 1) -> tuple[M, list[int]]:
    """Receive and parse one message. Raises PeerClosed on EOF, Truncated, ProtocolError."""
    data, fds, flags = await recv_raw(sock, max_fds)
    return decode(msg_type, data, fds, flags), fds


def peer_alive(sock: socket.socket) -> bool:
    """Non-blocking liveness check for an idle connection (istio's 10 ms read): a peer that
    sends nothing unprompted shows EAGAIN when alive, EOF or an error when gone."""
    try:
        data = sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT)
    except (BlockingIOError, InterruptedError):
        return True
    except OSError:
        return False
    # Queued data is for the receiver to judge; only a zero-length read means EOF.
    return bool(data)
