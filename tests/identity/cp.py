"""meshnode's control plane as the CA for identity tests: a real TLS gRPC server."""

from __future__ import annotations

from pathlib import Path

from agent.identity.caclient import CaClient
from agent.xds.channel import ControlPlaneEndpoint
from controlplane.server import ControlPlane, ControlPlaneConfig
from testing import mesh_manifests as mm

# Two sleep pods and an echo pod on node1, a remote pod on node2.
OBJECTS = [*mm.two_nodes(),
           mm.pod("sleep", "10.1.1.2", "node1", service_account="sleep"),
           mm.pod("sleep-2", "10.1.1.4", "node1", service_account="sleep"),
           mm.pod("echo", "10.1.1.3", "node1", service_account="echo"),
           mm.pod("remote", "10.1.2.2", "node2", service_account="remote")]

SLEEP = "spiffe://cluster.local/ns/default/sa/sleep"
ECHO = "spiffe://cluster.local/ns/default/sa/echo"
REMOTE = "spiffe://cluster.local/ns/default/sa/remote"


def control_plane(tmp: Path, port: int = 0) -> ControlPlane:
    conf = tmp / "manifests"
    conf.mkdir(exist_ok=True)
    mm.write(conf, "pods.yaml", *OBJECTS)
    return ControlPlane(ControlPlaneConfig(config=conf, address=f"127.0.0.1:{port}",
                                           state_dir=tmp / "cp"))


def endpoint(tmp: Path, cp: ControlPlane, node: str = "node1") -> ControlPlaneEndpoint:
    token = tmp / f"token-{node}"
    token.write_text(cp.node_token(node))
    return ControlPlaneEndpoint(address=f"127.0.0.1:{cp.port}",
                                root_ca=str(cp.config.root_cert_path), server_name="localhost",
                                token_path=str(token))


def ca_client(tmp: Path, cp: ControlPlane, ttl: int = 3600, node: str = "node1") -> CaClient:
    return CaClient(endpoint(tmp, cp, node), ttl_seconds=ttl, timeout=3)
