"""Which proxy takes a new pod: only one whose snapshot was acked; a stalled one is passed
over for the next, within the caller's budget, and closed once its ack timeout passes."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator

import pytest

from agent.zds import Workload, ZdsError, ZdsServer
from core.wire import zds as wire
from meshpb import zds_pb2
from testing.lab import Lab, Node
from tests.zds import Recorder, run, short_dir, until
from tests.zds.test_server_client import ready_client, wl

pytestmark = pytest.mark.kernel


@pytest.fixture(scope="module")
def netns() -> Iterator[list[Node]]:
    with Lab("el") as lab:
        yield [lab.node(f"p{i}") for i in range(2)]


@pytest.fixture
def sock_path() -> Iterator[str]:
    with short_dir() as d:
        yield f"{d}/zds.sock"


def serve(path: str, pods: list[Workload], ack_timeout: float) -> ZdsServer:
    return ZdsServer(path, lambda: list(pods), ack_timeout=ack_timeout,
                     accepts_per_second=100.0)


def test_silent_newest_peer_is_passed_over(sock_path: str, netns: list[Node]) -> None:
    async def main() -> None:
        async with serve(sock_path, [wl(netns[1])], ack_timeout=5.0) as server:
            rec = Recorder()
            client = await ready_client(sock_path, rec)
            silent = wire.seqpacket()
            try:
                await until(lambda: server.synced_count == 1)
                await asyncio.get_running_loop().sock_connect(silent, sock_path)
                await wire.send(silent, zds_pb2.ZdsHello(version=zds_pb2.V1))
                await until(lambda: server.connection_count == 2)
                started = time.monotonic()
                await server.add(wl(netns[0]), 2.0)
                assert time.monotonic() - started < 0.5
                assert rec.of("add")[-1] == wl(netns[0]).uid
                assert server.connected and server.synced_count == 1
            finally:
                wire.close(silent)
                await client.close()
    run(main())


def test_only_a_silent_peer_fails_within_the_budget(sock_path: str, netns: list[Node]) -> None:
    async def main() -> None:
        async with serve(sock_path, [wl(netns[1])], ack_timeout=5.0) as server:
            silent = wire.seqpacket()
            try:
                await asyncio.get_running_loop().sock_connect(silent, sock_path)
                await wire.send(silent, zds_pb2.ZdsHello(version=zds_pb2.V1))
                await until(lambda: server.connection_count == 1)
                assert not server.connected  # hello alone does not make it eligible
                started = time.monotonic()
                with pytest.raises(ZdsError, match=r"no proxy acked the pod.*stalled"):
                    await server.add(wl(netns[0]), 0.4)
                assert 0.35 < time.monotonic() - started < 1.0
            finally:
                wire.close(silent)
    run(main())


def test_stalled_proxy_falls_back_then_is_closed(sock_path: str, netns: list[Node]) -> None:
    async def main() -> None:
        async with serve(sock_path, [], ack_timeout=1.0) as server:
            old, new = Recorder(), Recorder()
            c_old = await ready_client(sock_path, old)
            await until(lambda: server.synced_count == 1)
            c_new = await ready_client(sock_path, new)
            await until(lambda: server.synced_count == 2)
            new.add_delay = 3.0  # alive, but its adds never ack within the ack timeout
            try:
                started = time.monotonic()
                await server.add(wl(netns[0]), 1.0)
                assert time.monotonic() - started < 0.9
                assert old.of("add") == [wl(netns[0]).uid]  # the fallback took it
                # Stalled: the next pod goes straight to the older proxy.
                started = time.monotonic()
                await server.add(wl(netns[1]), 1.0)
                assert time.monotonic() - started < 0.3
                assert old.of("add") == [wl(netns[0]).uid, wl(netns[1]).uid]
                # No ack within ack_timeout: the stalled connection is closed.
                await until(lambda: len(new.snapshots) == 2, timeout=4)
            finally:
                await c_old.close()
                await c_new.close()
    run(main())
