"""Locality-aware load balancing end to end: the service "echo" has two endpoints, pod c next
to the client on node1 and pod b on node2; the client, pod a on node1, connects to the VIP
and learns from the answer which endpoint it reached. Real control plane, agents and proxies;
the endpoint pick is node1's proxy's (MeshTable.route with a's own workload as the source).

    a (sleep, node1, zone-a) ──VIP──▶ node1 proxy ─┬─ HBONE ─▶ c (echo-near, node1, zone-a)
                                                   └─ HBONE ─▶ b (echo-far,  node2, zone-b)

Every test writes the mesh file it needs and waits until node1's proxy holds that version
(each version carries a marker service, `gen-<n>`, in the same push as the change), so
what follows is decided by the new state alone, not by polling until the answers look
right. The tests share one mesh (module fixture) and run in file order.
"""

from __future__ import annotations

import itertools
import socket
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from core.netns import entered
from testing.agent_harness import cni
from testing.lab import Lab, Node
from testing.mesh_procs import ControlPlaneProc, MeshNode, NameServer, certs_of, wait_for
from testing.mesh_topology import VIP, Topology, build

# Root is required, not optional: tests/conftest.py fails kernel suites run without it.

SLEEP_ID = "spiffe://cluster.local/ns/default/sa/sleep"
ECHO_ID = "spiffe://cluster.local/ns/default/sa/echo"
NEAR, FAR = "echo-near", "echo-far"  # what c and b answer
N = 12  # connections per check; round robin over two endpoints alternates
ZONE_A = {"region": "us-east", "zone": "us-east-1a", "subzone": "rack-1"}
ZONE_B = {"region": "us-east", "zone": "us-east-1b", "subzone": "rack-2"}
_gen = itertools.count(1)


def mesh_file(t: Topology, gen: int, lb: dict[str, Any] | None = None,
              near: str | None = "healthy") -> dict[str, Any]:
    """The mesh: sleep on a, the service's endpoints on c (`near`: "healthy", "unhealthy" or
    None for no workload at all) and b; `lb` is the service's load_balancing."""
    assert t.c is not None
    echo: dict[str, Any] = {"name": "echo", "namespace": "default", "vips": [VIP],
                            "ports": [{"port": 80, "target_port": 8080}],
                            "selector": {"app": "echo"}}
    if lb is not None:
        echo["load_balancing"] = lb
    # Selects nothing; node1's proxy holding it says this version has been applied.
    marker = {"name": f"gen-{gen}", "namespace": "default", "vips": [f"198.19.42.{gen % 250 + 1}"],
              "ports": [{"port": 80}]}
    workloads: list[dict[str, Any]] = [
        {"name": "sleep", "namespace": "default", "service_account": "sleep",
         "ips": [t.a.ip4], "node": "node1", "locality": ZONE_A, "labels": {"app": "sleep"}},
        {"name": FAR, "namespace": "default", "service_account": "echo", "ips": [t.b.ip4],
         "node": "node2", "locality": ZONE_B, "labels": {"app": "echo"}}]
    if near is not None:
        workloads.append({"name": NEAR, "namespace": "default", "service_account": "echo",
                          "ips": [t.c.ip4], "node": "node1", "locality": ZONE_A,
                          "labels": {"app": "echo"}, "status": near})
    return {"services": [echo, marker], "workloads": workloads}


def ask(pod: Node, ip: str, port: int, timeout: float = 5) -> str:
    """Connect from `pod`, read the answer to EOF: the endpoint's name, or "" when the
    connection was refused, reset or closed without an answer."""
    with entered(pod.path):
        s = socket.socket()
    s.settimeout(timeout)
    data = b""
    with s:
        try:
            s.connect((ip, port))
            while chunk := s.recv(4096):
                data += chunk
        except OSError:
            return ""
    return data.decode(errors="replace").strip()


def table_services(node: MeshNode) -> dict[str, Any]:
    return dict(node.proxy_mesh().get("table", {}).get("services", {}))


@dataclass
class Mesh:
    t: Topology
    cp: ControlPlaneProc
    n1: MeshNode
    n2: MeshNode

    def set_mesh(self, lb: dict[str, Any] | None = None, near: str | None = "healthy") -> None:
        """Write the mesh file and wait until node1's proxy has applied it (and holds the
        certificates it needs to reach what is there)."""
        gen = next(_gen)
        self.cp.write_mesh(mesh_file(self.t, gen, lb, near))
        key = f"default/gen-{gen}.default.svc.cluster.local"
        wait_for(lambda: key in table_services(self.n1), 10,
                 f"node1's proxy to apply mesh version {gen}")
        wanted = {SLEEP_ID, ECHO_ID} if near is not None else {SLEEP_ID}
        wait_for(lambda: wanted <= certs_of(self.n1), 15, f"node1's certificates {wanted}")

    def answers(self, n: int = N) -> list[str]:
        return [ask(self.t.a, VIP, 80) for _ in range(n)]


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mesh]:
    tmp: Path = tmp_path_factory.mktemp("locality")
    lab = Lab("ml")
    started: list[Any] = []
    try:
        t = build(lab, pod_c=True)
        assert t.c is not None
        cp = ControlPlaneProc(tmp / "cp", t.cp)
        cp.write_mesh(mesh_file(t, 0))
        started.append(cp)  # before start(): a failed start still gets its process stopped
        cp.start()
        n1 = MeshNode("node1", tmp / "node1", cp, t.node1)
        started.append(n1)
        n1.start()
        n2 = MeshNode("node2", tmp / "node2", cp, t.node2)
        started.append(n2)
        n2.start()
        for node, pod, name in ((n1, t.a, "sleep"), (n1, t.c, NEAR), (n2, t.b, FAR)):
            r = cni("ADD", node.agent.socket, pod.path, f"c-{name}", [pod.ip4], name=name)
            assert r.code == 0, r.stdout
        for pod, name in ((t.c, NEAR), (t.b, FAR)):
            server = NameServer(pod, name, 8080)
            started.append(server)
            server.start()
        wait_for(lambda: {SLEEP_ID, ECHO_ID} <= certs_of(n1) and ECHO_ID in certs_of(n2), 15,
                 "both proxies to hold their pods' certificates")
        yield Mesh(t, cp, n1, n2)
    finally:
        for p in reversed(started):
            p.stop()
        lab.close()


def test_without_preference_both_endpoints_are_reached(mesh: Mesh) -> None:
    """The sanity check: the client can tell the endpoints apart, and plain round robin
    (no load_balancing; or a preference that both endpoints match equally) reaches both."""
    mesh.set_mesh()
    got = Counter(mesh.answers())
    assert got == {NEAR: N // 2, FAR: N // 2}, got
    # failover on region alone: both are in us-east, so both rank the same.
    mesh.set_mesh(lb={"mode": "failover", "routing_preference": ["region"]})
    got = Counter(mesh.answers())
    assert got == {NEAR: N // 2, FAR: N // 2}, got


@pytest.mark.parametrize("prefs", [["zone"], ["node"], ["region", "zone", "subzone"]])
def test_failover_keeps_traffic_on_the_client_locality(mesh: Mesh, prefs: list[str]) -> None:
    mesh.set_mesh(lb={"mode": "failover", "routing_preference": prefs})
    assert mesh.answers() == [NEAR] * N
    # The far endpoint is alive and reachable all along: the pick, not reachability.
    assert ask(mesh.t.a, mesh.t.b.ip4, 8080) == FAR


@pytest.mark.parametrize("near", ["unhealthy", None])
def test_failover_falls_back_to_the_remote_endpoint(mesh: Mesh, near: str | None) -> None:
    lb = {"mode": "failover", "routing_preference": ["zone"]}
    mesh.set_mesh(lb=lb)
    assert mesh.answers() == [NEAR] * N
    # The local endpoint goes unhealthy (or away): the file is watched, the change is pushed.
    t0 = time.monotonic()
    mesh.set_mesh(lb=lb, near=near)
    assert time.monotonic() - t0 < 5, "the mesh change took more than 5 s to reach node1"
    assert mesh.answers() == [FAR] * N
    # And it comes back: failover is a ranking per connection, not a sticky switch.
    mesh.set_mesh(lb=lb)
    assert mesh.answers() == [NEAR] * N


@pytest.mark.parametrize("near", ["unhealthy", None])
def test_strict_without_a_local_endpoint_refuses(mesh: Mesh, near: str | None) -> None:
    lb = {"mode": "strict", "routing_preference": ["node"]}
    mesh.set_mesh(lb=lb)
    assert mesh.answers() == [NEAR] * N  # strict with a local endpoint: that one only
    resets = len(mesh.n1.log_events("no_endpoint"))
    mesh.set_mesh(lb=lb, near=near)
    assert mesh.answers() == [""] * N  # no fallback to node2: every connection is reset
    events = mesh.n1.log_events("no_endpoint")[resets:]
    assert len(events) == N, events
    assert all(e["dst"] == f"{VIP}:80" and "strict" in e["error"] for e in events), events
    # The far endpoint itself is fine: only the VIP's pick refuses.
    assert ask(mesh.t.a, mesh.t.b.ip4, 8080) == FAR
    mesh.set_mesh(lb=lb)
    assert mesh.answers() == [NEAR] * N
