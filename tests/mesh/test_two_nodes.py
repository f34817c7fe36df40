"""Two nodes, one control plane, real processes, real mTLS: pod a (node1) → service VIP →
pod b (node2) through both node proxies over HBONE. The control plane learns the mesh from
Kubernetes and Istio manifests (`--config DIR`): Pods, a Service, an AuthorizationPolicy.

The tests share one mesh (module fixture: starting it is most of the time) and run in file
order; each one leaves the manifests as it found them. An undecodable resource has no
Kubernetes form: the agent's NACK of one is tested against a fake ADS server (tests/xds).
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from core.netns import netns_inode
from testing import mesh_manifests as k8s
from testing.lab import Lab
from testing.mesh_procs import ControlPlaneProc, MeshNode, certs_of, wait_for
from testing.mesh_stack import MeshStack
from testing.mesh_topology import VIP, Topology, build
from tests.mesh.apps import EchoServer, connect, exchange, outcome, sha

# What a client sees when node2's proxy denies its CONNECT: node1's proxy resets the
# connection it had accepted, before any byte of the app's reply.
DENIED = "reset"

# Root is required, not optional: tests/conftest.py fails kernel suites run without it.

SLEEP_ID = "spiffe://cluster.local/ns/default/sa/sleep"
ECHO_ID = "spiffe://cluster.local/ns/default/sa/echo"
PAYLOAD = os.urandom(256 * 1024)


def manifests(t: Topology) -> list[dict[str, Any]]:
    """The mesh: sleep on a (node1), echo on b (node2), the service echo (VIP:80 -> 8080);
    the namespace is ambient, so both pods are reached over HBONE."""
    return [*k8s.two_nodes(),
            k8s.service("echo", VIP, [(80, 8080)], selector={"app": "echo"}),
            k8s.pod("sleep", t.a.ip4, "node1", service_account="sleep",
                    labels={"app": "sleep"}),
            k8s.pod("echo", t.b.ip4, "node2", service_account="echo", labels={"app": "echo"},
                    ports=[8080])]


DENY_SLEEP = k8s.authorization_policy(
    "deny-sleep", "DENY", [{"from": [{"source": {
        "principals": ["cluster.local/ns/default/sa/sleep"]}}]}], selector={"app": "echo"})


@dataclass
class Mesh:
    t: Topology
    cp: ControlPlaneProc
    n1: MeshNode
    n2: MeshNode
    echo: EchoServer

    def call(self) -> bool:
        return exchange(self.t.a, VIP, 80, PAYLOAD) == sha(PAYLOAD)

    def outcome(self) -> str:
        """How a's call to the service ended: "echo", or the kind of failure."""
        return outcome(self.t.a, VIP, 80, PAYLOAD)[0]

    def set_policies(self, *policies: dict[str, Any]) -> None:
        """`kubectl apply -f policies.yaml` with these, or with none `kubectl delete -f`."""
        if policies:
            self.cp.write_manifests("policies.yaml", *policies)
        else:
            self.cp.remove_manifests("policies.yaml")


def serial_of(node: MeshNode, identity: str) -> str:
    return next((c["serial"] for c in node.proxy_mesh().get("certificates", [])
                 if c["identity"] == identity), "")


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mesh]:
    tmp: Path = tmp_path_factory.mktemp("mesh")
    with Lab("ms") as lab, MeshStack(tmp) as s:
        t = build(lab)
        cp = s.control_plane(t.cp, *manifests(t))
        # node1's certificates live 40 s: renewed every ~20 s, so the rotation test sees one.
        n1 = s.node("node1", t.node1, cp, cert_ttl_seconds=40)
        n2 = s.node("node2", t.node2, cp)
        # Every process runs in its own node's netns (the control plane in its own).
        for proc, where in ((cp.proc, t.cp), (n1.agent.proc, t.node1), (n1.proxy.proc, t.node1),
                            (n2.agent.proc, t.node2), (n2.proxy.proc, t.node2)):
            assert proc is not None, where.name
            assert netns_inode(f"/proc/{proc.pid}/ns/net") == netns_inode(where.path), \
                f"pid {proc.pid} is not in {where.name}"
        s.enroll(n1, t.a, "sleep")
        s.enroll(n2, t.b, "echo")
        echo = s.keep(EchoServer(t.b, 8080))
        wait_for(lambda: SLEEP_ID in certs_of(n1) and ECHO_ID in certs_of(n2), 15,
                 "both proxies to hold their pod's certificate")
        yield Mesh(t, cp, n1, n2, echo)


def test_vip_to_remote_pod_over_mtls_names_the_source(mesh: Mesh) -> None:
    assert mesh.call(), "bytes through VIP -> node1 proxy -> HBONE -> node2 proxy -> b"
    # The app saw pod a's own address (source preserved through both hops).
    assert mesh.echo.peers[-1] == mesh.t.a.ip4
    # node2's proxy terminated mTLS and verified a's SPIFFE ID: metrics and access log.
    assert mesh.n2.proxy_metric("meshnode_hbone_streams_opened_total", direction="inbound",
                                source_principal=SLEEP_ID, destination_principal=ECHO_ID,
                                response_code="200") >= 1
    logs = wait_for(lambda: [e for e in mesh.n2.log_events("connection")
                             if e.get("transport") == "hbone"], 5, "node2's access log")
    assert logs[-1]["source_principal"] == SLEEP_ID
    assert logs[-1]["destination_principal"] == ECHO_ID
    assert logs[-1]["bytes_received"] == len(PAYLOAD)
    out = [e for e in mesh.n1.log_events("connection") if e.get("transport") == "hbone"]
    assert out and out[-1]["original_dst"] == f"{VIP}:80"
    assert out[-1]["dst"] == f"{mesh.t.b.ip4}:8080" and out[-1]["destination_principal"] == ECHO_ID
    # Without the tunnel the app port is not reachable from a in plain text either way:
    # node1 did not pass it through (no plaintext outbound connection was logged to b).
    assert not [e for e in mesh.n1.log_events("connection")
                if e.get("transport") is None and e["dst"].startswith(mesh.t.b.ip4)]


def test_deny_policy_blocks_within_2s_and_removal_restores(mesh: Mesh) -> None:
    assert mesh.call()
    denied_before = mesh.n2.proxy_metric("meshnode_proxy_authz_denied_total",
                                         source_principal=SLEEP_ID, policy="default/deny-sleep")
    t0 = time.monotonic()
    mesh.set_policies(DENY_SLEEP)
    wait_for(lambda: mesh.outcome() == DENIED, 2.0, "the DENY policy to take effect")
    assert time.monotonic() - t0 < 2.0
    assert mesh.n2.proxy_metric("meshnode_proxy_authz_denied_total", source_principal=SLEEP_ID,
                                policy="default/deny-sleep") > denied_before
    assert any(e.get("policy") == "default/deny-sleep" and e.get("status") == 401
               for e in mesh.n2.log_events("connection"))
    assert mesh.outcome() == DENIED  # stays denied, and the same way
    t0 = time.monotonic()
    mesh.set_policies()
    wait_for(mesh.call, 2.0, "access to come back after removing the policy")


def test_certificate_rotation_reaches_the_proxy_without_restart(mesh: Mesh) -> None:
    pid = mesh.n1.proxy.proc.pid if mesh.n1.proxy.proc else None
    first = serial_of(mesh.n1, SLEEP_ID)
    assert first
    wait_for(lambda: serial_of(mesh.n1, SLEEP_ID) not in ("", first), 30,
             "node1's agent to renew and hand over sleep's certificate", step=0.2)
    assert certs_of(mesh.n1) == {SLEEP_ID}  # replaced, not added
    assert mesh.n1.proxy.proc is not None and mesh.n1.proxy.proc.pid == pid
    opened = mesh.n2.proxy_metric("meshnode_hbone_streams_opened_total", direction="inbound",
                                  source_principal=SLEEP_ID, response_code="200")
    assert mesh.call()  # a new connection, made with the new certificate
    assert mesh.n2.proxy_metric("meshnode_hbone_streams_opened_total", direction="inbound",
                                source_principal=SLEEP_ID, response_code="200") > opened
    rotated = [e for e in mesh.n1.log_events("certificate_updated")
               if e["identity"] == SLEEP_ID]
    assert len(rotated) >= 2


def test_control_plane_outage_spares_traffic_and_agent_resyncs(mesh: Mesh) -> None:
    live = connect(mesh.t.a, VIP, 80)
    live.sendall(b"before")
    assert live.recv(16) == b"before"
    connects = mesh.n1.agent_mesh()["connects"]
    mesh.cp.stop(signal.SIGKILL)
    try:
        wait_for(lambda: not mesh.n1.agent_mesh()["connected"], 10, "the agent to notice")
        live.sendall(b"during")
        assert live.recv(16) == b"during"  # the running connection is untouched
        assert mesh.call()                  # new connections too: state and certs kept
        assert mesh.n1.agent.http("/readyz")[0] == 200
        assert {p["name"]: p["state"] for p in mesh.n1.agent.pods()} == {"sleep": "enrolled"}
        # A change made while the control plane is away arrives when it comes back.
        mesh.set_policies(DENY_SLEEP)
    finally:
        mesh.cp.start()
    wait_for(lambda: mesh.n2.agent_mesh()["connects"] > 0 and
             mesh.n1.agent_mesh()["connects"] > connects, 30, "the agents to reconnect")
    wait_for(lambda: mesh.outcome() == DENIED, 30, "the resynced DENY policy on node2", step=0.2)
    live.sendall(b"after")
    assert live.recv(16) == b"after"  # policy applies to new connections only
    live.close()
    mesh.set_policies()
    wait_for(mesh.call, 5, "access after removing the policy")

