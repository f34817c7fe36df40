"""Locality-aware load balancing end to end: the service "echo" has two endpoints, pod c next
to the client on node1 and pod b on node2; the client, pod a on node1, connects to the VIP
and learns from the answer which endpoint it reached. Real control plane, agents and proxies;
the endpoint pick is node1's proxy's (MeshTable.route with a's own workload as the source).

    a (sleep, node1, zone-a) ──VIP──▶ node1 proxy ─┬─ HBONE ─▶ c (echo-near, node1, zone-a)
                                                   └─ HBONE ─▶ b (echo-far,  node2, zone-b)

The control plane reads Kubernetes manifests (`--config DIR`): the locality is the Nodes'
topology labels, an endpoint's health its Pod's Ready condition, and the service's load
balancing what Kubernetes says about the Service (istiod's conversion):
`trafficDistribution: PreferClose` (or `PreferSameZone`, or Istio's annotation
`networking.istio.io/traffic-distribution`) is failover [network, region, zone],
`PreferSameNode` failover [network, region, zone, subzone, node], `internalTrafficPolicy:
Local` strict [node].

Every test writes the manifests it needs and waits until node1's proxy holds that version
(each version carries a marker service, `gen-<n>`, in the same file, so in the same push as
the change), so what follows is decided by the new state alone, not by polling until the
answers look right. The tests share one mesh (module fixture) and run in file order.
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
from testing import mesh_manifests as k8s
from testing.lab import Lab, Node
from testing.mesh_procs import ControlPlaneProc, MeshNode, NameServer, certs_of, wait_for
from testing.mesh_stack import MeshStack
from testing.mesh_topology import VIP, Topology, build

# Root is required, not optional: tests/conftest.py fails kernel suites run without it.

SLEEP_ID = "spiffe://cluster.local/ns/default/sa/sleep"
ECHO_ID = "spiffe://cluster.local/ns/default/sa/echo"
NEAR, FAR = "echo-near", "echo-far"  # what c and b answer
N = 12  # connections per check; round robin over two endpoints alternates
ZONE_A = {"region": "us-east", "zone": "us-east-1a", "subzone": "rack-1"}
ZONE_B = {"region": "us-east", "zone": "us-east-1b", "subzone": "rack-2"}
ZONE_A_RACK_2 = {"region": "us-east", "zone": "us-east-1a", "subzone": "rack-2"}
NEAR_UID = "Kubernetes//Pod/default/echo-near"
ECHO_KEY = "default/echo.default.svc.cluster.local"
# The Service's load balancing, as Kubernetes (and Istio's annotation) says it.
PREFER_CLOSE = {"trafficDistribution": "PreferClose"}  # failover [network, region, zone]
LOCAL = {"internalTrafficPolicy": "Local"}              # strict [node]
TRAFFIC_DISTRIBUTION = "networking.istio.io/traffic-distribution"
_gen = itertools.count(1)


def near_pod(t: Topology, near: str = "healthy") -> dict[str, Any]:
    """echo-near on c (node1): Ready unless `near` is "unhealthy"."""
    assert t.c is not None
    return k8s.pod(NEAR, t.c.ip4, "node1", service_account="echo", labels={"app": "echo"},
                   ready=near != "unhealthy", ports=[8080])


def manifests(t: Topology, gen: int, lb: dict[str, Any] | None = None,
              near: str | None = "healthy",
              far: dict[str, str] | None = None) -> list[dict[str, Any]]:
    """The mesh: sleep on a, the service's endpoints on c (`near`: "healthy", "unhealthy" or
    None for no pod at all) and b; `lb` is what the Service says about load balancing
    (spec fields; `annotations` go to its metadata); node1 is in ZONE_A, node2 in `far`
    (default ZONE_B)."""
    spec = dict(lb or {})
    annotations = spec.pop("annotations", None)
    objs = [*k8s.two_nodes({"node1": ZONE_A, "node2": far or ZONE_B}),
            k8s.service("echo", VIP, [(80, 8080)], selector={"app": "echo"},
                        annotations=annotations, **spec),
            # Selects nothing; node1's proxy holding it says this version has been applied.
            k8s.service(f"gen-{gen}", f"198.19.42.{gen % 250 + 1}", [(80, 80)]),
            k8s.pod("sleep", t.a.ip4, "node1", service_account="sleep",
                    labels={"app": "sleep"}),
            k8s.pod(FAR, t.b.ip4, "node2", service_account="echo", labels={"app": "echo"},
                    ports=[8080])]
    if near is not None:
        objs.append(near_pod(t, near))
    return objs


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

    def set_mesh(self, lb: dict[str, Any] | None = None, near: str | None = "healthy",
                 far: dict[str, str] | None = None) -> None:
        """Write the manifests and wait until node1's proxy has applied them (and holds the
        certificates it needs to reach what is there)."""
        gen = next(_gen)
        self.cp.write_manifests("mesh.yaml", *manifests(self.t, gen, lb, near, far))
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
    with Lab("ml") as lab, MeshStack(tmp) as s:
        t = build(lab, pod_c=True)
        assert t.c is not None
        cp = s.control_plane(t.cp, *manifests(t, 0))
        n1 = s.node("node1", t.node1, cp)
        n2 = s.node("node2", t.node2, cp)
        for node, pod, name in ((n1, t.a, "sleep"), (n1, t.c, NEAR), (n2, t.b, FAR)):
            s.enroll(node, pod, name)
        for pod, name in ((t.c, NEAR), (t.b, FAR)):
            s.keep(NameServer(pod, name, 8080)).start()
        wait_for(lambda: {SLEEP_ID, ECHO_ID} <= certs_of(n1) and ECHO_ID in certs_of(n2), 15,
                 "both proxies to hold their pods' certificates")
        yield Mesh(t, cp, n1, n2)


def test_without_preference_both_endpoints_are_reached(mesh: Mesh) -> None:
    """The sanity check: the client can tell the endpoints apart, and plain round robin
    (no load_balancing; or a preference that both endpoints match equally) reaches both."""
    mesh.set_mesh()
    got = Counter(mesh.answers())
    assert got == {NEAR: N // 2, FAR: N // 2}, got
    # PreferClose ranks network, region, zone: with node2 moved into node1's zone (another
    # rack: subzone is not ranked), both rank the same.
    mesh.set_mesh(lb=PREFER_CLOSE, far=ZONE_A_RACK_2)
    got = Counter(mesh.answers())
    assert got == {NEAR: N // 2, FAR: N // 2}, got


@pytest.mark.parametrize("lb", [PREFER_CLOSE, {"trafficDistribution": "PreferSameZone"},
                                {"trafficDistribution": "PreferSameNode"},
                                {"annotations": {TRAFFIC_DISTRIBUTION: "PreferClose"}}],
                         ids=["PreferClose", "PreferSameZone", "PreferSameNode",
                              "annotation-PreferClose"])
def test_failover_keeps_traffic_on_the_client_locality(mesh: Mesh, lb: dict[str, Any]) -> None:
    mesh.set_mesh(lb=lb)
    assert mesh.answers() == [NEAR] * N
    # The far endpoint is alive and reachable all along: the pick, not reachability.
    assert ask(mesh.t.a, mesh.t.b.ip4, 8080) == FAR


@pytest.mark.parametrize("near", ["unhealthy", None])
def test_failover_falls_back_to_the_remote_endpoint(mesh: Mesh, near: str | None) -> None:
    lb = PREFER_CLOSE
    mesh.set_mesh(lb=lb)
    assert mesh.answers() == [NEAR] * N
    # The local endpoint goes unready (or away): the directory is watched, the change pushed.
    t0 = time.monotonic()
    mesh.set_mesh(lb=lb, near=near)
    assert time.monotonic() - t0 < 5, "the mesh change took more than 5 s to reach node1"
    assert mesh.answers() == [FAR] * N
    # And it comes back: failover is a ranking per connection, not a sticky switch.
    mesh.set_mesh(lb=lb)
    assert mesh.answers() == [NEAR] * N


@pytest.mark.parametrize("near", ["unhealthy", None])
def test_strict_without_a_local_endpoint_refuses(mesh: Mesh, near: str | None) -> None:
    lb = LOCAL
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


def endpoints(node: MeshNode) -> list[str]:
    """The endpoints (workload uids) of the service echo in node's proxy."""
    return list(table_services(node).get(ECHO_KEY, {}).get("endpoints", []))


def test_a_pod_added_to_the_manifests_is_served_within_1s_and_gone_when_removed(
        mesh: Mesh) -> None:
    """Pod churn: echo-near's Pod is written to the manifests directory as a file of its own
    (`kubectl apply -f`), then deleted. Within 1 s it is a workload at both agents (a local
    one at node1's), an endpoint of echo in both proxies, and node1's proxy routes to it;
    within 1 s of its removal all of that is gone. With `internalTrafficPolicy: Local` the
    pod is the service's only endpoint a's connections may use, so an answer from it is
    the proof that it is routed to, and a reset that it is not."""
    n1, n2 = mesh.n1, mesh.n2
    mesh.set_mesh(lb=LOCAL, near=None)
    assert mesh.answers(4) == [""] * 4  # no endpoint on node1 yet
    before = n2.agent_mesh()["workloads"]
    assert NEAR_UID not in n1.agent_mesh()["local_workloads"]

    def served() -> bool:
        return (NEAR_UID in n1.agent_mesh()["local_workloads"]
                and n2.agent_mesh()["workloads"] == before + 1
                and NEAR_UID in endpoints(n1) and NEAR_UID in endpoints(n2)
                and ask(mesh.t.a, VIP, 80, timeout=1) == NEAR)

    def gone() -> bool:
        return (NEAR_UID not in n1.agent_mesh()["local_workloads"]
                and n2.agent_mesh()["workloads"] == before
                and NEAR_UID not in endpoints(n1) and NEAR_UID not in endpoints(n2)
                and ask(mesh.t.a, VIP, 80, timeout=1) == "")

    try:
        t0 = time.monotonic()
        mesh.cp.write_manifests("churn.yaml", near_pod(mesh.t))
        wait_for(served, 1.0, "the new pod at both agents and routed to by node1's proxy",
                 step=0.02)
        assert time.monotonic() - t0 < 1.0
        assert mesh.answers() == [NEAR] * N
        t0 = time.monotonic()
        mesh.cp.remove_manifests("churn.yaml")
        wait_for(gone, 1.0, "the removed pod to be gone from both agents and proxies",
                 step=0.02)
        assert time.monotonic() - t0 < 1.0
        assert mesh.answers() == [""] * N
    finally:
        mesh.cp.remove_manifests("churn.yaml")
    mesh.set_mesh(lb=LOCAL)
    assert mesh.answers() == [NEAR] * N
