"""The in-pod state machine (proxy/inpod/manager.py) with a fake pod proxy and fake netns
fds: add, re-add, delete, snapshot reconcile, drain, failed starts. No root, no netns; the
real pod proxy is tested on the kernel in tests/proxy, tests/zds, tests/dns, tests/mesh.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import tempfile
from collections.abc import AsyncIterator, Coroutine, Iterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
from prometheus_client import REGISTRY

from core.wire import zds as wire
from meshpb import zds_pb2
from proxy.config import ProxyConfig
from proxy.inpod.manager import UNKNOWN, NetnsFds, Pod, WorkloadManager
from proxy.inpod.workload import PodProxy
from proxy.inpod.zds_client import WorkloadInfo, ZdsClient

Req = zds_pb2.WorkloadRequest


def run(coro: Coroutine[Any, Any, None]) -> None:
    async def capped() -> None:
        async with asyncio.timeout(10):
            await coro
    asyncio.run(capped())


class FakeNetns:
    """Netns fds as plain numbers: each one names an inode; closing one twice, or one never
    handed out, fails the test (as EBADF, or a stray close of someone else's fd, would)."""

    def __init__(self) -> None:
        self._next = 1000
        self.inodes: dict[int, int] = {}
        self.closed: list[int] = []

    def open(self, inode: int) -> int:
        self._next += 1
        self.inodes[self._next] = inode
        return self._next

    def inode(self, fd: int) -> int:
        assert fd in self.inodes and fd not in self.closed, f"fd {fd} is not open"
        return self.inodes[fd]

    def close(self, fd: int) -> None:
        assert fd in self.inodes and fd not in self.closed, f"fd {fd} closed twice or unknown"
        self.closed.append(fd)

    def still_open(self) -> set[int]:
        return set(self.inodes) - set(self.closed)


class RealFds:
    """Real fds (they crossed a real ZDS socket), their closes recorded."""

    def __init__(self) -> None:
        self.closed: list[int] = []

    def inode(self, fd: int) -> int:
        return os.fstat(fd).st_ino

    def close(self, fd: int) -> None:
        self.closed.append(fd)
        os.close(fd)


class FakePod:
    """A pod proxy that records what the manager asks of it."""

    def __init__(self, world: World, uid: str, info: WorkloadInfo, netns_fd: int) -> None:
        self.world = world
        self.uid = uid
        self.name, self.namespace = info.name, info.namespace
        self.netns_fd = netns_fd
        self.netns_inode = world.fds.inode(netns_fd)
        self.ips: set[str] = set()
        self.state = "made"
        self.grace: float | None = None

    async def start(self) -> None:
        self.world.events.append(("start", self.uid, self.netns_inode))
        await asyncio.sleep(0)
        if self.uid in self.world.fail_start:
            raise OSError(f"listener_in {self.uid}: Address already in use")
        self.ips = set(self.world.ips.get((self.uid, self.netns_inode), ()))
        self.state = "serving"

    async def stop_accepting(self) -> None:
        self.world.events.append(("stop_accepting", self.uid, self.netns_inode))
        await asyncio.sleep(0)
        self.state = "draining"

    async def stop(self, grace: float = 0.0) -> None:
        self.world.events.append(("stop", self.uid, self.netns_inode))
        await asyncio.sleep(0)
        self.grace = grace
        self.state = "stopped"
        self.world.fds.close(self.netns_fd)

    def dump(self) -> dict[str, Any]:
        return {"uid": self.uid, "state": self.state}


class World:
    def __init__(self, fds: FakeNetns | RealFds | None = None) -> None:
        self.fds = fds or FakeNetns()
        self.made: list[FakePod] = []
        self.events: list[tuple[str, str, int]] = []
        self.fail_start: set[str] = set()
        self.ips: dict[tuple[str, int], set[str]] = {}  # (uid, netns inode) -> its IPs

    def make(self, uid: str, info: WorkloadInfo, netns_fd: int) -> Pod:
        pod = FakePod(self, uid, info, netns_fd)
        self.made.append(pod)
        return pod

    def manager(self) -> WorkloadManager:
        return WorkloadManager(ProxyConfig(), pods=self.make,
                               netns=NetnsFds(inode=self.fds.inode, close=self.fds.close))

    def of(self, kind: str) -> list[str]:
        return [uid for k, uid, _ in self.events if k == kind]


def info(name: str) -> WorkloadInfo:
    return WorkloadInfo(name, "default", "sa")


@pytest.fixture
def world() -> World:
    return World()


async def add(world: World, mgr: WorkloadManager, uid: str, inode: int,
              ips: set[str] | None = None) -> None:
    assert isinstance(world.fds, FakeNetns)
    world.ips[(uid, inode)] = ips if ips is not None else {f"10.0.0.{inode % 250}"}
    await mgr.add(uid, info(uid), world.fds.open(inode))


def open_fds(world: World) -> set[int]:
    assert isinstance(world.fds, FakeNetns)
    return world.fds.still_open()


def active_pods() -> float | None:
    return REGISTRY.get_sample_value("workload_manager_active_proxy_count")


# ---- add ---------------------------------------------------------------------------------

def test_add_starts_the_pod_and_indexes_its_ips(world: World) -> None:
    async def main() -> None:
        mgr = world.manager()
        await add(world, mgr, "a", 1, {"10.0.0.1", "fd00::1"})
        pod = world.made[0]
        assert mgr.pods == {"a": pod} and pod.state == "serving"
        assert mgr.lookup("10.0.0.1") == mgr.lookup("fd00::1") == ("a", "default")
        assert mgr.lookup("10.0.0.9") == UNKNOWN
        assert active_pods() == 1
        assert mgr.dump() == {"workloads": [{"uid": "a", "state": "serving"}]}
        assert open_fds(world) == {pod.netns_fd}  # the pod owns it now
    run(main())


def test_re_add_in_the_same_netns_keeps_the_running_pod(world: World) -> None:
    async def main() -> None:
        mgr = world.manager()
        await add(world, mgr, "a", 1)
        first = world.made[0]
        await add(world, mgr, "a", 1)  # a new fd on the same netns (a snapshot after reconnect)
        assert len(world.made) == 1 and mgr.pods == {"a": first}
        assert world.of("start") == ["a"] and world.of("stop") == []
        assert open_fds(world) == {first.netns_fd}  # the duplicate was closed
    run(main())


def test_re_add_with_a_new_netns_replaces_the_pod(world: World) -> None:
    """Same uid, new netns: the sandbox was recreated. The old pod stops first (its fd
    closed), then the new one serves, with the new netns's IPs."""
    async def main() -> None:
        mgr = world.manager()
        await add(world, mgr, "a", 1, {"10.0.0.1"})
        await add(world, mgr, "a", 2, {"10.0.0.2"})
        old, new = world.made
        assert world.events == [("start", "a", 1), ("stop", "a", 1), ("start", "a", 2)]
        assert old.state == "stopped" and old.grace == 0.0
        assert mgr.pods == {"a": new} and new.state == "serving"
        assert mgr.lookup("10.0.0.2") == ("a", "default")
        assert mgr.lookup("10.0.0.1") == UNKNOWN
        assert open_fds(world) == {new.netns_fd}
    run(main())


# ---- delete ------------------------------------------------------------------------------

def test_delete_of_an_unknown_uid_changes_nothing(world: World) -> None:
    """Deletes go to every proxy of the node, so most name pods this one never had."""
    async def main() -> None:
        mgr = world.manager()
        await add(world, mgr, "a", 1)
        await mgr.delete("never-seen")
        assert list(mgr.pods) == ["a"] and world.made[0].state == "serving"
        assert world.of("stop") == []
    run(main())


def test_delete_stops_the_pod_and_forgets_its_ips(world: World) -> None:
    async def main() -> None:
        mgr = world.manager()
        await add(world, mgr, "a", 1, {"10.0.0.1"})
        await add(world, mgr, "b", 2, {"10.0.0.2"})
        await mgr.delete("a")
        assert list(mgr.pods) == ["b"]
        assert world.made[0].state == "stopped" and world.made[0].grace == 0.0
        assert mgr.lookup("10.0.0.1") == UNKNOWN
        assert mgr.lookup("10.0.0.2") == ("b", "default")
        assert active_pods() == 1
        await mgr.delete("a")  # twice: still fine, nothing stopped twice
        assert world.of("stop") == ["a"]
    run(main())


# ---- snapshot reconcile ------------------------------------------------------------------

def test_snapshot_stops_the_pods_it_lacks_and_keeps_the_others(world: World) -> None:
    async def main() -> None:
        mgr = world.manager()
        for i, uid in enumerate(("a", "b", "c"), 1):
            await add(world, mgr, uid, i)
        a, b, c = world.made
        await mgr.snapshot_done({"a", "c", "not-ours"})
        assert set(mgr.pods) == {"a", "c"}
        assert b.state == "stopped"
        assert a.state == c.state == "serving"
        assert world.of("start") == ["a", "b", "c"]  # nothing restarted
        assert mgr.lookup(next(iter(b.ips))) == UNKNOWN
        assert open_fds(world) == {a.netns_fd, c.netns_fd}
    run(main())


def test_keep_of_an_unknown_uid_is_harmless(world: World) -> None:
    async def main() -> None:
        mgr = world.manager()
        await add(world, mgr, "a", 1)
        await mgr.keep("ghost")
        await mgr.keep("a")
        assert list(mgr.pods) == ["a"] and world.made[0].state == "serving"
        assert world.of("stop") == [] and "ghost" not in mgr.pods
    run(main())


# ---- drain -------------------------------------------------------------------------------

def test_drain_closes_every_listener_before_any_pod_stops_and_keeps_connections_for_grace(
        world: World) -> None:
    """Upgrade: all listeners close at once (queued connections move to the new proxy),
    and only then does each pod wait up to `grace` for its live connections."""
    async def main() -> None:
        mgr = world.manager()
        for i, uid in enumerate(("a", "b", "c"), 1):
            await add(world, mgr, uid, i)
        await mgr.drain(7.5)
        kinds = [k for k, _, _ in world.events if k != "start"]
        assert kinds == ["stop_accepting"] * 3 + ["stop"] * 3
        assert sorted(world.of("stop_accepting")) == sorted(world.of("stop")) == ["a", "b", "c"]
        assert all(p.grace == 7.5 and p.state == "stopped" for p in world.made)
        assert mgr.pods == {} and active_pods() == 0
        assert open_fds(world) == set()
    run(main())


def test_a_delete_during_a_drain_waits_for_it(world: World) -> None:
    """The drain holds the state: a request arriving meanwhile sees its end, not a pod half
    stopped (and never stops one twice)."""
    async def main() -> None:
        mgr = world.manager()
        await add(world, mgr, "a", 1)
        drain = asyncio.create_task(mgr.drain(1.0))
        await asyncio.sleep(0)
        await mgr.delete("a")
        assert drain.done()
        assert world.of("stop") == ["a"] and world.made[0].grace == 1.0
    run(main())


# ---- failures ----------------------------------------------------------------------------

def test_a_pod_that_fails_to_start_is_not_enrolled(world: World) -> None:
    async def main() -> None:
        mgr = world.manager()
        await add(world, mgr, "a", 1, {"10.0.0.1"})
        world.fail_start.add("b")
        with pytest.raises(OSError, match="listener_in b"):
            await add(world, mgr, "b", 2, {"10.0.0.2"})
        a, b = world.made
        assert list(mgr.pods) == ["a"] and a.state == "serving"
        assert b.state == "stopped"  # whatever it had made is taken down, its fd closed
        assert mgr.lookup("10.0.0.2") == UNKNOWN
        assert open_fds(world) == {a.netns_fd}
        world.fail_start.clear()
        await add(world, mgr, "b", 2, {"10.0.0.2"})  # the agent's retry works
        assert set(mgr.pods) == {"a", "b"}
    run(main())


def test_a_pod_that_cannot_be_made_leaves_no_fd_open(world: World) -> None:
    """The manager owns the fd from the call on: if the factory itself raises (the fd's
    netns cannot be read), nothing else would close it."""
    def broken(uid: str, info: WorkloadInfo, netns_fd: int) -> Pod:
        raise OSError("fstat: Bad file descriptor")

    async def main() -> None:
        mgr = WorkloadManager(ProxyConfig(), pods=broken,
                              netns=NetnsFds(inode=world.fds.inode, close=world.fds.close))
        with pytest.raises(OSError, match="fstat"):
            await add(world, mgr, "a", 1)
        assert mgr.pods == {} and open_fds(world) == set()
    run(main())


def test_a_failed_start_after_a_new_netns_leaves_the_uid_unserved(world: World) -> None:
    async def main() -> None:
        mgr = world.manager()
        await add(world, mgr, "a", 1)
        world.fail_start.add("a")
        with pytest.raises(OSError):
            await add(world, mgr, "a", 2)
        assert mgr.pods == {} and all(p.state == "stopped" for p in world.made)
        assert open_fds(world) == set()
    run(main())


def test_the_default_factory_makes_pod_proxies_sharing_the_node_limits() -> None:
    async def main() -> None:
        mgr = WorkloadManager(ProxyConfig())
        with open("/dev/null") as f1, open("/dev/null") as f2:
            one = mgr._make_pod("a", info("a"), f1.fileno())
            two = mgr._make_pod("b", info("b"), f2.fileno())
        assert isinstance(one, PodProxy) and isinstance(two, PodProxy)
        assert one.limits is two.limits is mgr.limits
        assert one.lookup == mgr.lookup and one.cfg is mgr.cfg
    run(main())


# ---- through the ZDS client --------------------------------------------------------------

@pytest.fixture
def sock_path() -> Iterator[str]:
    d = tempfile.mkdtemp(prefix="inpod", dir="/tmp")  # unix socket paths: 108 bytes at most
    try:
        yield f"{d}/zds.sock"
    finally:
        shutil.rmtree(d, ignore_errors=True)


class Agent:
    """The agent's end of one ZDS connection, hand-driven."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock

    async def ask(self, req: Req, fd: int | None = None) -> str:
        await wire.send(self.sock, req, [] if fd is None else [fd])
        resp, _ = await asyncio.wait_for(wire.recv(self.sock, zds_pb2.WorkloadResponse, 0), 3)
        return str(resp.ack.error)

    async def add(self, uid: str, path: str) -> str:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        try:
            return await self.ask(Req(add=zds_pb2.AddWorkload(
                uid=uid, workload_info=zds_pb2.WorkloadInfo(name=uid, namespace="default"))),
                fd)
        finally:
            os.close(fd)  # ours; the proxy got a copy


@asynccontextmanager
async def connected(path: str, mgr: WorkloadManager) -> AsyncIterator[Agent]:
    listener = wire.seqpacket()
    listener.bind(path)
    listener.listen(1)
    client = ZdsClient(path, mgr, backoff_max=0.05)
    client.start()
    try:
        sock, _ = await asyncio.wait_for(
            asyncio.get_running_loop().sock_accept(listener), 3)
        sock.setblocking(False)
        hello, _ = await wire.recv(sock, zds_pb2.ZdsHello, max_fds=0)
        assert hello.version == zds_pb2.V1
        try:
            yield Agent(sock)
        finally:
            wire.close(sock)
    finally:
        await client.close()
        wire.close(listener)
        os.unlink(path)  # the next agent binds it again


def test_a_failed_start_is_the_zds_ack_error(sock_path: str, tmp_path: Any) -> None:
    """The agent sees the start error as the add's NACK (and fails the CNI ADD); the pod is
    not served, the connection goes on."""
    fds = RealFds()
    world = World(fds)
    world.fail_start.add("b")
    netns = {n: str(tmp_path / n) for n in ("a", "b", "c")}
    for p in netns.values():
        open(p, "w").close()

    async def main() -> None:
        mgr = world.manager()
        async with connected(sock_path, mgr) as agent:
            assert await agent.add("a", netns["a"]) == ""
            assert await agent.add("b", netns["b"]) == \
                "listener_in b: Address already in use"
            assert await agent.ask(Req(snapshot_sent=zds_pb2.SnapshotSent())) == ""
            assert list(mgr.pods) == ["a"]
            assert [p.state for p in world.made] == ["serving", "stopped"]
            assert sorted(fds.closed) == [world.made[1].netns_fd]  # b's fd, by its stop()
            assert await agent.add("c", netns["c"]) == ""  # a live add after the snapshot
            assert set(mgr.pods) == {"a", "c"}
        await mgr.drain(0)
        assert len(fds.closed) == 3
    run(main())


def test_a_reconnect_snapshot_keeps_kept_pods_and_stops_the_rest(
        sock_path: str, tmp_path: Any) -> None:
    """After the agent comes back, its snapshot names what stays: pods it re-adds in the same
    netns (untouched), pods it keeps (it could not reopen their netns), nothing else."""
    fds = RealFds()
    world = World(fds)
    netns = {n: str(tmp_path / n) for n in ("a", "b", "c")}
    for p in netns.values():
        open(p, "w").close()

    async def main() -> None:
        mgr = world.manager()
        async with connected(sock_path, mgr) as agent:
            for uid in ("a", "b", "c"):
                assert await agent.add(uid, netns[uid]) == ""
            assert await agent.ask(Req(snapshot_sent=zds_pb2.SnapshotSent())) == ""
        a, b, c = world.made
        assert a.state == b.state == c.state == "serving"  # the agent left: nothing changes
        async with connected(sock_path, mgr) as agent:
            assert await agent.add("a", netns["a"]) == ""  # same netns: the same pod
            assert await agent.ask(Req(keep=zds_pb2.KeepWorkload(uid="b"))) == ""
            assert await agent.ask(Req(snapshot_sent=zds_pb2.SnapshotSent())) == ""
            assert set(mgr.pods) == {"a", "b"}
            assert mgr.pods["a"] is a and mgr.pods["b"] is b
            assert (a.state, b.state, c.state) == ("serving", "serving", "stopped")
            assert world.of("start") == ["a", "b", "c"]
        await mgr.drain(0)
    run(main())
