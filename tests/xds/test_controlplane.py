"""The discovery client against meshnode's own control plane (controlplane/), over TLS:
initial sync, a pushed file edit, a malformed resource NACKed while staying ready, and a
resync after the control plane restarts."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from pathlib import Path

from agent.xds.channel import ControlPlaneEndpoint
from agent.xds.client import DeltaAdsClient, XdsClientConfig
from agent.xds.node import NodeInfo
from agent.xds.state import Change
from controlplane.server import ControlPlane, ControlPlaneConfig
from core.backoff import Backoff
from tests.xds.helpers import run, until

MESH = """\
services:
  - name: echo
    namespace: default
    vips: [10.96.0.10]
    ports:
      - {port: 80, target_port: 8080, protocol: tcp}
    selector: {app: echo}
workloads:
  - {name: sleep, namespace: default, service_account: sleep, ips: [10.1.1.2], node: node1,
     labels: {app: sleep}}
  - {name: echo-1, namespace: default, service_account: echo, ips: [10.1.2.2], node: node2,
     labels: {app: echo}}
policies:
  - name: deny-9090
    namespace: default
    scope: namespace
    action: deny
    rules:
      - to:
          - ports: [9090]
"""

EXTRA = """\
  - {name: echo-2, namespace: default, service_account: echo, ips: [10.1.1.3], node: node1,
     labels: {app: echo}}
"""

MALFORMED = """\
debug:
  malformed_resources:
    - {type: address, name: broken-one}
"""


def with_extra(mesh: str, extra: str) -> str:
    return mesh.replace("policies:", extra + "policies:")


def control_plane(tmp: Path, port: int = 0) -> ControlPlane:
    (tmp / "mesh.yaml").write_text(MESH)
    return ControlPlane(ControlPlaneConfig(mesh=tmp / "mesh.yaml",
                                           address=f"127.0.0.1:{port}", state_dir=tmp / "cp"))


def agent_client(tmp: Path, cp: ControlPlane) -> DeltaAdsClient:
    (tmp / "token").write_text(cp.node_token("node1"))
    ep = ControlPlaneEndpoint(address=f"127.0.0.1:{cp.port}",
                              root_ca=str(cp.config.root_cert_path), server_name="localhost",
                              token_path=str(tmp / "token"))
    return DeltaAdsClient(XdsClientConfig(ep, NodeInfo(node_name="node1")),
                          backoff=Backoff(0.01, 0.1))


def test_sync_push_nack_and_resync(tmp_path: Path) -> None:
    async def main() -> None:
        cp = control_plane(tmp_path)
        await cp.start()
        client = agent_client(tmp_path, cp)
        batches: list[Sequence[Change]] = []
        client.state.subscribe(batches.append)
        task = asyncio.create_task(client.run())
        try:
            assert await client.wait_ready(5), client.stats
            st = client.state
            assert st.workload_by_ip("10.1.1.2").name == "sleep"  # type: ignore[union-attr]
            svc = st.service_by_vip("10.96.0.10")
            assert svc is not None and svc.hostname == "echo.default.svc.cluster.local"
            assert [w.name for w in st.endpoints(svc.key)] == ["echo-1"]
            assert [w.name for w in st.local.values()] == ["sleep"]
            assert st.policy("default/deny-9090") is not None
            assert client.stats.nacks == 0

            # An edit of the mesh file arrives as a delta.
            n = len(batches)
            (tmp_path / "mesh.yaml").write_text(with_extra(MESH, EXTRA))
            await until(lambda: st.workload_by_ip("10.1.1.3") is not None, what="pushed add")
            assert {w.name for w in st.endpoints(svc.key)} == {"echo-1", "echo-2"}
            assert all(len(b) <= 2 for b in batches[n:])   # only what changed

            # A malformed resource is NACKed by name; the agent stays ready and keeps state.
            (tmp_path / "mesh.yaml").write_text(with_extra(MESH, EXTRA) + MALFORMED)
            await until(lambda: client.stats.nacks >= 1, what="a NACK")
            assert "broken-one: " in client.stats.last_nack
            assert client.ready() and len(st.workloads) == 3

            # Control plane restart on the same port and root: the agent resyncs.
            port = cp.port
            await cp.stop()
            (tmp_path / "mesh.yaml").write_text(MESH)     # echo-2 removed while away
            cp = control_plane(tmp_path, port)
            await cp.start()
            await until(lambda: client.stats.connects >= 2, timeout=10, what="reconnect")
            await until(lambda: st.workload_by_ip("10.1.1.3") is None, what="removal on resync")
            assert client.ready() and st.workload_by_ip("10.1.1.2") is not None
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            await cp.stop()
    run(main(), timeout=40)
