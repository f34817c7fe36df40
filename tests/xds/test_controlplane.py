"""The discovery client against meshnode's own control plane (controlplane/), over TLS, serving
a manifests directory: initial sync, a pushed manifest edit, and a resync after the control
plane restarts. (A malformed resource NACKed by name while the agent stays ready needs a
server that sends one: tests/xds/test_protocol.py's fake ADS server.)"""

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
from testing import mesh_manifests as mm
from tests.xds.helpers import run, until

ECHO = {"app": "echo"}
OBJECTS = [
    *mm.two_nodes(),
    mm.service("echo", "10.96.0.10", [(80, 8080)], selector=ECHO),
    mm.pod("sleep", "10.1.1.2", "node1", service_account="sleep", labels={"app": "sleep"}),
    mm.pod("echo-1", "10.1.2.2", "node2", service_account="echo", labels=ECHO),
    mm.authorization_policy("deny-9090", "DENY", [{"to": [{"operation": {"ports": ["9090"]}}]}]),
]
ECHO_2 = mm.pod("echo-2", "10.1.1.3", "node1", service_account="echo", labels=ECHO)


def control_plane(tmp: Path, port: int = 0) -> ControlPlane:
    conf = tmp / "manifests"
    conf.mkdir(exist_ok=True)
    mm.write(conf, "base.yaml", *OBJECTS)
    return ControlPlane(ControlPlaneConfig(config=conf, address=f"127.0.0.1:{port}",
                                           state_dir=tmp / "cp"))


def agent_client(tmp: Path, cp: ControlPlane) -> DeltaAdsClient:
    (tmp / "token").write_text(cp.node_token("node1"))
    ep = ControlPlaneEndpoint(address=f"127.0.0.1:{cp.port}",
                              root_ca=str(cp.config.root_cert_path), server_name="localhost",
                              token_path=str(tmp / "token"))
    return DeltaAdsClient(XdsClientConfig(ep, NodeInfo(node_name="node1")),
                          backoff=Backoff(0.01, 0.1))


def test_sync_push_and_resync(tmp_path: Path) -> None:
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

            # A manifest edit (a new pod's file) arrives as a delta.
            n = len(batches)
            mm.write(tmp_path / "manifests", "echo-2.yaml", ECHO_2)
            await until(lambda: st.workload_by_ip("10.1.1.3") is not None, what="pushed add")
            assert {w.name for w in st.endpoints(svc.key)} == {"echo-1", "echo-2"}
            assert all(len(b) <= 2 for b in batches[n:])   # only what changed
            assert client.ready() and len(st.workloads) == 3 and client.stats.nacks == 0

            # Control plane restart on the same port and root: the agent resyncs.
            port = cp.port
            await cp.stop()
            mm.remove(tmp_path / "manifests", "echo-2.yaml")   # echo-2 removed while away
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
