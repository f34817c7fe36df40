"""ZdsClient against a hand-driven agent: acks, NACKs, fd hygiene, snapshot set, reconnects."""

from __future__ import annotations

import asyncio
import os
import socket
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager

import pytest

from core.wire import zds as wire
from meshpb import zds_pb2
from proxy.inpod.zds_client import ZdsClient
from tests.zds import (
    SELF_NETNS,
    Recorder,
    inode,
    run,
    short_dir,
    until,
    write_end_closed_everywhere,
)

Req = zds_pb2.WorkloadRequest


def add(uid: str) -> Req:
    return Req(add=zds_pb2.AddWorkload(uid=uid, workload_info=zds_pb2.WorkloadInfo(name=uid)))


def keep(uid: str) -> Req:
    return Req(keep=zds_pb2.KeepWorkload(uid=uid))


def delete(uid: str) -> Req:
    return Req(**{"del": zds_pb2.DelWorkload(uid=uid)})


SNAPSHOT_SENT = Req(snapshot_sent=zds_pb2.SnapshotSent())


class FakeAgent:
    def __init__(self, path: str) -> None:
        self.listener = wire.seqpacket()
        self.listener.bind(path)
        self.listener.listen(4)

    async def accept(self) -> socket.socket:
        sock, _ = await asyncio.wait_for(
            asyncio.get_running_loop().sock_accept(self.listener), 3)
        sock.setblocking(False)
        hello, _ = await wire.recv(sock, zds_pb2.ZdsHello, max_fds=0)
        assert hello.version == zds_pb2.V1
        return sock

    @staticmethod
    async def ask(sock: socket.socket, req: Req, fds: list[int] | None = None) -> str:
        await wire.send(sock, req, fds or [])
        resp, _ = await asyncio.wait_for(wire.recv(sock, zds_pb2.WorkloadResponse, 0), 3)
        assert resp.WhichOneof("payload") == "ack"
        return resp.ack.error

    def close(self) -> None:
        wire.close(self.listener)


@pytest.fixture
def sock_path() -> Iterator[str]:
    with short_dir() as d:
        yield f"{d}/zds.sock"


@asynccontextmanager
async def session(path: str, rec: Recorder) -> AsyncIterator[tuple[FakeAgent, socket.socket,
                                                                   ZdsClient]]:
    agent = FakeAgent(path)
    client = ZdsClient(path, rec)
    client.start()
    try:
        conn = await agent.accept()
        try:
            yield agent, conn, client
        finally:
            wire.close(conn)
    finally:
        await client.close()
        agent.close()


def netns_fd() -> int:
    return os.open(SELF_NETNS, os.O_RDONLY | os.O_CLOEXEC)


def test_snapshot_set_counts_successful_adds_and_keeps(sock_path: str) -> None:
    async def main() -> None:
        rec = Recorder(fail={"b"})
        async with session(sock_path, rec) as (agent, conn, client):
            fd = netns_fd()
            try:
                assert await agent.ask(conn, add("a"), [fd]) == ""
                assert await agent.ask(conn, add("b"), [fd]) == "cannot add b"
            finally:
                os.close(fd)
            assert await agent.ask(conn, keep("c")) == ""
            assert await agent.ask(conn, keep("d")) == ""
            assert await agent.ask(conn, delete("d")) == ""
            assert not client.ready
            assert await agent.ask(conn, SNAPSHOT_SENT) == ""
            assert client.ready
            assert rec.snapshots == [{"a", "c"}]
            assert rec.inodes["a"] == inode(SELF_NETNS)
            # After the snapshot, adds are live adds.
            fd = netns_fd()
            try:
                assert await agent.ask(conn, add("e"), [fd]) == ""
            finally:
                os.close(fd)
            assert rec.of("add") == ["a", "b", "e"]
    run(main())


def test_add_without_fd_is_nacked(sock_path: str) -> None:
    async def main() -> None:
        rec = Recorder()
        async with session(sock_path, rec) as (agent, conn, _):
            assert await agent.ask(conn, add("a")) == "add without a netns fd"
            assert rec.calls == []
    run(main())


def test_fd_on_other_requests_is_closed_and_nacked(sock_path: str) -> None:
    async def main() -> None:
        rec = Recorder()
        async with session(sock_path, rec) as (agent, conn, _):
            for req in (delete("x"), keep("y"), SNAPSHOT_SENT):
                r, w = os.pipe()
                try:
                    assert (await agent.ask(conn, req, [w])).startswith("unexpected fd")
                    os.close(w)
                    assert write_end_closed_everywhere(r)
                finally:
                    os.close(r)
            assert rec.calls == []
    run(main())


def test_exception_without_message_still_nacks(sock_path: str) -> None:
    class Silent(Recorder):
        async def delete(self, uid: str) -> None:
            raise RuntimeError()

    async def main() -> None:
        async with session(sock_path, Silent()) as (agent, conn, _):
            assert await agent.ask(conn, delete("x")) == "RuntimeError"
    run(main())


def test_unknown_payload_is_nacked(sock_path: str) -> None:
    """A request type we do not know (field 4, unused here) is refused, not fatal. (An empty
    request cannot be tested: it is a zero-length datagram, which reads as EOF.)"""
    async def main() -> None:
        async with session(sock_path, Recorder()) as (_, conn, client):
            conn.send(b"\x22\x00")
            resp, _ = await asyncio.wait_for(wire.recv(conn, zds_pb2.WorkloadResponse, 0), 3)
            assert resp.ack.error.startswith("unknown request")
            assert client.connected
    run(main())


def test_garbage_and_truncation_drop_connection_and_fd(sock_path: str) -> None:
    async def main() -> None:
        rec = Recorder()
        async with session(sock_path, rec) as (agent, conn, client):
            for bad in (b"\xff\xff\xff", b"\x0a" * (wire.MAX_DATAGRAM + 10)):
                r, w = os.pipe()
                try:
                    conn.sendmsg([bad], [(socket.SOL_SOCKET, socket.SCM_RIGHTS,
                                          w.to_bytes(4, "little"))])
                    os.close(w)
                    # The client hangs up on us (EOF) and comes back with a new hello.
                    with pytest.raises(wire.PeerClosed):
                        await asyncio.wait_for(wire.recv(conn, zds_pb2.WorkloadResponse, 0), 3)
                    assert write_end_closed_everywhere(r)
                finally:
                    os.close(r)
                wire.close(conn)
                conn = await agent.accept()
                await until(lambda: client.connected)
            assert await agent.ask(conn, SNAPSHOT_SENT) == ""
            assert rec.snapshots == [set()]
            wire.close(conn)
    run(main())


def test_connects_with_backoff_once_agent_appears(sock_path: str) -> None:
    async def main() -> None:
        client = ZdsClient(sock_path, Recorder(), backoff_max=0.05)
        client.start()
        try:
            await asyncio.sleep(0.2)  # several failed attempts
            assert not client.connected
            agent = FakeAgent(sock_path)
            try:
                conn = await agent.accept()
                await until(lambda: client.connected)
                assert await agent.ask(conn, SNAPSHOT_SENT) == ""
                assert client.ready
                wire.close(conn)
                await until(lambda: not client.connected)
                wire.close(await agent.accept())  # reconnects after the hang-up
            finally:
                agent.close()
        finally:
            await client.close()
    run(main())
