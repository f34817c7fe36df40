"""ZdsServer and ZdsClient together, over a real socket, with real netns fds."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.zds import Workload, ZdsError, ZdsServer
from proxy.inpod.zds_client import WorkloadInfo, ZdsClient
from testing.lab import Lab, Node
from tests.zds import Recorder, inode, run, short_dir, until

# Lab namespaces need root: the shared conftest turns this marker into a clear failure.
pytestmark = pytest.mark.kernel


def serve(path: str | Path, pods: list[Workload], ack_timeout: float = 1.0,
          keepalive: float = 5.0) -> ZdsServer:
    return ZdsServer(path, lambda: list(pods), ack_timeout=ack_timeout, keepalive=keepalive,
                     accepts_per_second=100.0)


@pytest.fixture(scope="module")
def netns() -> Iterator[list[Node]]:
    with Lab("z") as lab:
        yield [lab.node(f"p{i}") for i in range(3)]


@pytest.fixture
def sock_path() -> Iterator[str]:
    with short_dir() as d:
        yield f"{d}/zds.sock"


def wl(node: Node, uid: str | None = None) -> Workload:
    return Workload(uid=uid or f"uid-{node.name}", name=node.name, namespace="ns",
                    service_account="sa", netns=node.path)


async def ready_client(path: str, handler: Recorder) -> ZdsClient:
    client = ZdsClient(path, handler)
    client.start()
    await asyncio.wait_for(client.ready_event.wait(), 3)
    return client


def test_snapshot_adds_keeps_and_done(sock_path: str, netns: list[Node]) -> None:
    pods = [wl(n) for n in netns] + [Workload("gone", "gone", "ns", "sa", "/nonexistent/ns")]

    async def main() -> None:
        async with serve(sock_path, pods) as server:
            assert not server.connected
            rec = Recorder()
            client = await ready_client(sock_path, rec)
            try:
                assert client.ready and client.connected
                assert rec.of("add") == [p.uid for p in pods[:3]]
                for p in pods[:3]:
                    assert rec.inodes[p.uid] == inode(p.netns)
                    assert rec.infos[p.uid] == WorkloadInfo(p.name, "ns", "sa")
                assert rec.of("keep") == ["gone"]
                assert rec.snapshots == [{p.uid for p in pods}]
                await until(lambda: server.synced_count == 1)
                assert server.connected and server.connection_count == 1
            finally:
                await client.close()
    run(main())


def test_add_goes_to_newest_delete_to_all(sock_path: str, netns: list[Node]) -> None:
    async def main() -> None:
        async with serve(sock_path, []) as server:
            old, new = Recorder(), Recorder()
            c_old = await ready_client(sock_path, old)
            await until(lambda: server.connection_count == 1)
            c_new = await ready_client(sock_path, new)
            # Adds go to the newest proxy once the server has its SnapshotSent ack.
            await until(lambda: server.synced_count == 2)
            try:
                await server.add(wl(netns[0]))
                assert new.of("add") == [wl(netns[0]).uid]
                assert new.inodes[wl(netns[0]).uid] == inode(netns[0].path)
                assert old.of("add") == []
                await server.delete("some-uid")
                assert old.of("delete") == ["some-uid"]
                assert new.of("delete") == ["some-uid"]
                # The newest leaves: adds fall back to the older connection.
                await c_new.close()
                await until(lambda: server.connection_count == 1)
                await server.add(wl(netns[1]))
                assert old.of("add") == [wl(netns[1]).uid]
            finally:
                await c_old.close()
                await c_new.close()
    run(main())


def test_no_proxy(sock_path: str, netns: list[Node]) -> None:
    async def main() -> None:
        async with serve(sock_path, []) as server:
            with pytest.raises(ZdsError, match="no proxy connected"):
                await server.add(wl(netns[0]))
            await server.delete("x")  # nobody to tell: not an error
    run(main())


def test_nack_surfaces_as_zds_error(sock_path: str, netns: list[Node]) -> None:
    bad = wl(netns[0])

    async def main() -> None:
        async with serve(sock_path, []) as server:
            client = await ready_client(sock_path, Recorder(fail={bad.uid}))
            try:
                await until(lambda: server.connected)
                with pytest.raises(ZdsError, match=f"cannot add {bad.uid}"):
                    await server.add(bad)
                assert server.connected  # a NACK is an answer, the connection is fine
                await server.add(wl(netns[1]))
            finally:
                await client.close()
    run(main())


def test_ack_timeout_drops_connection_then_resync(sock_path: str, netns: list[Node]) -> None:
    slow = wl(netns[0])

    async def main() -> None:
        server = serve(sock_path, [], ack_timeout=0.2)
        async with server:
            rec = Recorder(add_delay=0.6)
            client = await ready_client(sock_path, rec)
            try:
                await until(lambda: server.connected)
                with pytest.raises(ZdsError, match="no ack"):
                    await server.add(slow)
                assert server.connection_count == 0
                # The proxy notices (its late ack fails), reconnects and resyncs.
                await until(lambda: len(rec.snapshots) == 2)
                await until(lambda: server.synced_count == 1)
            finally:
                await client.close()
    run(main())


def test_add_during_snapshot_is_part_of_it(sock_path: str, netns: list[Node]) -> None:
    """A pod enrolled while a new proxy's snapshot is in flight reaches that proxy before
    SnapshotSent, so the snapshot reconcile does not drain it."""
    early, late = wl(netns[0]), wl(netns[1])

    async def main() -> None:
        async with serve(sock_path, [early]) as server:
            rec = Recorder(add_delay=0.2)
            client = ZdsClient(sock_path, rec)
            client.start()
            try:
                await until(lambda: rec.of("add") == [early.uid])
                await server.add(late)
                await asyncio.wait_for(client.ready_event.wait(), 3)
                assert rec.of("add") == [early.uid, late.uid]
                assert rec.snapshots == [{early.uid, late.uid}]
            finally:
                await client.close()
    run(main())


def test_client_reconnects_after_server_restart(sock_path: str, netns: list[Node]) -> None:
    async def main() -> None:
        rec = Recorder()
        server = serve(sock_path, [wl(netns[0])])
        await server.start()
        client = await ready_client(sock_path, rec)
        try:
            await server.close()
            assert not Path(sock_path).exists()
            await until(lambda: not client.connected)
            assert client.ready  # stays ready: served workloads keep running
            server = serve(sock_path, [wl(netns[1])])
            await server.start()
            await until(lambda: len(rec.snapshots) == 2)
            assert rec.snapshots[1] == {wl(netns[1]).uid}
            assert rec.inodes[wl(netns[1]).uid] == inode(netns[1].path)
            assert client.connected
        finally:
            await client.close()
            await server.close()
    run(main())


def test_disconnected_client_removed_at_once(sock_path: str) -> None:
    async def main() -> None:
        # keepalive far beyond the wait: removal must come from seeing EOF, not polling
        async with serve(sock_path, [], keepalive=60.0) as server:
            counts: list[int] = []
            server._on_count = counts.append
            client = await ready_client(sock_path, Recorder())
            await until(lambda: server.connection_count == 1)
            await client.close()
            await until(lambda: server.connection_count == 0, timeout=1.0)
            assert counts == [1, 0]
    run(main())


def test_socket_file_permissions_and_stale_file(tmp_path: Path) -> None:
    with short_dir() as d:
        path = Path(d) / "sub" / "zds.sock"

        async def main() -> None:
            path.parent.mkdir()
            path.write_text("stale")
            async with serve(path, []):
                assert path.is_socket()
                assert path.stat().st_mode & 0o777 == 0o600
            assert not path.exists()
            fresh = Path(d) / "new" / "zds.sock"
            async with serve(fresh, []):
                assert fresh.parent.stat().st_mode & 0o777 == 0o700
        run(main())


def test_fds_not_leaked(sock_path: str, netns: list[Node]) -> None:
    """After a snapshot and a few adds and deletes, the process holds no extra fds."""
    def open_fds() -> int:
        return len(os.listdir("/proc/self/fd"))

    async def main() -> None:
        before = open_fds()
        async with serve(sock_path, [wl(n) for n in netns]) as server:
            client = await ready_client(sock_path, Recorder(fail={"bad"}))
            try:
                await until(lambda: server.synced_count == 1)
                for n in netns:
                    await server.add(wl(n))
                with pytest.raises(ZdsError):
                    await server.add(wl(netns[0], uid="bad"))
                await server.delete("x")
            finally:
                await client.close()
        await asyncio.sleep(0.05)
        assert open_fds() == before
    run(main())


def test_works_on_uvloop(sock_path: str, netns: list[Node]) -> None:
    uvloop = pytest.importorskip("uvloop")

    async def main() -> None:
        async with serve(sock_path, [wl(netns[0])]) as server:
            rec = Recorder()
            client = await ready_client(sock_path, rec)
            try:
                await until(lambda: server.synced_count == 1)
                await server.add(wl(netns[1]))
                await server.delete(wl(netns[0]).uid)
                assert rec.of("add") == [wl(netns[0]).uid, wl(netns[1]).uid]
                assert rec.of("delete") == [wl(netns[0]).uid]
            finally:
                await client.close()
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(asyncio.wait_for(main(), 10))


def test_cancelled_add_does_not_desync(sock_path: str, netns: list[Node]) -> None:
    """A caller that gives up mid-request must not leave its ack to be taken by the next
    request: the exchange finishes in the background and the connection stays usable."""
    async def main() -> None:
        async with serve(sock_path, []) as server:
            rec = Recorder(add_delay=0.2)
            client = await ready_client(sock_path, rec)
            try:
                await until(lambda: server.connected)
                task = asyncio.create_task(server.add(wl(netns[0])))
                await until(lambda: rec.of("add") == [wl(netns[0]).uid])
                task.cancel()
                rec.add_delay = 0.0
                await server.add(wl(netns[1]))
                assert rec.of("add") == [wl(netns[0]).uid, wl(netns[1]).uid]
                assert server.connection_count == 1 and len(rec.snapshots) == 1
            finally:
                await client.close()
    run(main())
