"""Traffic management end to end: the real `meshnode controlplane --config DIR` process, on
Istio-doc-shaped VirtualService / DestinationRule / Sidecar manifests, and the agent's real
Delta ADS client receiving the records into its XdsState: the initial sync (traffic rules in
place by the time the agent is ready), a weight edit pushed as a delta, a bad edit refused
with the last good routing kept (log line and metric), a deletion, and a client that
subscribes to Istio's types only (a ztunnel) getting nothing of meshnode's.

The client's side of a malformed traffic resource (NACK by name, the good ones applied) needs
a server that sends one: tests/xds/test_traffic_client.py."""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path

from envoy.service.discovery.v3 import ads_pb2_grpc, discovery_pb2

from agent.xds.channel import ControlPlaneEndpoint
from agent.xds.client import DeltaAdsClient, XdsClientConfig
from agent.xds.node import NodeInfo
from core.backoff import Backoff
from core.mesh.traffic import EgressHost, OutboundMode, WorkloadLabels
from core.mesh.trafficpb import TRAFFIC_TYPES
from tests.controlplane.proc import ControlPlaneProcess
from tests.controlplane.test_traffic_convert import CANARY_DR, HOST, MESH, NS, canary_vs
from tests.xds.helpers import run, until

KEY = f"{NS}/{HOST}"
ADDRESS = "type.googleapis.com/istio.workload.Address"
AUTHZ = "type.googleapis.com/istio.security.Authorization"
SIDECAR = """
apiVersion: networking.istio.io/v1
kind: Sidecar
metadata: {name: default, namespace: istio-system}
spec:
  egress:
  - hosts: ["./*", "istio-system/*"]
  outboundTrafficPolicy: {mode: REGISTRY_ONLY}
"""


def weights(client: DeltaAdsClient) -> list[int]:
    t = client.state.traffic.get(KEY)
    return [] if t is None or not t.routes else [d.weight for d in t.routes[0].destinations]


def test_control_plane_process_to_agent_state(tmp_path: Path) -> None:
    conf = tmp_path / "manifests"
    conf.mkdir()
    (conf / "mesh.yaml").write_text(MESH)
    (conf / "dr.yaml").write_text(CANARY_DR)
    (conf / "vs.yaml").write_text(canary_vs(90, 10))
    (conf / "sidecar.yaml").write_text(SIDECAR)
    cp = ControlPlaneProcess(conf, tmp_path / "cp")
    (tmp_path / "token").write_text(cp.token("node-a"))
    cp.start()

    async def main() -> None:
        ep = ControlPlaneEndpoint(address=f"127.0.0.1:{cp.port}",
                                  root_ca=str(cp.state / "root-cert.pem"),
                                  server_name="localhost", token_path=str(tmp_path / "token"))
        client = DeltaAdsClient(XdsClientConfig(ep, NodeInfo(node_name="node-a")),
                                backoff=Backoff(0.01, 0.1))
        task = asyncio.create_task(client.run())
        try:
            assert await client.wait_ready(10), client.stats
            st = client.state
            # Ready means the traffic rules are there too (they are answered first).
            assert weights(client) == [90, 10]
            t = st.traffic[KEY]
            assert [s.name for s in t.subsets] == ["v1", "v2"]
            assert t.virtual_service == f"{NS}/tcp-echo"
            mesh_default = st.egress["mesh default"]
            assert mesh_default.mode == OutboundMode.REGISTRY_ONLY
            assert mesh_default.listeners[0].hosts == (EgressHost(".", "*"),
                                                       EgressHost("istio-system", "*"))
            uid = f"Kubernetes//Pod/{NS}/tcp-echo-v2"
            assert st.labels[uid] == WorkloadLabels(uid, (("version", "v2"),),
                                                    st.labels[uid].version)
            assert client.stats.nacks == 0

            # The canary moves to 50/50: one delta.
            (conf / "vs.yaml").write_text(canary_vs(50, 50))
            await until(lambda: weights(client) == [50, 50], timeout=10, what="50/50 pushed")

            # A bad edit (weights 0/0, Istio: "total destination weight = 0") is refused,
            # logged and counted; the 50/50 routing stays in force on the agent.
            refused = cp.metric("meshnode_controlplane_traffic_objects_refused_total",
                                kind="VirtualService")
            (conf / "vs.yaml").write_text(canary_vs(0, 0))
            line = (f"VirtualService {NS}/tcp-echo: spec.tcp[0].route: total destination "
                    "weight = 0 (the last good version stays in force)")
            await until(lambda: any(e.get("detail") == line
                                    for e in cp.events("object_not_converted")),
                        timeout=10, what="refusal logged")
            assert cp.metric("meshnode_controlplane_traffic_objects_refused_total",
                             kind="VirtualService") == refused + 1
            await asyncio.sleep(0.5)
            assert weights(client) == [50, 50]

            # Deleted: the routes go (the DestinationRule's subsets stay).
            (conf / "vs.yaml").unlink()
            await until(lambda: weights(client) == [], timeout=15, what="routes removed")
            assert [s.name for s in st.traffic[KEY].subsets] == ["v1", "v2"]
            assert client.stats.nacks == 0
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    try:
        run(main(), timeout=60)
        run(_istio_types_only(cp, conf, (tmp_path / "token").read_text()), timeout=30)
    finally:
        cp.stop()


async def _istio_types_only(cp: ControlPlaneProcess, conf: Path, token: str) -> None:
    """A ztunnel asks for Address and Authorization only: it is answered those, and a
    traffic rule's change pushes it nothing."""
    channel = cp.channel()
    try:
        stub = ads_pb2_grpc.AggregatedDiscoveryServiceStub(channel)
        call = stub.DeltaAggregatedResources(metadata=[("authorization", f"Bearer {token}")])
        for t in (ADDRESS, AUTHZ):
            await call.write(discovery_pb2.DeltaDiscoveryRequest(
                type_url=t, resource_names_subscribe=["*"]))
        got = [await call.read() for _ in range(2)]
        assert sorted(r.type_url for r in got) == [AUTHZ, ADDRESS]
        for r in got:
            await call.write(discovery_pb2.DeltaDiscoveryRequest(type_url=r.type_url,
                                                                 response_nonce=r.nonce))
        (conf / "vs.yaml").write_text(canary_vs(70, 30))
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(2):
                extra = await call.read()
                raise AssertionError(f"pushed to a client that did not ask: {extra.type_url}")
        assert all(r.type_url not in TRAFFIC_TYPES for r in got)
        call.cancel()
    finally:
        await channel.close()
