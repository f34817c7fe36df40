"""The proxy side of ZDS: receive pod network namespaces from the node agent.

Connect to the agent's SOCK_SEQPACKET socket (retrying with backoff, 10 ms doubling to
15 s, like ztunnel), say hello, then answer each request, strictly in order, with an ack
(empty error = success). After every (re)connect the agent sends a full snapshot ending in
SnapshotSent; the handler then drains every workload not named in it, which is how pods
deleted while we were disconnected go away.

Fd hygiene: an fd that arrives with a request is either handed to the handler (which then
owns it) or closed here; nothing else keeps it.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import Awaitable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import structlog

from core.backoff import Backoff
from core.wire import zds as wire
from meshpb import zds_pb2

log = structlog.get_logger("zds")

BACKOFF_INITIAL = 0.01
BACKOFF_MAX = 15.0


@dataclass(frozen=True)
class WorkloadInfo:
    name: str
    namespace: str
    service_account: str


class WorkloadHandler(Protocol):
    """What the proxy does with the agent's requests. Raising NACKs the request: the agent
    sees `str(exc)` as the ack error (and fails the pod's CNI ADD for a live add)."""

    async def add(self, uid: str, info: WorkloadInfo, netns_fd: int) -> None:
        """Start (or keep, if already running in this netns) the proxy for `uid`.
        Takes ownership of `netns_fd` in every case, also when raising: close it when done."""

    async def keep(self, uid: str) -> None:
        """Snapshot only: keep `uid` as it is (the agent could not reopen its netns)."""

    async def delete(self, uid: str) -> None:
        """Stop the proxy for `uid` (unknown uids are fine: deletes go to every proxy)."""

    async def snapshot_done(self, uids: set[str]) -> None:
        """The snapshot is complete: drain every workload whose uid is not in `uids` (the
        uids added successfully or kept during this snapshot)."""


class ZdsClient:
    def __init__(self, path: str | Path, handler: WorkloadHandler, *,
                 backoff_initial: float = BACKOFF_INITIAL,
                 backoff_max: float = BACKOFF_MAX) -> None:
        self.path = str(path)
        self.handler = handler
        self.backoff_initial = backoff_initial
        self.backoff_max = backoff_max
        self._ready = False
        self._sock: socket.socket | None = None
        self._snapshot: set[str] | None = None  # uids seen since connect, until SnapshotSent
        self._task: asyncio.Task[None] | None = None
        self.ready_event = asyncio.Event()

    @property
    def ready(self) -> bool:
        """True once the first snapshot has arrived. Stays true across reconnects: the
        workloads we serve keep running while the agent is away."""
        return self._ready

    @property
    def connected(self) -> bool:
        return self._sock is not None

    def start(self) -> asyncio.Task[None]:
        self._task = asyncio.create_task(self.run(), name="zds-client")
        return self._task

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def run(self) -> None:
        """Connect, serve, reconnect; forever (until cancelled)."""
        backoff = Backoff(self.backoff_initial, self.backoff_max, jitter=False)
        while True:
            try:
                sock = await self._connect()
            except OSError as e:
                delay = backoff.next()
                log.warning("zds_connect_retry", path=self.path, error=str(e),
                            retry_in=round(delay, 3))
                await asyncio.sleep(delay)
                continue
            try:
                if await self._session(sock):
                    # Reset only after a working session: an agent that accepts and hangs
                    # up at once must not turn this into a tight loop.
                    backoff.reset()
            finally:
                self._sock = None
                self._snapshot = None
                wire.close(sock)
            await asyncio.sleep(backoff.next())

    async def _connect(self) -> socket.socket:
        sock = wire.seqpacket()
        try:
            await asyncio.get_running_loop().sock_connect(sock, self.path)
            await wire.send(sock, zds_pb2.ZdsHello(version=zds_pb2.V1))
        except (OSError, wire.WireError) as e:
            wire.close(sock)
            raise OSError(str(e)) from e
        self._sock = sock
        self._snapshot = set()
        log.info("zds_agent_connected", path=self.path)
        return sock

    async def _session(self, sock: socket.socket) -> bool:
        """Serve one connection until it ends. True if at least one request was served."""
        served = False
        try:
            while True:
                data, fds, flags = await wire.recv_raw(sock, max_fds=1)
                req = wire.decode(zds_pb2.WorkloadRequest, data, fds, flags)
                error = await self._dispatch(req, fds)
                await wire.send(sock, zds_pb2.WorkloadResponse(ack=zds_pb2.Ack(error=error)))
                served = True
        except wire.PeerClosed:
            log.info("zds_agent_closed")
        except (wire.WireError, OSError) as e:
            log.warning("zds_agent_connection_dropped", error=f"{type(e).__name__}: {e}")
        return served

    async def _dispatch(self, req: zds_pb2.WorkloadRequest, fds: list[int]) -> str:
        """Run one request; return the ack error ("" on success). Owns `fds`."""
        kind = req.WhichOneof("payload")
        if kind == "add" and len(fds) == 1:
            return await self._add(req.add, fds[0])
        # Only an add carries an fd; anything else holding one is a bug on the agent side.
        wire.close_fds(fds)
        if kind == "add":
            return "add without a netns fd"
        if fds:
            return f"unexpected fd with {kind}"
        if kind == "keep":
            return await self._call(self._keep(req.keep.uid), "keep", req.keep.uid)
        if kind == "del":
            uid = getattr(req, "del").uid  # `del` is a keyword
            if self._snapshot is not None:
                self._snapshot.discard(uid)
            return await self._call(self.handler.delete(uid), "delete", uid)
        if kind == "snapshot_sent":
            return await self._snapshot_sent()
        return f"unknown request {kind}"

    async def _add(self, add: zds_pb2.AddWorkload, fd: int) -> str:
        wi = add.workload_info
        info = WorkloadInfo(wi.name, wi.namespace, wi.service_account)
        error = await self._call(self.handler.add(add.uid, info, fd), "add", add.uid)
        if not error and self._snapshot is not None:
            self._snapshot.add(add.uid)
        return error

    async def _keep(self, uid: str) -> None:
        await self.handler.keep(uid)
        if self._snapshot is not None:
            self._snapshot.add(uid)

    async def _snapshot_sent(self) -> str:
        uids = self._snapshot if self._snapshot is not None else set()
        self._snapshot = None  # later adds are live adds, not part of a snapshot
        error = await self._call(self.handler.snapshot_done(set(uids)), "snapshot_done", "")
        if not self._ready:
            self._ready = True
            self.ready_event.set()
        log.info("zds_snapshot_received", workloads=len(uids))
        return error

    @staticmethod
    async def _call(call: Awaitable[None], what: str, uid: str) -> str:
        try:
            await call
        except asyncio.CancelledError:
            raise
        except Exception as e:
            log.error("zds_request_failed", request=what, uid=uid, error=str(e))
            # An empty error means success on the wire, so never send one for a failure.
            return str(e) or type(e).__name__
        return ""
