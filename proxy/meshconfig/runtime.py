"""What the pod proxies share when a mesh config channel is configured: the routing table,
the certificate store and the channel's client."""

from __future__ import annotations

from typing import Any

from proxy.identity.certs import CertStore
from proxy.meshconfig.client import MeshConfigClient
from proxy.meshconfig.table import MeshTable


class ProxyMesh:
    def __init__(self, socket_path: str) -> None:
        self.table = MeshTable()
        self.certs = CertStore()
        self.client = MeshConfigClient(socket_path, self.table, self.certs)

    def ready(self) -> bool:
        return self.client.synced.is_set()

    def start(self) -> None:
        self.client.start()

    async def close(self) -> None:
        await self.client.close()

    def dump(self) -> dict[str, Any]:
        return {"socket": self.client.path, "connected": self.client.connected,
                "synced": self.ready(), "messages": self.client.messages,
                "errors": self.client.errors, "table": self.table.dump(),
                "certificates": self.certs.dump()}
