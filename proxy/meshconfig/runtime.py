"""What the pod proxies share when a mesh config channel is configured: the routing table,
the certificate store, the channel's client, and the traffic router's timer."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import structlog

from core.aio import cancel_and_wait
from proxy import metrics
from proxy.identity.certs import CertStore
from proxy.meshconfig.client import MeshConfigClient
from proxy.meshconfig.table import MeshTable

log = structlog.get_logger("meshconfig")
# How often the proxy runs the outlier sweeps that are due. Ejections are decided from the
# clock when a cluster is used (proxy/traffic/outlier.py), so this only keeps the ejection
# metrics current and ends ejections of clusters no connection uses; one timer per proxy,
# whatever the number of clusters or connections.
SWEEP_SECONDS = 0.5


class ProxyMesh:
    def __init__(self, socket_path: str) -> None:
        self.table = MeshTable()
        self.certs = CertStore()
        self.client = MeshConfigClient(socket_path, self.table, self.certs)
        self._sweeper: asyncio.Task[None] | None = None
        self._ejections: dict[str, int] = {}  # cluster -> ejections counted so far

    def ready(self) -> bool:
        return self.client.synced.is_set()

    def start(self) -> None:
        self.client.start()
        self._sweeper = asyncio.create_task(self._sweep_forever(), name="traffic-sweeps")

    async def close(self) -> None:
        if self._sweeper is not None:
            await cancel_and_wait([self._sweeper])
        await self.client.close()

    async def _sweep_forever(self) -> None:
        while True:
            await asyncio.sleep(SWEEP_SECONDS)
            try:
                self.sweep()
            except Exception:  # a bug here must not stop the timer for good
                log.exception("traffic_sweep_failed")

    def sweep(self) -> None:
        """Run the due outlier sweeps; publish ejections (a counter of new ones, a gauge of
        the current ones) per cluster."""
        seen: dict[str, int] = {}
        for key, (ejected, ever) in self.table.router.sweep().items():
            name = str(key)
            seen[name] = ever
            metrics.TRAFFIC_EJECTED.labels(name).set(ejected)
            new = ever - self._ejections.get(name, 0)
            if new > 0:
                metrics.TRAFFIC_EJECTIONS.labels(name).inc(new)
        for name in set(self._ejections) - set(seen):
            with contextlib.suppress(KeyError):
                metrics.TRAFFIC_EJECTED.remove(name)  # the cluster is gone
        # A detector rebuilt by a config change starts from 0: count from there.
        self._ejections = seen

    def dump(self) -> dict[str, Any]:
        return {"socket": self.client.path, "connected": self.client.connected,
                "synced": self.ready(), "messages": self.client.messages,
                "errors": self.client.errors, "table": self.table.dump(),
                "certificates": self.certs.dump()}
