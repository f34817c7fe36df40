"""L4 policy on every inbound path: a plaintext client from outside the mesh (captured on
pod b's 15006) and a mesh client over HBONE (pod a, through both node proxies to b's 15008)
meet the same policies: Istio AuthorizationPolicies in the control plane's manifests
directory (`--config DIR`), pushed to the agents.

    pod a (sleep, 198.18.41.1) ─ node1 ─ node2 ─ pod b (echo, 198.18.43.1)
                                           │
                     outsider (198.18.45.1, not enrolled: plain TCP to b)

Per policy (ALLOW by principal, namespace-wide DENY-all, DENY by ipBlock) each client's
outcome is asserted (a denied client is reset before any app byte and never reaches the
app; an allowed one gets its bytes echoed), with node2's access-log decision (`authz`,
`policy`) and `meshnode_proxy_authz_denied_total`. The tests share one mesh (module
fixture) and each leaves the manifests with no policy.
"""

from __future__ import annotations

import errno
import hashlib
import os
import socket
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from testing import mesh_manifests as k8s
from testing.lab import Lab, Node
from testing.mesh_procs import ControlPlaneProc, MeshNode, certs_of, wait_for
from testing.mesh_stack import MeshStack
from testing.mesh_topology import Topology, build
from tests.mesh.apps import EchoServer, connect, sha

SLEEP_ID = "spiffe://cluster.local/ns/default/sa/sleep"
ECHO_ID = "spiffe://cluster.local/ns/default/sa/echo"
PAYLOAD = os.urandom(16 * 1024)  # fits the socket buffers: one thread sends, then reads
PORT = 8080
DENIED_METRIC = "meshnode_proxy_authz_denied_total"

ALLOW_SLEEP = k8s.authorization_policy(
    "allow-sleep", "ALLOW", [{"from": [{"source": {
        "principals": ["cluster.local/ns/default/sa/sleep"]}}]}], selector={"app": "echo"})
# No selector: the whole namespace; one empty rule matches every connection.
DENY_ALL = k8s.authorization_policy("deny-all", "DENY", [{}])


def deny_ip(name: str, ip: str) -> dict[str, Any]:
    return k8s.authorization_policy(
        name, "DENY", [{"from": [{"source": {"ipBlocks": [f"{ip}/32"]}}]}],
        selector={"app": "echo"})


def exchange(node: Node, ip: str, port: int) -> str:
    """One exchange from `node`: "echo" (PAYLOAD came back whole), "reset", "refused",
    "closed" (EOF without a byte) or "short". Single-threaded on purpose: a reset's error is
    reported to one call only, so a sender thread could take it and leave the reader an
    EOF that looks like an orderly close."""
    try:
        s = connect(node, ip, port)
    except ConnectionRefusedError:
        return "refused"
    except ConnectionResetError:  # the RST came before connect() read the socket's state
        return "reset"
    h, got = hashlib.sha256(), 0
    with s:
        try:
            s.sendall(PAYLOAD)
            try:
                s.shutdown(socket.SHUT_WR)
            except OSError as exc:  # reset while sending: recv() below reports the reset
                if exc.errno != errno.ENOTCONN:
                    raise
            while data := s.recv(1 << 16):
                h.update(data)
                got += len(data)
        except ConnectionResetError:
            return "reset"
    if not got:
        return "closed"
    return "echo" if h.hexdigest() == sha(PAYLOAD) else "short"


def manifests(t: Topology) -> list[dict[str, Any]]:
    """sleep on a (node1), echo on b (node2), in the ambient namespace default."""
    return [*k8s.two_nodes(),
            k8s.pod("sleep", t.a.ip4, "node1", service_account="sleep",
                    labels={"app": "sleep"}),
            k8s.pod("echo", t.b.ip4, "node2", service_account="echo", labels={"app": "echo"},
                    ports=[PORT])]


@dataclass
class Mesh:
    t: Topology
    outsider: Node
    cp: ControlPlaneProc
    n1: MeshNode
    n2: MeshNode
    echo: EchoServer

    def plaintext(self) -> str:
        """How the outsider's plain TCP exchange with b's app ended ("echo" or a failure)."""
        return exchange(self.outsider, self.t.b.ip4, PORT)

    def hbone(self) -> str:
        """How pod a's exchange with b's app ended; a's proxy tunnels it over HBONE."""
        return exchange(self.t.a, self.t.b.ip4, PORT)

    def set_policies(self, *policies: dict[str, Any]) -> None:
        """`kubectl apply -f policies.yaml` with these, or with none `kubectl delete -f`."""
        if policies:
            self.cp.write_manifests("policies.yaml", *policies)
        else:
            self.cp.remove_manifests("policies.yaml")

    def denied(self, **labels: str) -> float:
        return self.n2.proxy_metric(DENIED_METRIC, destination_principal=ECHO_ID, **labels)

    def plaintext_log(self) -> list[dict[str, Any]]:
        """node2's access-log lines for the outsider's connections (plaintext inbound)."""
        return [e for e in self.n2.log_events("connection")
                if e.get("direction") == "inbound" and e.get("transport") is None
                and e["src"].startswith(f"{self.outsider.ip4}:")]

    def hbone_log(self) -> list[dict[str, Any]]:
        return [e for e in self.n2.log_events("connection")
                if e.get("transport") == "hbone" and e["src"].startswith(f"{self.t.a.ip4}:")]

    def app_saw(self, ip: str) -> int:
        return self.echo.peers.count(ip)


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mesh]:
    tmp: Path = tmp_path_factory.mktemp("pzmesh")
    with Lab("pz") as lab, MeshStack(tmp) as s:
        t = build(lab)
        # A client outside the mesh: its own netns behind node2, never enrolled.
        outsider = lab.node("x")
        lab.link(outsider, t.node2, subnet=45, ipv6=False)  # x = .45.1, node2 = .45.2
        Lab.route(outsider, "default", "198.18.45.2")
        Lab.route(t.node1, "198.18.45.0/24", "198.18.42.2")  # a's tunnel replies, if any
        cp = s.control_plane(t.cp, *manifests(t))
        n1 = s.node("node1", t.node1, cp)
        n2 = s.node("node2", t.node2, cp)
        s.enroll(n1, t.a, "sleep")
        s.enroll(n2, t.b, "echo")
        echo = s.keep(EchoServer(t.b, PORT))
        wait_for(lambda: SLEEP_ID in certs_of(n1) and ECHO_ID in certs_of(n2), 15,
                 "both proxies to hold their pod's certificate")
        yield Mesh(t, outsider, cp, n1, n2, echo)


@pytest.fixture
def clean(mesh: Mesh) -> Iterator[Mesh]:
    """Each test starts and ends with no policy in force (both clients get their echo)."""
    mesh.set_policies()
    wait_for(lambda: mesh.plaintext() == "echo" and mesh.hbone() == "echo", 5,
             "both clients to reach the app with no policy")
    try:
        yield mesh
    finally:
        mesh.set_policies()


def test_without_policy_plaintext_is_allowed_and_the_decision_logged(clean: Mesh) -> None:
    m = clean
    seen, logged = m.app_saw(m.outsider.ip4), len(m.plaintext_log())
    assert m.plaintext() == "echo"
    assert m.app_saw(m.outsider.ip4) == seen + 1  # the app saw the real client address
    line = wait_for(lambda: m.plaintext_log()[logged:], 5, "node2's access-log line")[-1]
    assert line["authz"] == "no_allow_policies" and line["policy"] is None
    assert line["src_workload"] == "unknown" and line["dst_workload"] == "echo"
    assert line["bytes_received"] == len(PAYLOAD) and line["error"] is None


def test_allow_by_principal_admits_hbone_and_resets_plaintext(clean: Mesh) -> None:
    m = clean
    m.set_policies(ALLOW_SLEEP)
    wait_for(lambda: m.plaintext() == "reset", 5, "the ALLOW policy to reach node2")
    denied = m.denied(source_principal="", reason="not_allowed", policy="")
    seen, logged = m.app_saw(m.outsider.ip4), len(m.plaintext_log())
    assert m.plaintext() == "reset"
    assert m.app_saw(m.outsider.ip4) == seen, "a denied client reached the app"
    assert m.denied(source_principal="", reason="not_allowed", policy="") == denied + 1
    line = wait_for(lambda: m.plaintext_log()[logged:], 5, "the denial's access-log line")[-1]
    assert line["authz"] == "not_allowed" and line["error"] == "denied: not_allowed"
    assert line["bytes_sent"] == 0 and line["reset"] is True
    # The mesh client has the principal the policy names.
    logged = len(m.hbone_log())
    assert m.hbone() == "echo"
    hb = wait_for(lambda: m.hbone_log()[logged:], 5, "node2's HBONE access-log line")[-1]
    assert hb["status"] == 200 and hb["authz"] == "allowed"
    assert hb["policy"] == "default/allow-sleep" and hb["source_principal"] == SLEEP_ID


def test_namespace_deny_all_resets_plaintext_and_hbone(clean: Mesh) -> None:
    m = clean
    m.set_policies(DENY_ALL)
    wait_for(lambda: m.plaintext() == "reset", 5, "the DENY-all policy to reach node2")
    labels = {"reason": "denied_by_policy", "policy": "default/deny-all"}
    plain_denied = m.denied(source_principal="", **labels)
    hbone_denied = m.denied(source_principal=SLEEP_ID, **labels)
    seen_x, seen_a = m.app_saw(m.outsider.ip4), m.app_saw(m.t.a.ip4)
    logged = len(m.plaintext_log())
    assert m.plaintext() == "reset"
    assert m.hbone() == "reset"  # node1 resets a's connection when node2 answers 401
    assert (m.app_saw(m.outsider.ip4), m.app_saw(m.t.a.ip4)) == (seen_x, seen_a)
    assert m.denied(source_principal="", **labels) == plain_denied + 1
    assert m.denied(source_principal=SLEEP_ID, **labels) == hbone_denied + 1
    line = wait_for(lambda: m.plaintext_log()[logged:], 5, "the denial's access-log line")[-1]
    assert line["authz"] == "denied_by_policy" and line["policy"] == "default/deny-all"
    hb = wait_for(lambda: [e for e in m.hbone_log() if e["status"] == 401], 5,
                  "node2's HBONE denial line")[-1]
    assert hb["authz"] == "denied_by_policy" and hb["policy"] == "default/deny-all"
    # Each denial is one line, the access log's: no second warning repeating its fields.
    assert m.n2.log_events("plaintext_denied") == []
    assert m.n2.log_events("hbone_denied") == []


def test_deny_by_ip_block_resets_only_the_named_client(clean: Mesh) -> None:
    m = clean
    labels = {"reason": "denied_by_policy", "policy": "default/deny-outsider"}
    # The outsider's address: its plaintext is reset, the mesh client is untouched.
    m.set_policies(deny_ip("deny-outsider", m.outsider.ip4))
    wait_for(lambda: m.plaintext() == "reset", 5, "the ipBlock DENY to reach node2")
    denied = m.denied(source_principal="", **labels)
    seen, logged = m.app_saw(m.outsider.ip4), len(m.plaintext_log())
    assert m.plaintext() == "reset"
    assert m.app_saw(m.outsider.ip4) == seen
    assert m.denied(source_principal="", **labels) == denied + 1
    line = wait_for(lambda: m.plaintext_log()[logged:], 5, "the denial's access-log line")[-1]
    assert line["authz"] == "denied_by_policy" and line["policy"] == "default/deny-outsider"
    assert m.hbone() == "echo"
    # Pod a's address: its HBONE stream is refused (401), the outsider gets through.
    labels["policy"] = "default/deny-sleep-ip"
    m.set_policies(deny_ip("deny-sleep-ip", m.t.a.ip4))
    wait_for(lambda: m.hbone() == "reset", 5, "the second ipBlock DENY to reach node2")
    denied = m.denied(source_principal=SLEEP_ID, **labels)
    seen = m.app_saw(m.t.a.ip4)
    assert m.hbone() == "reset"
    assert m.app_saw(m.t.a.ip4) == seen
    assert m.denied(source_principal=SLEEP_ID, **labels) == denied + 1
    hb = wait_for(lambda: [e for e in m.hbone_log()
                           if e["policy"] == "default/deny-sleep-ip"], 5,
                  "node2's HBONE denial line")[-1]
    assert hb["status"] == 401 and hb["authz"] == "denied_by_policy"
    logged = len(m.plaintext_log())
    assert m.plaintext() == "echo"
    line = wait_for(lambda: m.plaintext_log()[logged:], 5, "the outsider's access-log line")[-1]
    assert line["authz"] == "no_allow_policies" and line["error"] is None
