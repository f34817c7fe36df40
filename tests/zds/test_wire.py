"""wire.py: datagram framing, fd passing, truncation, fd hygiene, and the exact bytes."""

from __future__ import annotations

import array
import os
import socket
from typing import Any

import pytest

from core.wire import zds as wire
from meshpb import zds_pb2
from tests.zds import SELF_NETNS, inode, run, seqpair, write_end_closed_everywhere


def _del(uid: str) -> zds_pb2.WorkloadRequest:
    return zds_pb2.WorkloadRequest(**{"del": zds_pb2.DelWorkload(uid=uid)})


def _rights(*fds: int) -> list[tuple[int, int, bytes]]:
    return [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds).tobytes())]


# -- wire compatibility: field numbers must never drift from istio's zds.proto ----------------

@pytest.mark.parametrize(("msg", "expected"), [
    (zds_pb2.ZdsHello(version=zds_pb2.V1), b"\x08\x01"),
    (_del("x"), b"\x12\x03\x12\x01x"),
    (zds_pb2.WorkloadRequest(keep=zds_pb2.KeepWorkload(uid="k")), b"\x2a\x03\x0a\x01k"),
    (zds_pb2.WorkloadRequest(snapshot_sent=zds_pb2.SnapshotSent()), b"\x1a\x00"),
    (zds_pb2.WorkloadRequest(add=zds_pb2.AddWorkload(
        uid="u", workload_info=zds_pb2.WorkloadInfo(name="n", namespace="ns",
                                                    service_account="sa"))),
     b"\x0a\x10" b"\x0a\x01u" b"\x12\x0b" b"\x0a\x01n" b"\x12\x02ns" b"\x1a\x02sa"),
    (zds_pb2.WorkloadResponse(ack=zds_pb2.Ack()), b"\x0a\x00"),
    (zds_pb2.WorkloadResponse(ack=zds_pb2.Ack(error="e")), b"\x0a\x03\x0a\x01e"),
])
def test_exact_bytes(msg: wire.Message, expected: bytes) -> None:
    assert msg.SerializeToString() == expected


# -- round trips ------------------------------------------------------------------------------

def test_round_trip_without_fd() -> None:
    async def main() -> None:
        a, b = seqpair()
        try:
            await wire.send(a, _del("pod-1"))
            msg, fds = await wire.recv(b, zds_pb2.WorkloadRequest)
            assert fds == []
            assert msg.WhichOneof("payload") == "del"
            assert getattr(msg, "del").uid == "pod-1"
        finally:
            a.close()
            b.close()
    run(main())


def test_round_trip_with_netns_fd() -> None:
    async def main() -> None:
        a, b = seqpair()
        fd = os.open(SELF_NETNS, os.O_RDONLY | os.O_CLOEXEC)
        try:
            req = zds_pb2.WorkloadRequest(add=zds_pb2.AddWorkload(uid="u1"))
            await wire.send(a, req, [fd])
            msg, fds = await wire.recv(b, zds_pb2.WorkloadRequest)
            assert msg.add.uid == "u1"
            assert len(fds) == 1 and fds[0] != fd
            assert inode(fds[0]) == inode(SELF_NETNS)
            assert not os.get_inheritable(fds[0])  # received with MSG_CMSG_CLOEXEC
            os.close(fds[0])
        finally:
            os.close(fd)
            a.close()
            b.close()
    run(main())


def test_recv_waits_for_data() -> None:
    async def main() -> None:
        import asyncio
        a, b = seqpair()
        try:
            task = asyncio.create_task(wire.recv(b, zds_pb2.ZdsHello, max_fds=0))
            await asyncio.sleep(0.05)
            assert not task.done()
            await wire.send(a, zds_pb2.ZdsHello(version=zds_pb2.V1))
            msg, _ = await task
            assert msg.version == zds_pb2.V1
        finally:
            a.close()
            b.close()
    run(main())


# -- errors, and fds closed on every error path ------------------------------------------------

@pytest.mark.parametrize(("payload", "msg_type", "max_fds", "error"), [
    (b"\x0a" * (wire.MAX_DATAGRAM + 1), zds_pb2.WorkloadRequest, 1, wire.Truncated),
    (b"\x0a\x00", zds_pb2.WorkloadResponse, 0, wire.Truncated),  # an fd where none may be
    (b"\xff\xff\xff\xff", zds_pb2.WorkloadRequest, 1, wire.ProtocolError),  # garbage
], ids=["truncated", "fd-where-none-expected", "garbage"])
def test_bad_datagram_with_fd_is_refused_and_the_fd_closed(
        payload: bytes, msg_type: Any, max_fds: int, error: type[Exception]) -> None:
    async def main() -> None:
        a, b = seqpair()
        r, w = os.pipe()
        try:
            a.sendmsg([payload], _rights(w))
            os.close(w)
            with pytest.raises(error):
                await wire.recv(b, msg_type, max_fds=max_fds)
            assert write_end_closed_everywhere(r)
        finally:
            os.close(r)
            a.close()
            b.close()
    run(main())


def test_too_many_fds_refused_and_all_closed() -> None:
    async def main() -> None:
        a, b = seqpair()
        r1, w1 = os.pipe()
        r2, w2 = os.pipe()
        try:
            a.sendmsg([_del("x").SerializeToString()], _rights(w1, w2))
            os.close(w1)
            os.close(w2)
            with pytest.raises(wire.ProtocolError, match="2 fds"):
                await wire.recv(b, zds_pb2.WorkloadRequest, max_fds=1)
            assert write_end_closed_everywhere(r1)
            assert write_end_closed_everywhere(r2)
        finally:
            for fd in (r1, r2):
                os.close(fd)
            a.close()
            b.close()
    run(main())


def test_peer_closed() -> None:
    async def main() -> None:
        a, b = seqpair()
        a.close()
        try:
            with pytest.raises(wire.PeerClosed):
                await wire.recv(b, zds_pb2.WorkloadRequest)
            with pytest.raises(wire.PeerClosed):
                await wire.send(b, _del("x"))
        finally:
            b.close()
    run(main())


def test_oversized_message_refused() -> None:
    async def main() -> None:
        a, b = seqpair()
        try:
            with pytest.raises(wire.ProtocolError, match="exceeds"):
                await wire.send(a, _del("x" * wire.MAX_DATAGRAM))
        finally:
            a.close()
            b.close()
    run(main())


def test_peer_alive() -> None:
    a, b = seqpair()
    try:
        assert wire.peer_alive(b)
        a.close()
        assert not wire.peer_alive(b)
    finally:
        b.close()


def test_many_fds_beyond_buffer_is_ctrunc_and_all_closed() -> None:
    async def main() -> None:
        a, b = seqpair()
        pipes = [os.pipe() for _ in range(4)]
        try:
            a.sendmsg([b"\x0a\x00"], _rights(*(w for _, w in pipes)))
            for _, w in pipes:
                os.close(w)
            with pytest.raises(wire.Truncated, match="ancillary"):
                await wire.recv(b, zds_pb2.WorkloadResponse, max_fds=1)
            assert all(write_end_closed_everywhere(r) for r, _ in pipes)
        finally:
            for r, _ in pipes:
                os.close(r)
            a.close()
            b.close()
    run(main())
