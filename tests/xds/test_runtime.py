"""MeshClient, the daemon-facing facade: against the real control plane, it becomes ready and
holds certificates for exactly the identities of this node's workloads."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from agent.identity.bundle import CertBundle
from agent.identity.manager import IdentityConfig
from agent.meshconfig.meshclient import ControlPlaneSettings, MeshClient
from agent.xds.state import Change
from testing import mesh_manifests as mm
from tests.xds.helpers import run, until
from tests.xds.test_controlplane import ECHO_2, control_plane


def test_mesh_client_syncs_and_fetches_local_identities(tmp_path: Path) -> None:
    async def main() -> None:
        cp = control_plane(tmp_path)
        await cp.start()
        (tmp_path / "token").write_text(cp.node_token("node1"))
        mc = MeshClient(ControlPlaneSettings(
            address=f"127.0.0.1:{cp.port}", root_ca=str(cp.config.root_cert_path),
            server_name="localhost", token_path=str(tmp_path / "token"), node_name="node1",
            cert_ttl_seconds=600), IdentityConfig(min_refresh_seconds=0.05))
        certs: dict[str, CertBundle | None] = {}
        mc.identities.subscribe(certs.__setitem__)
        batches: list[Sequence[Change]] = []
        q, _unsub = mc.state.queue()
        try:
            await mc.start()
            assert await mc.wait_ready(5)
            sleep = "spiffe://cluster.local/ns/default/sa/sleep"
            echo = "spiffe://cluster.local/ns/default/sa/echo"
            await until(lambda: certs.get(sleep) is not None, what="sleep's certificate")
            assert mc.identities.identities() == [sleep]   # echo-1 runs on node2
            batches.append(q.get_nowait())
            assert {c.key for c in batches[0]} >= {"Kubernetes//Pod/default/sleep"}
            # echo-2 lands on node1: its identity is fetched too.
            mm.write(tmp_path / "manifests", "echo-2.yaml", ECHO_2)
            await until(lambda: certs.get(echo) is not None, what="echo's certificate")
            # and dropped when it goes
            mm.remove(tmp_path / "manifests", "echo-2.yaml")
            await until(lambda: echo in certs and certs[echo] is None, what="echo dropped")
            assert mc.identities.identities() == [sleep]
        finally:
            await mc.stop()
            await cp.stop()
    run(main(), timeout=30)
