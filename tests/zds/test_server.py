"""ZdsServer against hand-driven peers: bad peers are dropped, the server keeps serving."""

from __future__ import annotations

import asyncio
import os
import socket
import time
from collections.abc import Callable, Iterator

import pytest

from agent.zds import Workload, ZdsError, ZdsServer
from core.wire import zds as wire
from meshpb import zds_pb2
from tests.zds import SELF_NETNS, inode, run, short_dir, until, write_end_closed_everywhere

HELLO = zds_pb2.ZdsHello(version=zds_pb2.V1)
ACK = zds_pb2.WorkloadResponse(ack=zds_pb2.Ack())
ME = Workload("me", "me", "ns", "sa", SELF_NETNS)


@pytest.fixture
def sock_path() -> Iterator[str]:
    with short_dir() as d:
        yield f"{d}/zds.sock"


def server(path: str, pods: list[Workload] | Callable[[], list[Workload]] | None = None,
           ack_timeout: float = 0.5, accepts_per_second: float = 100.0) -> ZdsServer:
    snap = pods if callable(pods) else (lambda: list(pods or []))
    return ZdsServer(path, snap, ack_timeout=ack_timeout, accepts_per_second=accepts_per_second)


async def connect(path: str) -> socket.socket:
    sock = wire.seqpacket()
    await asyncio.get_running_loop().sock_connect(sock, path)
    return sock


async def expect_dropped(sock: socket.socket) -> None:
    """The server hangs up on us: EOF (after any requests still queued for us)."""
    with pytest.raises(wire.PeerClosed):
        while True:
            await asyncio.wait_for(wire.recv(sock, zds_pb2.WorkloadRequest), 3)


async def proxy_session(path: str) -> tuple[socket.socket, list[str]]:
    """A well-behaved peer: hello, ack the whole snapshot. Returns the payload kinds seen."""
    sock = await connect(path)
    await wire.send(sock, HELLO)
    kinds: list[str] = []
    while True:
        req, fds = await asyncio.wait_for(wire.recv(sock, zds_pb2.WorkloadRequest), 3)
        wire.close_fds(fds)
        kind = req.WhichOneof("payload")
        kinds.append(str(kind))
        await wire.send(sock, ACK)
        if kind == "snapshot_sent":
            return sock, kinds


def test_snapshot_add_carries_netns_fd(sock_path: str) -> None:
    async def main() -> None:
        async with server(sock_path, [ME]):
            sock = await connect(sock_path)
            try:
                await wire.send(sock, HELLO)
                req, fds = await wire.recv(sock, zds_pb2.WorkloadRequest)
                assert req.add.uid == "me" and req.add.workload_info.service_account == "sa"
                assert len(fds) == 1 and inode(fds[0]) == inode(SELF_NETNS)
                os.close(fds[0])
            finally:
                wire.close(sock)
    run(main())


@pytest.mark.parametrize("hello", [
    b"\xff\xff\xff",          # not protobuf
    b"\x08\x02",              # a version we do not speak
    b"\x08\x01" * 600,        # truncated (> 1024 bytes)
])
def test_bad_hello_dropped_server_survives(sock_path: str, hello: bytes) -> None:
    async def main() -> None:
        async with server(sock_path) as srv:
            bad = await connect(sock_path)
            bad.send(hello)
            await expect_dropped(bad)
            wire.close(bad)
            good, kinds = await proxy_session(sock_path)
            assert kinds == ["snapshot_sent"]
            await until(lambda: srv.connection_count == 1)
            wire.close(good)
    run(main())


def test_hello_with_fd_dropped_and_fd_closed(sock_path: str) -> None:
    async def main() -> None:
        async with server(sock_path) as srv:
            sock = await connect(sock_path)
            r, w = os.pipe()
            try:
                sock.sendmsg([HELLO.SerializeToString()],
                              [(socket.SOL_SOCKET, socket.SCM_RIGHTS, w.to_bytes(4, "little"))])
                os.close(w)
                await expect_dropped(sock)
                assert write_end_closed_everywhere(r)
                assert srv.connection_count == 0
            finally:
                os.close(r)
                wire.close(sock)
    run(main())


def test_silent_peer_dropped_after_deadline(sock_path: str) -> None:
    async def main() -> None:
        async with server(sock_path, ack_timeout=0.2):
            sock = await connect(sock_path)
            t0 = time.monotonic()
            await expect_dropped(sock)
            assert 0.15 < time.monotonic() - t0 < 2
            wire.close(sock)
    run(main())


def test_garbage_ack_during_snapshot(sock_path: str) -> None:
    async def main() -> None:
        async with server(sock_path, [ME]) as srv:
            sock = await connect(sock_path)
            await wire.send(sock, HELLO)
            _, fds = await wire.recv(sock, zds_pb2.WorkloadRequest)
            wire.close_fds(fds)
            sock.send(b"\xff\xfe")
            await expect_dropped(sock)
            wire.close(sock)
            await until(lambda: srv.connection_count == 0)
    run(main())


def test_ack_with_fd_dropped_and_fd_closed(sock_path: str) -> None:
    async def main() -> None:
        async with server(sock_path) as srv:
            sock = await connect(sock_path)
            await wire.send(sock, HELLO)
            await wire.recv(sock, zds_pb2.WorkloadRequest)  # snapshot_sent
            r, w = os.pipe()
            try:
                await wire.send(sock, ACK, [w])
                os.close(w)
                await expect_dropped(sock)
                assert write_end_closed_everywhere(r)
                await until(lambda: srv.connection_count == 0)
            finally:
                os.close(r)
                wire.close(sock)
    run(main())


def test_unsolicited_message_drops_connection(sock_path: str) -> None:
    async def main() -> None:
        async with server(sock_path) as srv:
            sock, _ = await proxy_session(sock_path)
            await until(lambda: srv.synced_count == 1)
            await wire.send(sock, ACK)  # nothing asked
            await expect_dropped(sock)
            await until(lambda: srv.connection_count == 0)
            wire.close(sock)
    run(main())


def test_snapshot_callback_failure_drops_only_that_proxy(sock_path: str) -> None:
    calls = 0

    def flaky() -> list[Workload]:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise RuntimeError("cache not ready")
        return [ME]

    async def main() -> None:
        async with server(sock_path, flaky) as srv:
            first = await connect(sock_path)
            await wire.send(first, HELLO)
            await expect_dropped(first)
            wire.close(first)
            second, kinds = await proxy_session(sock_path)
            assert kinds == ["add", "snapshot_sent"]
            await until(lambda: srv.synced_count == 1)
            wire.close(second)
    run(main())


def test_malformed_ack_is_an_error(sock_path: str) -> None:
    """A response without an ack payload fails the add (it does not count as success)."""
    async def main() -> None:
        async with server(sock_path) as srv:
            sock, _ = await proxy_session(sock_path)
            await until(lambda: srv.synced_count == 1)
            add = asyncio.create_task(srv.add(ME))
            _, fds = await wire.recv(sock, zds_pb2.WorkloadRequest)
            wire.close_fds(fds)
            sock.send(b"\x12\x00")  # field 2: not an ack
            with pytest.raises(ZdsError, match="no ack"):
                await add
            wire.close(sock)
    run(main())


def test_accepts_are_rate_limited(sock_path: str) -> None:
    async def main() -> None:
        async with server(sock_path, accepts_per_second=10):
            t0 = time.monotonic()
            socks = [s for s, _ in await asyncio.gather(*(proxy_session(sock_path)
                                                           for _ in range(4)))]
            assert time.monotonic() - t0 >= 0.25  # 4 accepts at 10/s: 3 gaps of 0.1 s
            for s in socks:
                wire.close(s)
    run(main())
