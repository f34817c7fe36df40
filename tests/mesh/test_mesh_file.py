"""The two-node mesh with the control plane on the older mesh-file format (`--mesh FILE`):
pod a (node1) → service VIP → pod b (node2) over HBONE, as in test_two_nodes.py, which runs
the same lab from Kubernetes manifests.

What stays here is what has no Kubernetes or Istio form: the mesh file's test hook
`debug.malformed_resources` (docs/control-plane.md, "Test hook: malformed resources"), which
proves the agent's NACK path end to end. It also keeps the mesh-file source covered end to
end while the demo still uses it.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from testing.agent_harness import cni
from testing.lab import Lab
from testing.mesh_procs import ControlPlaneProc, MeshNode, certs_of, wait_for
from testing.mesh_topology import VIP, Topology, build
from tests.mesh.apps import EchoServer, exchange, sha

# Root is required, not optional: tests/conftest.py fails kernel suites run without it.

SLEEP_ID = "spiffe://cluster.local/ns/default/sa/sleep"
ECHO_ID = "spiffe://cluster.local/ns/default/sa/echo"
PAYLOAD = os.urandom(256 * 1024)


def mesh_file(t: Topology, debug: dict[str, Any] | None = None) -> dict[str, Any]:
    m: dict[str, Any] = {
        "services": [{"name": "echo", "namespace": "default", "vips": [VIP],
                      "ports": [{"port": 80, "target_port": 8080}], "selector": {"app": "echo"}}],
        "workloads": [
            {"name": "sleep", "namespace": "default", "service_account": "sleep",
             "ips": [t.a.ip4], "node": "node1", "labels": {"app": "sleep"}, "tunnel": "hbone"},
            {"name": "echo", "namespace": "default", "service_account": "echo",
             "ips": [t.b.ip4], "node": "node2", "labels": {"app": "echo"}, "tunnel": "hbone"}]}
    if debug:
        m["debug"] = debug
    return m


@dataclass
class Mesh:
    t: Topology
    cp: ControlPlaneProc
    n1: MeshNode
    n2: MeshNode

    def call(self) -> bool:
        return exchange(self.t.a, VIP, 80, PAYLOAD) == sha(PAYLOAD)

    def set_mesh(self, **kw: Any) -> None:
        self.cp.write_mesh(mesh_file(self.t, **kw))


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mesh]:
    tmp: Path = tmp_path_factory.mktemp("meshfile")
    lab = Lab("mf")
    started: list[Any] = []
    try:
        t = build(lab)
        cp = ControlPlaneProc(tmp / "cp", t.cp)
        cp.write_mesh(mesh_file(t))
        started.append(cp)  # before start(): a failed start still gets its process stopped
        cp.start()
        n1 = MeshNode("node1", tmp / "node1", cp, t.node1)
        started.append(n1)
        n1.start()
        n2 = MeshNode("node2", tmp / "node2", cp, t.node2)
        started.append(n2)
        n2.start()
        for node, pod, name in ((n1, t.a, "sleep"), (n2, t.b, "echo")):
            r = cni("ADD", node.agent.socket, pod.path, f"c-{name}", [pod.ip4], name=name)
            assert r.code == 0, r.stdout
        echo = EchoServer(t.b, 8080)
        started.append(echo)
        wait_for(lambda: SLEEP_ID in certs_of(n1) and ECHO_ID in certs_of(n2), 15,
                 "both proxies to hold their pod's certificate")
        yield Mesh(t, cp, n1, n2)
    finally:
        for p in reversed(started):
            p.close() if isinstance(p, EchoServer) else p.stop()
        lab.close()


def test_malformed_resource_is_nacked_and_agent_stays_ready(mesh: Mesh) -> None:
    assert mesh.call(), "bytes through VIP -> node1 proxy -> HBONE -> node2 proxy -> b"
    nacks = mesh.n1.agent_mesh()["nacks"]
    mesh.set_mesh(debug={"malformed_resources": [{"type": "address", "name": "bad-1"}]})
    wait_for(lambda: mesh.n1.agent_mesh()["nacks"] > nacks, 5, "node1's agent to NACK")
    info = mesh.n1.agent_mesh()
    assert "bad-1" in info["last_nack"] and info["ready"]
    assert mesh.n1.agent.http("/readyz")[0] == 200
    assert mesh.call()  # the last good state is still in force
    mesh.set_mesh()
