"""meshnode's control plane as the CA for identity tests: a real TLS gRPC server."""

from __future__ import annotations

from pathlib import Path

from agent.identity.caclient import CaClient
from agent.xds.channel import ControlPlaneEndpoint
from controlplane.server import ControlPlane, ControlPlaneConfig

MESH = """\
workloads:
  - {name: sleep, namespace: default, service_account: sleep, ips: [10.1.1.2], node: node1}
  - {name: sleep-2, namespace: default, service_account: sleep, ips: [10.1.1.4], node: node1}
  - {name: echo, namespace: default, service_account: echo, ips: [10.1.1.3], node: node1}
  - {name: remote, namespace: default, service_account: remote, ips: [10.1.2.2], node: node2}
"""

SLEEP = "spiffe://cluster.local/ns/default/sa/sleep"
ECHO = "spiffe://cluster.local/ns/default/sa/echo"
REMOTE = "spiffe://cluster.local/ns/default/sa/remote"


def control_plane(tmp: Path, port: int = 0) -> ControlPlane:
    (tmp / "mesh.yaml").write_text(MESH)
    return ControlPlane(ControlPlaneConfig(mesh=tmp / "mesh.yaml", address=f"127.0.0.1:{port}",
                                           state_dir=tmp / "cp"))


def endpoint(tmp: Path, cp: ControlPlane, node: str = "node1") -> ControlPlaneEndpoint:
    token = tmp / f"token-{node}"
    token.write_text(cp.node_token(node))
    return ControlPlaneEndpoint(address=f"127.0.0.1:{cp.port}",
                                root_ca=str(cp.config.root_cert_path), server_name="localhost",
                                token_path=str(token))


def ca_client(tmp: Path, cp: ControlPlane, ttl: int = 3600, node: str = "node1") -> CaClient:
    return CaClient(endpoint(tmp, cp, node), ttl_seconds=ttl, timeout=3)
