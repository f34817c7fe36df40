"""The agent side of ZDS: hands pod network namespaces to the node proxy.

A proxy connects, says hello, and gets a snapshot: every enrolled pod as AddWorkload with
its netns fd (KeepWorkload when the netns cannot be opened), then SnapshotSent. After that,
`add()` goes to the newest connection only and `delete()` to all of them: during a rolling
proxy upgrade the new proxy takes new pods while the old one still hears about deletions.

Every message waits for its ack before the next one goes out on that connection (the ack
is matched by order only). One reader task per connection receives acks, so a peer that
hangs up is noticed at once, not at the next send.

Which connection takes adds: the newest *eligible* one, i.e. whose whole snapshot, with
SnapshotSent, was acked, and which is not stalled. A peer that says hello and then never acks
must not become the proxy every new pod waits on (istio hands adds to its newest connection
as soon as it is accepted; that is what let one silent client fail every pod). A pod enrolled
while a newer proxy's snapshot is still being sent is also queued, without waiting, to that
proxy behind its snapshot messages, so the new proxy never misses it. With no eligible
connection, adds go to the syncing ones (the first proxy on a node is syncing at first).

An add that gets no ack within its share of the caller's budget marks that connection
stalled (no new adds) and falls back to the next one, newest first. The stalled exchange
goes on: an ack within `ack_timeout` makes the connection eligible again (the pod then is
with both proxies, as during an upgrade; deletes go to all), none closes it.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import socket
import stat
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import structlog

from core.wire import zds as wire
from meshpb import zds_pb2

log = structlog.get_logger("zds")

_conn_ids = itertools.count(1)


class ZdsError(Exception):
    """A request to the proxy failed: no proxy, a NACK, a timeout or a dropped connection."""


class _Rejected(ZdsError):
    """The proxy answered no (or the netns is gone): no other proxy would say yes."""


class _Stalled(ZdsError):
    """No ack within the caller's share of its budget: try the next proxy."""


@dataclass(frozen=True)
class Workload:
    uid: str
    name: str
    namespace: str
    service_account: str
    netns: str  # path to the pod's netns (e.g. /proc/<pid>/ns/net or /var/run/netns/<name>)

    def info(self) -> zds_pb2.WorkloadInfo:
        return zds_pb2.WorkloadInfo(name=self.name, namespace=self.namespace,
                                    service_account=self.service_account)


def add_request(w: Workload) -> zds_pb2.WorkloadRequest:
    return zds_pb2.WorkloadRequest(add=zds_pb2.AddWorkload(uid=w.uid, workload_info=w.info()))


def open_netns(path: str) -> int:
    return os.open(path, os.O_RDONLY | os.O_CLOEXEC)


def ack_error(resp: zds_pb2.WorkloadResponse) -> str:
    if resp.WhichOneof("payload") != "ack":
        return "malformed response: no ack"
    return resp.ack.error


class _Conn:
    """One proxy connection. Owns its socket; `close()` is idempotent and wakes everyone."""

    def __init__(self, sock: socket.socket, ack_timeout: float) -> None:
        self.sock = sock
        self.id = next(_conn_ids)
        self.ack_timeout = ack_timeout
        self.lock = asyncio.Lock()
        self.closed = asyncio.Event()
        self.snapshot_done = False
        # An add to this connection was given up on: no new adds until an ack arrives.
        self.stalled = False
        self.last_io = time.monotonic()
        self.log = log.bind(conn=self.id)
        self._pending: asyncio.Future[zds_pb2.WorkloadResponse] | None = None
        self._reader: asyncio.Task[None] | None = None
        self._inflight: set[asyncio.Task[zds_pb2.WorkloadResponse]] = set()

    def close(self, reason: str) -> None:
        if self.closed.is_set():
            return
        self.closed.set()
        self.log.info("zds_connection_closed", reason=reason)
        if self._pending is not None and not self._pending.done():
            self._pending.set_exception(ZdsError(f"connection closed: {reason}"))
        if self._reader is not None and self._reader is not asyncio.current_task():
            self._reader.cancel()
        wire.close(self.sock)

    async def read_hello(self) -> None:
        async with asyncio.timeout(self.ack_timeout):
            hello, _ = await wire.recv(self.sock, zds_pb2.ZdsHello, max_fds=0)
        if hello.version != zds_pb2.V1:
            raise wire.ProtocolError(f"unsupported ZDS version {hello.version}")
        self.log.info("zds_proxy_hello", version="V1")

    def start_reader(self) -> None:
        self._reader = asyncio.create_task(self._read_acks(), name=f"zds-conn-{self.id}")

    async def _read_acks(self) -> None:
        try:
            while True:
                # Acks never carry fds: no room for any, so one arriving is MSG_CTRUNC.
                resp, _ = await wire.recv(self.sock, zds_pb2.WorkloadResponse, max_fds=0)
                self.last_io = time.monotonic()
                fut = self._pending
                if fut is None or fut.done():
                    raise wire.ProtocolError("response with no request in flight")
                fut.set_result(resp)
        except wire.WireError as e:
            self.close(f"{type(e).__name__}: {e}")
        except OSError as e:
            self.close(f"read failed: {e}")

    @property
    def eligible(self) -> bool:
        """Takes new pods: snapshot acked, not stalled, open."""
        return self.snapshot_done and not self.stalled and not self.closed.is_set()

    def submit(self, req: zds_pb2.WorkloadRequest,
               fd: int | None = None) -> asyncio.Task[zds_pb2.WorkloadResponse]:
        """Start the exchange of `req` (with `fd`, which this call takes ownership of and
        closes) in its own task: a caller that gives up must not leave a request in flight
        whose ack the next request would take for its own."""
        task = asyncio.create_task(self._exchange(req, fd))
        self._inflight.add(task)
        task.add_done_callback(self._exchange_done)
        return task

    async def request(self, req: zds_pb2.WorkloadRequest,
                      fd: int | None = None) -> zds_pb2.WorkloadResponse:
        """Send `req` and wait for its response (shielded, see `submit`)."""
        return await asyncio.shield(self.submit(req, fd))

    def _exchange_done(self, task: asyncio.Task[zds_pb2.WorkloadResponse]) -> None:
        self._inflight.discard(task)
        if not task.cancelled():
            task.exception()  # retrieved: a caller that gave up already had its answer

    async def _exchange(self, req: zds_pb2.WorkloadRequest,
                        fd: int | None) -> zds_pb2.WorkloadResponse:
        try:
            async with self.lock:
                if self.closed.is_set():
                    raise ZdsError("connection closed")
                fut: asyncio.Future[zds_pb2.WorkloadResponse] = (
                    asyncio.get_running_loop().create_future())
                self._pending = fut
                try:
                    async with asyncio.timeout(self.ack_timeout):
                        await wire.send(self.sock, req, [] if fd is None else [fd])
                        self.last_io = time.monotonic()
                        resp = await fut
                    if self.stalled:
                        self.stalled = False
                        self.log.info("zds_proxy_recovered")
                    return resp
                except TimeoutError:
                    self.close("ack timeout")
                    raise ZdsError(f"no ack within {self.ack_timeout}s") from None
                except (wire.WireError, OSError) as e:
                    self.close(f"send failed: {e}")
                    raise ZdsError(f"send failed: {e}") from e
                finally:
                    self._pending = None
                    if fut.done() and not fut.cancelled():
                        fut.exception()  # set by close() while we were failing the send
        finally:
            if fd is not None:
                wire.close_fds([fd])


class ZdsServer:
    """Serve ZDS on a unix SOCK_SEQPACKET socket at `path`.

    `snapshot()` returns every pod currently enrolled; it is called once per proxy
    connection, right after hello. Enrollment should record a pod where `snapshot()` sees
    it before calling `add()` (and remove it before `delete()`), so a proxy connecting in
    between still learns about it.
    """

    def __init__(self, path: str | Path, snapshot: Callable[[], list[Workload]], *,
                 ack_timeout: float = 5.0, keepalive: float = 5.0,
                 accepts_per_second: float = 5.0,
                 on_count: Callable[[int], None] | None = None) -> None:
        self.path = Path(path)
        self._snapshot = snapshot
        self.ack_timeout = ack_timeout
        self.keepalive = keepalive
        self._accept_interval = 1.0 / accepts_per_second
        self._on_count = on_count
        self._listener: socket.socket | None = None
        self._accept_task: asyncio.Task[None] | None = None
        self._conns: list[_Conn] = []  # past hello, oldest first: adds go to the last one
        self._tasks: set[asyncio.Task[None]] = set()
        self._accepted: set[_Conn] = set()  # every open connection, also before hello

    # -- lifecycle -------------------------------------------------------------------------

    async def start(self) -> None:
        self._listener = self._listen()
        self._accept_task = asyncio.create_task(self._accept_loop(), name="zds-accept")
        log.info("zds_server_listening", path=str(self.path))

    def _listen(self) -> socket.socket:
        # 0700 dir: the socket hands out pod netns fds, only root may connect.
        self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        with contextlib.suppress(FileNotFoundError):
            if stat.S_ISDIR(self.path.lstat().st_mode):
                raise ZdsError(f"{self.path} is a directory")
            self.path.unlink()  # stale socket from a previous agent
        sock = wire.seqpacket()
        try:
            sock.bind(str(self.path))
            os.chmod(self.path, 0o600)  # bind() honours the umask; the 0700 dir covers the gap
            sock.listen(16)
        except OSError:
            sock.close()
            raise
        return sock

    async def close(self) -> None:
        if self._accept_task is not None:
            self._accept_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._accept_task
            self._accept_task = None
        if self._listener is not None:
            wire.close(self._listener)
            self._listener = None
            with contextlib.suppress(FileNotFoundError):
                self.path.unlink()
        for task in list(self._tasks):
            task.cancel()
        # A task cancelled before its first step never runs its finally: close directly too.
        for conn in list(self._accepted):
            conn.close("server closing")
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def __aenter__(self) -> ZdsServer:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # -- state -----------------------------------------------------------------------------

    @property
    def connected(self) -> bool:
        """A proxy is connected and takes adds: its snapshot is acked and it is not stalled
        (CNI STATUS is not-ready without one)."""
        return any(c.eligible for c in self._live())

    @property
    def connection_count(self) -> int:
        """Connected proxies (past hello): the ztunnel_connected gauge."""
        return len(self._live())

    @property
    def synced_count(self) -> int:
        """Connected proxies whose snapshot has been fully acked."""
        return sum(c.snapshot_done for c in self._live())

    def _live(self) -> list[_Conn]:
        return [c for c in self._conns if not c.closed.is_set()]

    def _count_changed(self) -> None:
        if self._on_count is not None:
            self._on_count(self.connection_count)

    # -- requests --------------------------------------------------------------------------

    async def add(self, workload: Workload, timeout: float | None = None) -> None:
        """Hand `workload` to the newest eligible proxy, falling back to older ones; raise
        ZdsError unless one acks without error within `timeout` seconds (None: each try
        gets the full ack timeout)."""
        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else loop.time() + timeout
        live = self._live()
        syncing = [c for c in live if not c.snapshot_done]
        eligible = [c for c in reversed(live) if c.eligible]
        candidates = eligible or list(reversed(syncing))
        if not candidates:
            raise ZdsError("no proxy connected")
        failures: list[str] = []
        for i, conn in enumerate(candidates):
            budget = conn.ack_timeout
            if deadline is not None:
                remaining = deadline - loop.time()
                if remaining <= 0:
                    failures.append("deadline passed")
                    break
                # Leave half of what is left to the next candidate, if there is one.
                budget = min(budget, remaining if i == len(candidates) - 1 else remaining / 2)
            try:
                await self._add_to(conn, workload, budget)
            except _Stalled:
                failures.append(f"conn {conn.id}: no ack within {budget:.2f}s (stalled)")
                continue
            except ZdsError as e:
                if isinstance(e, _Rejected):
                    raise
                failures.append(f"conn {conn.id}: {e}")
                continue
            # A proxy whose snapshot was taken before this pod was recorded must still hear
            # of it: queue it behind the snapshot, without waiting.
            for newer in syncing:
                if newer.id > conn.id and not newer.closed.is_set():
                    self._add_in_background(newer, workload)
            return
        raise ZdsError("no proxy acked the pod: " + "; ".join(failures))

    async def _add_to(self, conn: _Conn, workload: Workload, budget: float) -> None:
        try:
            fd = open_netns(workload.netns)
        except OSError as e:
            raise _Rejected(f"cannot open netns {workload.netns}: {e}") from e
        blog = conn.log.bind(uid=workload.uid, pod=f"{workload.namespace}/{workload.name}")
        blog.info("zds_pod_add_sending")
        task = conn.submit(add_request(workload), fd)
        if budget >= conn.ack_timeout:
            resp = await asyncio.shield(task)  # the exchange's own ack timeout applies
        else:
            try:
                resp = await asyncio.wait_for(asyncio.shield(task), budget)
            except TimeoutError:
                if not conn.closed.is_set():
                    conn.stalled = True
                    blog.warning("zds_proxy_stalled", waited_s=round(budget, 3),
                                 action="next proxy")
                raise _Stalled from None
        if err := ack_error(resp):
            blog.error("zds_pod_add_rejected", error=err)
            raise _Rejected(f"proxy rejected {workload.uid}: {err}")

    def _add_in_background(self, conn: _Conn, workload: Workload) -> None:
        try:
            fd = open_netns(workload.netns)
        except OSError:
            return  # gone already; the snapshot reconcile has nothing to keep
        conn.log.info("zds_pod_add_to_syncing_proxy", uid=workload.uid)
        conn.submit(add_request(workload), fd)

    async def delete(self, uid: str) -> None:
        """Tell every proxy to drop `uid`. Best effort: failures are logged, never raised."""
        req = zds_pb2.WorkloadRequest(**{"del": zds_pb2.DelWorkload(uid=uid)})
        live = self._live()
        results = await asyncio.gather(*(c.request(req) for c in live), return_exceptions=True)
        for conn, res in zip(live, results, strict=True):
            if isinstance(res, BaseException):
                conn.log.warning("zds_pod_delete_not_delivered", uid=uid, error=str(res))
            elif err := ack_error(res):
                conn.log.warning("zds_pod_delete_rejected", uid=uid, error=err)

    # -- connections -----------------------------------------------------------------------

    async def _accept_loop(self) -> None:
        assert self._listener is not None
        loop = asyncio.get_running_loop()
        while True:
            try:
                sock, _ = await loop.sock_accept(self._listener)
            except OSError as e:
                log.error("zds_accept_failed", error=str(e))
                await asyncio.sleep(self._accept_interval)
                continue
            sock.setblocking(False)
            conn = _Conn(sock, self.ack_timeout)
            self._accepted.add(conn)
            task = asyncio.create_task(self._serve(conn))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
            # A proxy stuck reconnecting in a loop must not make us spin: istio allows 5/s.
            await asyncio.sleep(self._accept_interval)

    async def _serve(self, conn: _Conn) -> None:
        try:
            await conn.read_hello()
            conn.start_reader()
            # Take the snapshot and start taking adds with no await in between: every pod
            # is then either in the snapshot or added on this connection afterwards.
            pods = self._snapshot()
            self._conns.append(conn)
            self._count_changed()
            conn.log.info("zds_proxy_connected", total=self.connection_count, pods=len(pods))
            await self._send_snapshot(conn, pods)
            conn.snapshot_done = True
            await self._watch(conn)
        except (wire.WireError, ZdsError, OSError, TimeoutError) as e:
            conn.close(f"{type(e).__name__}: {e}")
        except Exception as e:  # a bug in snapshot(): drop this proxy, keep serving others
            conn.log.exception("zds_connection_failed")
            conn.close(f"internal error: {e}")
        finally:
            conn.close("server closing")
            self._accepted.discard(conn)
            if conn in self._conns:
                self._conns.remove(conn)
                self._count_changed()
                log.info("zds_proxy_disconnected", conn=conn.id, total=self.connection_count)

    async def _send_snapshot(self, conn: _Conn, pods: list[Workload]) -> None:
        for w in pods:
            plog = conn.log.bind(uid=w.uid, pod=f"{w.namespace}/{w.name}")
            try:
                fd: int | None = open_netns(w.netns)
            except OSError as e:
                plog.info("zds_snapshot_netns_unavailable", action="keep", error=str(e))
                fd = None
            if fd is None:
                req = zds_pb2.WorkloadRequest(keep=zds_pb2.KeepWorkload(uid=w.uid))
            else:
                req = add_request(w)
            if err := ack_error(await conn.request(req, fd)):
                plog.error("zds_snapshot_entry_rejected", error=err)
        if err := ack_error(await conn.request(
                zds_pb2.WorkloadRequest(snapshot_sent=zds_pb2.SnapshotSent()))):
            conn.log.error("zds_snapshot_end_rejected", error=err)
        conn.log.info("zds_snapshot_sent", pods=len(pods))

    async def _watch(self, conn: _Conn) -> None:
        """Until the connection closes, check an idle one every `keepalive` seconds. The reader
        task already sees EOF at once; this also catches a socket left in an error state."""
        while not conn.closed.is_set():
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.keepalive):
                    await conn.closed.wait()
                return
            idle = time.monotonic() - conn.last_io >= self.keepalive
            if idle and not conn.lock.locked() and not wire.peer_alive(conn.sock):
                conn.close("keepalive: peer gone")
