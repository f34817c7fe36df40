"""A real two-node mesh for the CLI tests: the control plane, and per node a real agent and
proxy in the node's netns (testing/mesh_procs.py). Pod a (sleep, node1) and pod b (echo,
node2) are enrolled, a service and a policy exist, and a long-lived connection from sleep
to the echo service is held open, so every `meshnode` view has something real to show.

The agents' metrics listeners (which also serve /debug/status and /debug/version) are on
0.0.0.0:15022 of their node's netns (each netns has its own), as a DaemonSet agent on the
host network has them, so the API server's pod proxy reaches them at the node IP, the agent
pod's IP (`meshnode status --kubeconfig`). Their debug HTTP stays on loopback.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from core.ports import AGENT_STATS_PORT
from testing import mesh_manifests as k8s
from testing.lab import Lab
from testing.mesh_procs import ControlPlaneProc, MeshNode, certs_of, wait_for
from testing.mesh_stack import MeshStack
from testing.mesh_topology import VIP, Topology, build
from tests.mesh.apps import EchoServer, connect

AGENT_PORT = AGENT_STATS_PORT
SLEEP_ID = "spiffe://cluster.local/ns/default/sa/sleep"
ECHO_ID = "spiffe://cluster.local/ns/default/sa/echo"
# Denies an identity nobody has: present in every proxy's table, in the way of nothing.
POLICY = k8s.authorization_policy(
    "deny-nobody", "DENY", [{"from": [{"source": {
        "principals": ["cluster.local/ns/default/sa/nobody"]}}]}], selector={"app": "echo"})


@dataclass
class Mesh:
    t: Topology
    cp: ControlPlaneProc
    n1: MeshNode
    n2: MeshNode
    conn: socket.socket  # sleep -> echo service, open for the whole session
    sent: int

    def node_flags(self, node: MeshNode) -> list[str]:
        """Where `meshnode` run inside `node`'s netns finds that node's daemons."""
        return ["--config", str(node.agent.config),
                "--proxy-admin", f"127.0.0.1:{node.proxy.port}"]


def _listen_on_node_ip(node: MeshNode) -> None:
    cfg: dict[str, Any] = yaml.safe_load(node.agent.config.read_text())
    cfg["metrics_address"] = f"0.0.0.0:{AGENT_PORT}"
    node.agent.config.write_text(yaml.safe_dump(cfg))


@pytest.fixture(scope="session")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mesh]:
    tmp: Path = tmp_path_factory.mktemp("climesh")
    with Lab("cl") as lab, MeshStack(tmp) as s:
        t = build(lab)
        cp = s.control_plane(t.cp, *k8s.two_nodes(),
                             k8s.service("echo", VIP, [(80, 8080)], selector={"app": "echo"}),
                             k8s.pod("sleep", t.a.ip4, "node1", service_account="sleep",
                                     labels={"app": "sleep"}),
                             k8s.pod("echo", t.b.ip4, "node2", service_account="echo",
                                     labels={"app": "echo"}, ports=[8080]),
                             POLICY)
        n1 = s.node("node1", t.node1, cp, _listen_on_node_ip)
        n2 = s.node("node2", t.node2, cp, _listen_on_node_ip)
        s.enroll(n1, t.a, "sleep")
        s.enroll(n2, t.b, "echo")
        s.keep(EchoServer(t.b, 8080))
        wait_for(lambda: SLEEP_ID in certs_of(n1) and ECHO_ID in certs_of(n2), 20,
                 "both proxies to hold their pod's certificate")
        conn = s.keep(connect(t.a, VIP, 80))  # closed first, before the processes stop
        payload = b"x" * 50_000
        conn.sendall(payload)
        got = 0
        while got < len(payload):
            got += len(conn.recv(65536))
        yield Mesh(t, cp, n1, n2, conn, len(payload))
