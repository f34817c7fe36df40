"""Everything the agent daemon needs from the control plane, behind one object.

`MeshClient(settings)` owns the discovery stream, the state it fills and the identity
manager that follows the state's local workloads. The daemon starts it, gates readiness on
`ready()`, and subscribes to `state` (routing/policy/capture) and `identities` (certs).
"""

from __future__ import annotations

import asyncio
import os
import socket
from collections.abc import Callable
from dataclasses import dataclass, field

from agent.identity.caclient import CaClient
from agent.identity.manager import IdentityConfig, IdentityManager
from agent.xds.channel import ControlPlaneEndpoint
from agent.xds.client import DeltaAdsClient, XdsClientConfig
from agent.xds.node import NodeInfo
from agent.xds.state import XdsState
from core.aio import cancel_and_wait
from core.mesh.model import DEFAULT_CLUSTER, Workload


@dataclass
class ControlPlaneSettings:
    """The `controlplane:` section of the agent's config. Env defaults follow ztunnel's chart
    (NODE_NAME, POD_NAME, POD_NAMESPACE, INSTANCE_IP)."""

    address: str = "localhost:15012"       # discovery (and CA unless ca_address is set)
    ca_address: str = ""
    root_ca: str = "/var/run/meshnode/controlplane/root-cert.pem"
    server_name: str = ""                  # SAN to expect if it is not the address's host
    token_path: str = "/var/run/meshnode/node-token"   # `meshnode controlplane --print-node-token`
    ca_token_path: str = ""                # the CA's bearer token file; "": token_path
    cluster_id: str = DEFAULT_CLUSTER
    node_name: str = ""                    # default: $NODE_NAME, else the hostname
    pod_name: str = ""                     # default: $POD_NAME, else "meshnode"
    pod_namespace: str = ""                # default: $POD_NAMESPACE, else "istio-system"
    instance_ip: str = ""                  # default: $INSTANCE_IP, else "1.1.1.1"
    cert_ttl_seconds: int = 86400
    # Fetch certificates only for local workloads that use HBONE (ztunnel's prefetch rule).
    # meshnode's proxy terminates mTLS for every captured pod, hence off by default.
    certs_for_hbone_only: bool = False
    headers: dict[str, str] = field(default_factory=dict)

    def node(self) -> NodeInfo:
        env = os.environ.get
        return NodeInfo(node_name=self.node_name or env("NODE_NAME") or socket.gethostname(),
                        pod_name=self.pod_name or env("POD_NAME") or "meshnode",
                        pod_namespace=self.pod_namespace or env("POD_NAMESPACE")
                        or "istio-system",
                        instance_ip=self.instance_ip or env("INSTANCE_IP") or "1.1.1.1",
                        cluster_id=self.cluster_id)

    def endpoint(self, address: str, token_path: str = "") -> ControlPlaneEndpoint:
        return ControlPlaneEndpoint(address=address, root_ca=self.root_ca,
                                    server_name=self.server_name,
                                    token_path=token_path or self.token_path,
                                    cluster_id=self.cluster_id, headers=dict(self.headers))

    def ca_endpoint(self) -> ControlPlaneEndpoint:
        """The CA's: `ca_address` (default: discovery's), `ca_token_path` (default: the
        discovery token); the token file is read for every request."""
        return self.endpoint(self.ca_address or self.address, self.ca_token_path)


class MeshClient:
    def __init__(self, settings: ControlPlaneSettings,
                 identity: IdentityConfig | None = None) -> None:
        node = settings.node()
        self.settings = settings
        self.state = XdsState(local_node=node.node_name)
        self.xds = DeltaAdsClient(XdsClientConfig(settings.endpoint(settings.address), node),
                                  self.state)
        self.ca = CaClient(settings.ca_endpoint(), ttl_seconds=settings.cert_ttl_seconds)
        self.identities = IdentityManager(self.ca, identity)
        self._task: asyncio.Task[None] | None = None
        self._unfollow: Callable[[], None] | None = None

    def ready(self) -> bool:
        return self.xds.ready()

    async def wait_ready(self, timeout: float | None = None) -> bool:
        return await self.xds.wait_ready(timeout)

    async def start(self) -> None:
        """Start the stream and certificate upkeep; returns at once (see wait_ready)."""
        hbone_only = self.settings.certs_for_hbone_only

        def wants(w: Workload) -> bool:
            return w.uses_hbone or not hbone_only
        self._unfollow = self.identities.follow(self.state, wants)
        self._task = asyncio.create_task(self.xds.run(), name="xds")

    async def stop(self) -> None:
        if self._unfollow is not None:
            self._unfollow()
        if self._task is not None:
            await cancel_and_wait([self._task])
        await self.identities.close()
        await self.ca.close()
