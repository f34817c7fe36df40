"""`meshnode proxy`: the shared node proxy process.

It connects to the node agent over ZDS and serves every pod the agent hands it. On SIGTERM
(an upgrade, or `/quitquitquit`) it drains: it closes every pod's listeners at once, so new
connections go to the new proxy's SO_REUSEPORT listeners (queued ones migrate there with
tcp_migrate_req), then lets live connections finish for up to `drain_seconds`.
"""

from __future__ import annotations

import asyncio
import gc
import signal
from typing import Any

import structlog

from core import addr
from core.stats import StatsServer
from proxy import metrics
from proxy.admin import start_admin
from proxy.config import ProxyConfig
from proxy.inpod.manager import WorkloadManager
from proxy.inpod.zds_client import ZdsClient
from proxy.meshconfig.runtime import ProxyMesh

log = structlog.get_logger("proxy")


class ProxyServer:
    def __init__(self, cfg: ProxyConfig) -> None:
        self.cfg = cfg
        # The agent's mesh config channel: routing, policy and certificates (HBONE). Without
        # it the proxy only passes traffic through, exactly as before.
        self.mesh = ProxyMesh(cfg.mesh_socket) if cfg.mesh_socket else None
        self.manager = WorkloadManager(cfg, self.mesh)
        self.zds = ZdsClient(cfg.zds_socket, self.manager)
        # Prometheus' listener (metrics_address), apart from the local admin port.
        self.stats = StatsServer(cfg.metrics_address, self.ready)
        self._stop = asyncio.Event()

    # -- the admin state ---------------------------------------------------------------

    def ready(self) -> bool:
        return bool(self.zds.ready) and (self.mesh is None or self.mesh.ready())

    def config_dump(self) -> dict[str, Any]:
        return {"agent": {"socket": self.cfg.zds_socket, "connected": self.zds.connected,
                          "snapshot_received": self.zds.ready},
                "mesh": self.mesh.dump() if self.mesh is not None else None,
                **self.manager.dump()}

    def shutdown(self) -> None:
        self._stop.set()

    # -- run ----------------------------------------------------------------------------

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._stop.set)
        host, port = addr.host_port(self.cfg.admin_address)  # validated: [v6]:port too
        admin = await start_admin(self, port, host)
        try:
            await self.stats.start()
        except BaseException:
            await admin.cleanup()
            raise
        if self.mesh is not None:
            metrics.watch_certificates(self.mesh.certs)
            self.mesh.start()
        self.zds.start()
        # Everything so far (modules, config, admin app) lives as long as the process: move it
        # out of the collector's reach, so a full collection on the data path scans only what
        # connections allocate (a p99 cost; ztunnel has no collector at all).
        gc.freeze()
        log.info("proxy_started", agent=self.cfg.zds_socket, admin=self.cfg.admin_address,
                 metrics=self.cfg.metrics_address, zero_copy=self.cfg.zero_copy)
        await self._stop.wait()
        log.info("proxy_draining", pods=len(self.manager.pods), grace_s=self.cfg.drain_seconds)
        # Stop taking new pods first, so nothing is added while we drain.
        await self.zds.close()
        await self.manager.drain(self.cfg.drain_seconds)
        if self.mesh is not None:
            metrics.unwatch_certificates(self.mesh.certs)
            await self.mesh.close()
        await self.stats.stop()
        await admin.cleanup()
        log.info("proxy_stopped")
