"""All the pods this proxy serves, driven by the agent over ZDS: add, keep, delete, and the
end of a snapshot (anything the agent no longer knows is drained)."""

from __future__ import annotations

import asyncio
import os
from typing import Any

import structlog

from proxy import metrics
from proxy.config import ProxyConfig
from proxy.inpod.workload import PodProxy
from proxy.inpod.zds_client import WorkloadInfo
from proxy.limits import NodeLimits
from proxy.meshconfig.runtime import ProxyMesh

log = structlog.get_logger("proxy")
UNKNOWN = ("unknown", "unknown")


class WorkloadManager:
    def __init__(self, cfg: ProxyConfig, mesh: ProxyMesh | None = None) -> None:
        self.cfg = cfg
        self.mesh = mesh
        self.pods: dict[str, PodProxy] = {}
        self._by_ip: dict[str, tuple[str, str]] = {}
        self._lock = asyncio.Lock()
        # One set of connection limits and one error-log budget for the whole process: a
        # pod's share is counted against everything the proxy holds (raises ConfigError).
        self.limits = NodeLimits.from_config(cfg)

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
                if old.netns_inode == os.fstat(netns_fd).st_ino:
                    os.close(netns_fd)  # same pod, same netns: nothing to do
                    return
                # Same uid, new netns: the sandbox was recreated. Serve the new one.
                del self.pods[uid]
                await old.stop()
            pod = PodProxy(uid, info, netns_fd, self.cfg, self.lookup, self.mesh, self.limits)
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
