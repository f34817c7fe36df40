"""Issue 16 end to end: Istio's traffic-management YAML, unchanged, on the two-node mesh.

    pod a (sleep) ─ node1 ─ node2 ─ b  (echo, version v1)
                                  ├─ v2 (echo, version v2)
                                  └─ v1b (echo, version v1)

The control plane reads the manifests (the VirtualService and DestinationRule in the shape
of Istio's "TCP Traffic Shifting" task), the agents get meshnode.traffic.v1 over Delta ADS,
and node1's proxy routes a's connections to the service VIP over HBONE to the subset the
weights pick. Which pod served a connection is what its echo server saw. Proven: the 90/10
split over 2,000 connections; a weight edit followed by new connections within 1 s while
an established one keeps flowing; a bad VirtualService refused with the last good routing
kept; connect retries and outlier ejection across HBONE when an endpoint dies; and
maxConnections counted at node1; LEAST_REQUEST sending less to a slow endpoint than
ROUND_ROBIN does.
"""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest

from testing import mesh_manifests as k8s
from testing.lab import Lab, Node
from testing.mesh_procs import ControlPlaneProc, MeshNode, certs_of, wait_for
from testing.mesh_stack import MeshStack
from testing.mesh_topology import VIP, Topology, add_pod, build
from tests.mesh.apps import EchoServer, connect

SLEEP_ID = "spiffe://cluster.local/ns/default/sa/sleep"
ECHO_ID = "spiffe://cluster.local/ns/default/sa/echo"
APP_PORT = 8080

DESTINATION_RULE = """\
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata:
  name: echo-destination
  namespace: default
spec:
  host: echo.default.svc.cluster.local
  subsets:
  - name: v1
    labels:
      version: v1
  - name: v2
    labels:
      version: v2
"""


def virtual_service(v1: int, v2: int) -> str:
    return f"""\
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata:
  name: echo
  namespace: default
spec:
  hosts:
  - echo
  tcp:
  - match:
    - port: 80
    route:
    - destination:
        host: echo
        port:
          number: 80
        subset: v1
      weight: {v1}
    - destination:
        host: echo
        port:
          number: 80
        subset: v2
      weight: {v2}
"""


@dataclass
class Mesh:
    t: Topology
    cp: ControlPlaneProc
    n1: MeshNode
    servers: dict[str, EchoServer]  # pod name -> its app
    pods: dict[str, Node]

    def served(self) -> dict[str, int]:
        return {name: len(s.peers) for name, s in self.servers.items()}

    def call(self, timeout: float = 5) -> bool:
        """One short exchange from a to the VIP: True when echoed."""
        try:
            with connect(self.t.a, VIP, 80, timeout) as s:
                s.sendall(b"ping")
                return s.recv(4) == b"ping"
        except OSError:
            return False

    def calls(self, n: int, workers: int = 8) -> list[bool]:
        with ThreadPoolExecutor(workers) as pool:
            return list(pool.map(lambda _: self.call(), range(n)))

    def share(self, n: int) -> dict[str, int]:
        """How `n` calls spread over the pods (every call must succeed)."""
        before = self.served()
        ok = self.calls(n)
        assert all(ok), f"{ok.count(False)} of {n} calls failed"
        after = self.served()
        return {k: after[k] - before[k] for k in after}

    def set_rules(self, *docs: str) -> None:
        self.cp.write_manifests("traffic.yaml", *docs)

    def weights(self) -> list[int]:
        """The weights of the route node1's proxy holds for the service (none: [])."""
        view = json.loads(self.n1.proxy.get("/debug/traffic")[1])
        return [d["weight"] for svc in view for r in svc["routes"]
                for d in r["destinations"]]


def manifests(t: Topology, pods: dict[str, Node]) -> list[dict[str, object]]:
    return [*k8s.two_nodes(),
            k8s.service("echo", VIP, [(80, APP_PORT)], selector={"app": "echo"}),
            k8s.pod("sleep", t.a.ip4, "node1", service_account="sleep", labels={"app": "sleep"}),
            *(k8s.pod(name, pod.ip4, "node2", service_account="echo", ports=[APP_PORT],
                      labels={"app": "echo", "version": "v2" if name == "v2" else "v1"})
              for name, pod in pods.items())]


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mesh]:
    tmp: Path = tmp_path_factory.mktemp("traffic")
    with Lab("tf") as lab, MeshStack(tmp) as s:
        t = build(lab)
        pods = {"b": t.b, "v2": add_pod(t, "v2", t.node2, 45),
                "v1b": add_pod(t, "v1b", t.node2, 46)}
        cp = s.control_plane(t.cp, *manifests(t, pods))
        n1 = s.node("node1", t.node1, cp)
        n2 = s.node("node2", t.node2, cp)
        s.enroll(n1, t.a, "sleep")
        for name, pod in pods.items():
            s.enroll(n2, pod, name)
        servers = {name: s.keep(EchoServer(pod, APP_PORT)) for name, pod in pods.items()}
        wait_for(lambda: SLEEP_ID in certs_of(n1) and ECHO_ID in certs_of(n2), 15,
                 "both proxies to hold their pods' certificates")
        m = Mesh(t, cp, n1, servers, pods)
        wait_for(m.call, 10, "a -> VIP -> echo before any rule")
        yield m


def test_canary_90_10_then_50_50_without_touching_open_connections(mesh: Mesh) -> None:
    m = mesh
    m.set_rules(DESTINATION_RULE, virtual_service(90, 10))
    wait_for(lambda: m.weights() == [90, 10], 10, "the 90/10 split to reach node1")

    got = m.share(2000)
    v2 = got["v2"] / 2000 * 100
    assert 7 <= v2 <= 13, f"v2 took {v2:.1f}% of 2000 connections (target 10 ± 3): {got}"
    assert got["b"] > 0 and got["v1b"] > 0, f"both v1 endpoints serve: {got}"

    # An established connection, on whichever pod, keeps flowing through the re-weighting.
    held = connect(m.t.a, VIP, 80)
    try:
        held.sendall(b"before")
        assert held.recv(6) == b"before"
        m.set_rules(DESTINATION_RULE, virtual_service(50, 50))
        edited = time.monotonic()
        # Every new connection is decided with the weights the proxy holds at its accept:
        # from the moment node1's proxy holds 50/50 (manifest watch, push, proxy apply),
        # new connections follow it.
        wait_for(lambda: m.weights() == [50, 50], 5, "node1's proxy to hold 50/50")
        took = time.monotonic() - edited
        assert took < 1.0, f"50/50 reached node1's proxy {took:.2f} s after the edit"
        got = m.share(1000)
        assert 40 <= got["v2"] / 10 <= 60, f"new connections split 50/50: {got}"
        held.sendall(b"after")
        assert held.recv(5) == b"after", "the established connection was disturbed"
    finally:
        held.close()


def test_a_bad_virtual_service_is_refused_and_the_last_good_one_stays(mesh: Mesh) -> None:
    m = mesh
    m.set_rules(DESTINATION_RULE, virtual_service(0, 100))
    wait_for(lambda: m.weights() == [0, 100], 10, "all traffic on v2")
    assert m.share(20)["v2"] == 20
    # Istio refuses a split whose weights are all 0 ("total destination weight = 0").
    m.set_rules(DESTINATION_RULE, virtual_service(0, 0))
    wait_for(lambda: "total destination weight = 0" in m.cp.log.read_text(), 10,
             "the control plane to refuse the VirtualService")
    time.sleep(1.0)  # what a push would have taken
    assert m.share(50)["v2"] == 50, "the last good routing (all on v2) stays in force"


def test_dead_endpoint_is_retried_then_ejected_across_hbone(mesh: Mesh) -> None:
    m = mesh
    outlier = DESTINATION_RULE.replace("  subsets:", """  trafficPolicy:
    loadBalancer:
      simple: ROUND_ROBIN
    outlierDetection:
      consecutive5xxErrors: 1
      interval: 1s
      baseEjectionTime: 3s
      maxEjectionPercent: 34
  subsets:""")
    # No VirtualService: the service's three endpoints, round robin.
    m.set_rules(outlier)
    wait_for(lambda: m.weights() == [] and '"consecutive_5xx_errors": 1' in
             m.n1.proxy.get("/debug/traffic")[1], 10, "the outlier detection to reach node1")
    assert all(v > 0 for v in m.share(30).values()), "round robin over the three endpoints"
    dead = m.servers.pop("v1b")
    dead.close()  # v1b's app stops listening: node2's proxy answers its CONNECTs 503
    try:
        # Every call succeeds from the start: a failed connect is retried on another
        # endpoint before the client sees anything.
        results = m.calls(60)
        assert all(results), f"{results.count(False)} of 60 calls failed"
        time.sleep(1.2)  # one ejection interval
        before = m.n1.proxy_metric("meshnode_proxy_traffic_connect_retries_total")
        results = m.calls(60)
        assert all(results), f"{results.count(False)} of 60 failed after the ejection"
        # Ejected: no more attempts at v1b, so no more retries.
        assert m.n1.proxy_metric("meshnode_proxy_traffic_connect_retries_total") == before
        assert m.n1.proxy_metric("meshnode_proxy_traffic_ejected_endpoints") >= 1
    finally:
        m.servers["v1b"] = EchoServer(m.pods["v1b"], APP_PORT)
    # Back after baseEjectionTime (3 s): v1b serves again.
    wait_for(lambda: m.share(30)["v1b"] > 0, 10, "v1b back after its ejection time")


def test_max_connections_refuses_the_next_connection_and_counts_it(mesh: Mesh) -> None:
    m = mesh
    pool = DESTINATION_RULE.replace("  subsets:", """  trafficPolicy:
    connectionPool:
      tcp:
        maxConnections: 3
  subsets:""")
    m.set_rules(pool)

    def pooled() -> bool:
        """node1's proxy holds the pool (its clusters appear with their first connection)."""
        m.call()
        view = json.loads(m.n1.proxy.get("/debug/traffic")[1])
        return any(c["max_connections"] == 3 for svc in view for c in svc["clusters"])

    wait_for(pooled, 10, "the connection pool to reach node1")
    held: list[socket.socket] = []
    try:
        for _ in range(3):
            s = connect(m.t.a, VIP, 80)
            s.sendall(b"x")
            assert s.recv(1) == b"x"
            held.append(s)
        before = m.n1.proxy_metric("meshnode_proxy_traffic_refused_total")
        fourth = connect(m.t.a, VIP, 80)
        with fourth:
            fourth.settimeout(5)
            with pytest.raises((ConnectionResetError, ConnectionRefusedError)):
                fourth.sendall(b"x")
                if not fourth.recv(1):
                    raise ConnectionResetError("closed")
        wait_for(lambda: m.n1.proxy_metric("meshnode_proxy_traffic_refused_total")
                 == before + 1, 5, "the overflow to be counted")
    finally:
        for s in held:
            s.close()
    wait_for(m.call, 5, "a slot back once the held connections closed")


class SlowEcho(EchoServer):
    """An echo server that answers each connection only after `delay` seconds."""

    def __init__(self, node: Node, port: int, delay: float) -> None:
        self.delay = delay
        super().__init__(node, port)

    def _serve(self) -> None:
        while True:
            try:
                c, addr = self.sock.accept()
            except OSError:
                return
            self.peers.append(addr[0])
            threading.Thread(target=self._slow, args=(c,), daemon=True).start()

    def _slow(self, c: socket.socket) -> None:
        time.sleep(self.delay)
        self._echo(c)


def _slow_share(m: Mesh, lb: str, n: int = 90) -> float:
    """Connections opened at a steady pace (30 ms apart), each held until it is answered;
    the share that went to the slow endpoint (v1b) under load-balancer `lb`."""
    m.set_rules(DESTINATION_RULE.replace("  subsets:", f"""  trafficPolicy:
    loadBalancer:
      simple: {lb}
  subsets:"""))

    def holds() -> bool:
        m.call()  # a cluster appears with its first connection
        view = json.loads(m.n1.proxy.get("/debug/traffic")[1])
        return any(c["lb"] == lb for svc in view for c in svc["clusters"])

    wait_for(holds, 10, f"{lb} to reach node1")
    before = m.served()
    results: list[bool] = []
    threads = []
    for _ in range(n):
        t = threading.Thread(target=lambda: results.append(m.call(timeout=10)))
        t.start()
        threads.append(t)
        time.sleep(0.03)
    for t in threads:
        t.join()
    assert len(results) == n and all(results), f"{results.count(False)} of {n} failed"
    return (m.served()["v1b"] - before["v1b"]) / n


def test_least_request_sends_less_to_a_slow_endpoint_than_round_robin(mesh: Mesh) -> None:
    m = mesh
    m.servers.pop("v1b").close()
    m.servers["v1b"] = SlowEcho(m.pods["v1b"], APP_PORT, delay=1.0)
    try:
        rr = _slow_share(m, "ROUND_ROBIN")
        lr = _slow_share(m, "LEAST_REQUEST")
    finally:
        m.servers.pop("v1b").close()
        m.servers["v1b"] = EchoServer(m.pods["v1b"], APP_PORT)
    assert abs(rr - 1 / 3) < 0.05, f"round robin gave the slow endpoint {rr:.2f}"
    assert lr < rr * 0.6, f"LEAST_REQUEST {lr:.2f} vs ROUND_ROBIN {rr:.2f}"


def test_rules_removed_route_as_before(mesh: Mesh) -> None:
    m = mesh
    m.cp.remove_manifests("traffic.yaml")
    wait_for(lambda: json.loads(m.n1.proxy.get("/debug/traffic")[1]) == [], 10,
             "node1's proxy to drop the rules")
    got = m.share(60)  # no pool any more: 8 concurrent clients all get through
    assert all(v > 0 for v in got.values()), f"plain balancing over every endpoint: {got}"
