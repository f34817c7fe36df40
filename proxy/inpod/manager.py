"""All the pods this proxy serves, driven by the agent over ZDS: add, keep, delete, and the
end of a snapshot (anything the agent no longer knows is drained).

The state logic only: what touches the kernel comes in from outside, as ztunnel's
`inpod/statemanager` takes its proxy factory. `pods` makes one pod's proxy (by default
proxy/inpod/workload.py's PodProxy, whose listeners and sockets live in the pod's netns);
`netns` is the manager's own handling of the netns fds the agent sends (their inode, to
tell a recreated sandbox from the same one; closing a duplicate). tests/unit/
test_inpod_state.py drives it with fakes of both, without root.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import structlog

from proxy import metrics
from proxy.config import ProxyConfig
from proxy.inpod.workload import PodProxy
from proxy.inpod.zds_client import WorkloadInfo
from proxy.limits import NodeLimits
from proxy.meshconfig.runtime import ProxyMesh

log = structlog.get_logger("proxy")
UNKNOWN = ("unknown", "unknown")


class Pod(Protocol):
    """What the manager uses of one pod's proxy (workload.py's PodProxy)."""

    name: str
    namespace: str
    ips: set[str]  # filled by start()
    netns_inode: int

    async def start(self) -> None:
        """Serve the pod. On failure the manager calls stop() and NACKs the add."""

    async def stop_accepting(self) -> None:
        """Close the listeners; live connections go on."""

    async def stop(self, grace: float = 0.0) -> None:
        """Stop accepting, give live connections `grace` seconds, end them; close the
        netns fd."""

    def dump(self) -> dict[str, Any]: ...


# (uid, workload info, netns fd) -> a pod's proxy, not started yet, owning the fd.
PodFactory = Callable[[str, WorkloadInfo, int], Pod]


def _fd_inode(fd: int) -> int:
    return os.fstat(fd).st_ino


@dataclass(frozen=True)
class NetnsFds:
    """The manager's own calls on a netns fd: its inode (the netns's identity) and close."""

    inode: Callable[[int], int] = _fd_inode
    close: Callable[[int], None] = os.close


class WorkloadManager:
    def __init__(self, cfg: ProxyConfig, mesh: ProxyMesh | None = None, *,
                 pods: PodFactory | None = None, netns: NetnsFds | None = None) -> None:
        self.cfg = cfg
        self.mesh = mesh
        self._make_pod: PodFactory = pods or self._pod_proxy
        self._netns = netns or NetnsFds()
        self.pods: dict[str, Pod] = {}
        self._by_ip: dict[str, tuple[str, str]] = {}
        self._lock = asyncio.Lock()
        # One set of connection limits and one error-log budget for the whole process: a
        # pod's share is counted against everything the proxy holds (raises ConfigError).
        self.limits = NodeLimits.from_config(cfg)

    def _pod_proxy(self, uid: str, info: WorkloadInfo, netns_fd: int) -> Pod:
        """The default pod factory: the real proxy, in the pod's netns."""
        return PodProxy(uid, info, netns_fd, self.cfg, self.lookup, self.mesh, self.limits)

    def lookup(self, ip: str) -> tuple[str, str]:
        """The workload holding `ip`: a local pod, else any mesh workload we know of."""
        local = self._by_ip.get(ip)
        if local is not None:
            return local
        if self.mesh is not None:
            w = self.mesh.table.workload_by_ip(ip)
            if w is not None:
                return w.name, w.namespace
        return UNKNOWN

    def _index(self) -> None:
        self._by_ip = {ip: (p.name, p.namespace) for p in self.pods.values() for ip in p.ips}
        metrics.ACTIVE_PODS.set(len(self.pods))

    # -- the ZDS handler ---------------------------------------------------------------

    async def add(self, uid: str, info: WorkloadInfo, netns_fd: int) -> None:
        """Serve the pod; idempotent by uid. Takes ownership of `netns_fd`."""
        async with self._lock:
            old = self.pods.get(uid)
            if old is not None:
                if old.netns_inode == self._netns.inode(netns_fd):
                    self._netns.close(netns_fd)  # same pod, same netns: nothing to do
                    return
                # Same uid, new netns: the sandbox was recreated. Serve the new one.
                del self.pods[uid]
                await old.stop()
            try:
                pod = self._make_pod(uid, info, netns_fd)
            except BaseException:
                self._netns.close(netns_fd)  # no pod took ownership of it
                raise
            try:
                await pod.start()
            except BaseException:
                await pod.stop()
                raise
            self.pods[uid] = pod
            self._index()

    async def keep(self, uid: str) -> None:
        if uid not in self.pods:
            log.warning("keep_unknown_workload", uid=uid)

    async def delete(self, uid: str) -> None:
        async with self._lock:
            pod = self.pods.pop(uid, None)
            if pod is not None:
                await pod.stop()
                self._index()

    async def snapshot_done(self, uids: set[str]) -> None:
        stale = [u for u in list(self.pods) if u not in uids]
        for uid in stale:
            log.info("draining_workload_not_in_snapshot", uid=uid)
            await self.delete(uid)

    # -- shutdown and introspection -----------------------------------------------------

    async def drain(self, grace: float) -> None:
        """Upgrade-friendly stop: close every listener at once (queued connections move to
        the new proxy), then let live connections finish for up to `grace` seconds."""
        async with self._lock:
            pods = list(self.pods.values())
            await asyncio.gather(*(p.stop_accepting() for p in pods))
            await asyncio.gather(*(p.stop(grace) for p in pods))
            self.pods.clear()
            self._index()

    def dump(self) -> dict[str, Any]:
        return {"workloads": [p.dump() for p in self.pods.values()]}
