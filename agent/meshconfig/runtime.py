"""The agent's control-plane side in one object: MeshClient (discovery + identities) from
the config's `controlplane` section, the `mesh.sock` server for the node proxy, the
mesh-aware ZDS hand-off, readiness and a debug view."""

from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path
from typing import Any

import structlog
from prometheus_client import REGISTRY, Gauge

from agent.config import AgentConfig
from agent.meshconfig.capture import MeshAwareHandoff
from agent.meshconfig.meshclient import ControlPlaneSettings, MeshClient
from agent.meshconfig.server import MeshConfigServer
from agent.zds.server import ZdsServer

log = structlog.get_logger("meshconfig")

XDS_READY = Gauge("meshnode_agent_xds_ready", "1 once the first discovery response of every "
                  "type was applied (stays 1 while the control plane is away)",
                  registry=REGISTRY)


class MeshRuntime:
    def __init__(self, cfg: AgentConfig) -> None:
        cp = cfg.controlplane
        assert cp is not None
        self.cfg = cfg
        token_path = cp.token_file
        if cp.token:
            # The client reads the token from a file on every connect (rotation); an inline
            # token gets a root-only file of its own.
            token_path = str(Path(cfg.state_dir) / "node-token")
        self._inline_token = cp.token
        self.settings = ControlPlaneSettings(
            address=cp.address, ca_address=cp.ca_address, root_ca=cp.root_cert,
            server_name=cp.server_name, token_path=token_path,
            ca_token_path=cp.ca_token_file, cluster_id=cp.cluster_id,
            node_name=cp.node_name, cert_ttl_seconds=cp.cert_ttl_seconds)
        self.client: MeshClient | None = None
        self.server: MeshConfigServer | None = None

    def ready(self) -> bool:
        ok = self.client is not None and self.client.ready()
        XDS_READY.set(1 if ok else 0)
        return ok

    async def start(self) -> None:
        if self._inline_token:
            path = self.settings.token_path
            os.makedirs(os.path.dirname(path), exist_ok=True)
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w") as f:
                f.write(self._inline_token)
        self.client = MeshClient(self.settings)
        assert self.cfg.controlplane is not None
        self.server = MeshConfigServer(self.cfg.mesh_socket, self.client.state,
                                       self.client.identities,
                                       self.cfg.controlplane.trust_domain)
        await self.server.start()
        await self.client.start()
        log.info("controlplane_client_started", address=self.settings.address,
                 node=self.settings.node().node_name)
        cp = self.cfg.controlplane
        if cp is not None and cp.ready_timeout_seconds > 0 and \
                not await self.client.wait_ready(cp.ready_timeout_seconds):
            log.warning("xds_not_ready_yet", waited_s=cp.ready_timeout_seconds)

    def handoff(self, zds: ZdsServer, loop: asyncio.AbstractEventLoop,
                timeout: float) -> MeshAwareHandoff:
        assert self.client is not None
        return MeshAwareHandoff(zds, loop, timeout, self.client.state)

    async def stop(self) -> None:
        if self.server is not None:
            await self.server.close()
        if self.client is not None:
            await self.client.stop()

    def debug(self) -> dict[str, Any]:
        c = self.client
        if c is None:
            return {"controlplane": self.settings.address, "started": False}
        st = c.xds.stats
        return {"controlplane": self.settings.address, "ready": c.ready(),
                "connected": st.connected, "connects": st.connects, "responses": st.responses,
                "acks": st.acks, "nacks": st.nacks, "last_nack": st.last_nack,
                "last_ack_at": st.last_ack_at or None,
                "controlplane_identity": _identity(st.control_plane),
                "last_error": st.last_error, "workloads": len(c.state.workloads),
                "services": len(c.state.services), "policies": len(c.state.policies),
                "local_workloads": sorted(c.state.local),
                "identities": {i: c.identities.status(i) for i in c.identities.identities()},
                "proxies": self.server.connections if self.server else 0}


def _identity(identifier: str) -> dict[str, Any] | None:
    """The control plane's `control_plane.identifier` read as istiod writes it (JSON with
    Component, ID, Info.version); any other text is kept as it is, under "identifier"."""
    if not identifier:
        return None
    try:
        data = json.loads(identifier)
    except ValueError:
        return {"identifier": identifier}
    if not isinstance(data, dict):
        return {"identifier": identifier}
    info = data.get("Info")
    return {"component": data.get("Component"), "id": data.get("ID"),
            "version": info.get("version") if isinstance(info, dict) else None}
