"""ZDS tests: real SOCK_SEQPACKET sockets, real netns fds. Shared helpers live here."""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import tempfile
import time
from collections.abc import Callable, Coroutine, Iterator
from contextlib import contextmanager
from typing import Any

from core.wire import zds as wire
from proxy.inpod.zds_client import WorkloadInfo

SELF_NETNS = "/proc/self/ns/net"


def run(coro: Coroutine[Any, Any, None], timeout: float = 10.0) -> None:
    """asyncio.run with a hard cap, so a protocol bug fails the test instead of hanging."""
    async def capped() -> None:
        async with asyncio.timeout(timeout):
            await coro
    asyncio.run(capped())


async def until(pred: Callable[[], bool], timeout: float = 3.0) -> None:
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.01)


@contextmanager
def short_dir() -> Iterator[str]:
    """A private dir with a short path: unix socket paths are limited to 108 bytes."""
    d = tempfile.mkdtemp(prefix="zds", dir="/tmp")
    try:
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)


def seqpair() -> tuple[socket.socket, socket.socket]:
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    a.setblocking(False)
    b.setblocking(False)
    return a, b


def inode(path_or_fd: str | int) -> int:
    return os.stat(path_or_fd).st_ino  # os.stat takes an fd too


def write_end_closed_everywhere(read_fd: int) -> bool:
    """A pipe read end sees EOF only once every copy of the write end is closed: the way to
    prove that a peer closed an fd we passed it."""
    os.set_blocking(read_fd, False)
    try:
        return os.read(read_fd, 1) == b""
    except BlockingIOError:
        return False


class Recorder:
    """A WorkloadHandler that records calls and the netns inode behind each fd."""

    def __init__(self, fail: set[str] | None = None, add_delay: float = 0.0) -> None:
        self.calls: list[tuple[str, str]] = []
        self.inodes: dict[str, int] = {}
        self.infos: dict[str, WorkloadInfo] = {}
        self.snapshots: list[set[str]] = []
        self.fail = fail or set()
        self.add_delay = add_delay

    async def add(self, uid: str, info: WorkloadInfo, netns_fd: int) -> None:
        try:  # we own the fd, whatever happens
            self.calls.append(("add", uid))
            self.inodes[uid] = os.fstat(netns_fd).st_ino
            self.infos[uid] = info
            if self.add_delay:
                await asyncio.sleep(self.add_delay)
            if uid in self.fail:
                raise ValueError(f"cannot add {uid}")
        finally:
            os.close(netns_fd)

    async def keep(self, uid: str) -> None:
        self.calls.append(("keep", uid))

    async def delete(self, uid: str) -> None:
        self.calls.append(("delete", uid))

    async def snapshot_done(self, uids: set[str]) -> None:
        self.calls.append(("snapshot_done", ""))
        self.snapshots.append(uids)

    def of(self, kind: str) -> list[str]:
        return [uid for k, uid in self.calls if k == kind]


__all__ = ["SELF_NETNS", "Recorder", "inode", "run", "seqpair", "short_dir", "until", "wire",
           "write_end_closed_everywhere"]
