"""The per-connection cost of traffic management's routing decisions (issue 16), in one run.

One captured client pod, one service (6 plain endpoints in netns e, one echo server on all of
their addresses), measured in two states that alternate within every round:

- "no rules": the service has no traffic rules, so the proxy takes its existing path
  (MeshTable.route: round robin with locality);
- "rules": a VirtualService-shaped 10 routes (9 that do not match this client, on
  destination ports, source labels and source namespace, then the one that does, which splits
  connections 50/30/20 over 3 subsets) and a DestinationRule (LEAST_REQUEST, a connection
  pool with maxConnections and connectTimeout, outlier detection on) apply to the same
  service; the proxy then decides every connection through proxy/traffic's router.

The rules are fed into the agent's mesh config server as the agent's xDS client would
(testing/mesh_feed.py), and removed again, so both states are the same process, service,
endpoints and client. Connection rate: connect, 1-byte echo, close, 8 concurrent clients
(bench/netload.py). Connect latency: sequential connect, 1-byte echo round trip, measured
to the echo's return, since with capture connect() itself returns before the proxy has
routed anything. Direct: the same latency from an uncaptured netns straight to an endpoint,
for the busy-machine note (bench/verdict.py). Target: within 5% (rules ÷ no rules: conn/s
>= 0.95, connect latency p50 <= 1.05), as the median of interleaved rounds.
"""

from __future__ import annotations

import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pyroute2 import IPRoute

from bench.proxy_path import _cpu, in_netns
from bench.stats import md_table
from bench.verdict import HEADERS, Target, machine_note, spread
from core.mesh.model import Port, Service, Vip, Workload
from core.mesh.traffic import (
    ConnectionPool,
    L4Match,
    L4Route,
    LoadBalancer,
    OutlierDetection,
    RouteDestination,
    RouteKind,
    ServiceTraffic,
    SimpleLb,
    Subset,
    TrafficPolicy,
    WorkloadLabels,
    labels,
)
from core.netns import entered
from testing.agent_harness import AgentProc, cni, http_get
from testing.lab import Lab, Node
from testing.mesh_feed import Feeder
from testing.proxy_procs import ProxyProc

REPO = Path(__file__).resolve().parents[1]
PORT = 12000
VIP = "198.19.62.10"
ENDPOINTS = tuple(f"198.18.62.{11 + i}" for i in range(6))
SVC = Service(name="echo", namespace="default", hostname="echo.default.svc.cluster.local",
              vips=(Vip("", VIP),), ports=(Port(80, PORT),))
VERSIONS = ("v1", "v2", "v3")
CLIENT = Workload(uid="uid-client", name="client", namespace="default", node="node1",
                  service_account="client", addresses=("198.18.62.1",))
ROUNDS = 3
STATES = ("none", "rules")
METRICS = ("conn_s", "p50_us", "p99_us", "cpu_us_per_conn")


def endpoints() -> list[Workload]:
    return [Workload(uid=f"uid-ep{i}", name=f"ep{i}", namespace="default", node="node2",
                     service_account="echo", addresses=(ip,),
                     services=((SVC.key, (Port(80, PORT),)),))
            for i, ip in enumerate(ENDPOINTS)]


def workload_labels() -> list[WorkloadLabels]:
    out = [WorkloadLabels(w.uid, labels({"app": "echo", "version": VERSIONS[i % 3]}))
           for i, w in enumerate(endpoints())]
    return [*out, WorkloadLabels(CLIENT.uid, labels({"app": "client", "version": "v1"}))]


def rules() -> ServiceTraffic:
    """10 routes, 3 subsets; the client matches only the last route (so every connection
    walks all ten), which weighs the subsets 50/30/20."""
    key = SVC.key

    def to(subset: str) -> tuple[RouteDestination, ...]:
        return (RouteDestination(key, subset),)

    routes = [L4Route(RouteKind.TCP, to(VERSIONS[i % 3]), (L4Match(port=81 + i),),
                      f"default/echo/tcp/{i}") for i in range(3)]
    routes += [L4Route(RouteKind.TCP, to(VERSIONS[i % 3]),
                       (L4Match(port=80, source_labels=labels({"app": f"other{i}"})),),
                       f"default/echo/tcp/{3 + i}") for i in range(4)]
    routes += [L4Route(RouteKind.TCP, to("v3"),
                       (L4Match(source_labels=labels({"app": "client", "version": "v9"})),),
                       "default/echo/tcp/7"),
               L4Route(RouteKind.TCP, to("v2"), (L4Match(source_namespace="other"),),
                       "default/echo/tcp/8"),
               L4Route(RouteKind.TCP, (RouteDestination(key, "v1", weight=50),
                                       RouteDestination(key, "v2", weight=30),
                                       RouteDestination(key, "v3", weight=20)),
                       (L4Match(port=80, source_labels=labels({"app": "client"}),
                                source_namespace="default"),), "default/echo/tcp/9")]
    policy = TrafficPolicy(
        LoadBalancer(SimpleLb.LEAST_REQUEST),
        ConnectionPool(max_connections=100_000, connect_timeout=5.0),
        OutlierDetection(consecutive_5xx_errors=5, consecutive_gateway_errors=5,
                         interval=10.0, base_ejection_time=30.0, max_ejection_percent=50))
    return ServiceTraffic(key, tuple(routes),
                          tuple(Subset(v, labels({"version": v})) for v in VERSIONS),
                          policy, "default/echo", "default/echo")


# -- the load, run inside a netns as `python -m bench.traffic_path latency IP PORT N` ---------

def first_byte_latency(ip: str, port: int, n: int) -> list[float]:
    """n sequential connections: connect, send 1 byte, read its echo, close; the time to
    the echo in µs (what an app waits before its first answer on a new connection)."""
    out = []
    for _ in range(n):
        s = socket.socket()
        t0 = time.perf_counter()
        s.connect((ip, port))
        s.sendall(b"x")
        if s.recv(16) != b"x":
            raise ConnectionError("no echo")
        out.append((time.perf_counter() - t0) * 1e6)
        s.close()
    return out


def _run(node: Node, argv: list[str], timeout: float = 120) -> str:
    p = subprocess.run(in_netns(node, argv), capture_output=True, text=True, timeout=timeout,
                       cwd=REPO)
    if p.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} in {node.name}: {p.stderr.strip()[-500:]}")
    return p.stdout


def latency(node: Node, ip: str, port: int, n: int) -> tuple[float, float]:
    """(p50, p99) in µs of `n` first-byte latencies from `node`."""
    out = _run(node, [sys.executable, "-m", "bench.traffic_path", "latency", ip, str(port),
                      str(n)])
    p50, p99 = out.split()
    return float(p50), float(p99)


def conn_rate(node: Node, ip: str, port: int, seconds: float) -> float:
    out = _run(node, [sys.executable, "-m", "bench.netload", "rate", ip, str(port),
                      str(seconds)])
    return float(out.strip().splitlines()[-1])


# -- the run ---------------------------------------------------------------------------------

def _wait(what: str, ok: Callable[[], bool], timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while not ok():
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out waiting for {what}")
        time.sleep(0.05)


def _has_rules(proxy: ProxyProc) -> bool:
    status, body = http_get(proxy.port, "/debug/traffic")
    return status == 200 and '"default/echo/tcp/9"' in body


def measure(seconds: float = 5, rounds: int = ROUNDS) -> dict[str, Any]:
    """Both states, `rounds` times; the order alternates per round (none, rules / rules,
    none...) so that a drift over the run does not favour one state."""
    n = max(200, int(300 * seconds))
    per_round: dict[str, dict[str, list[float]]] = {s: {m: [] for m in METRICS}
                                                    for s in STATES}
    direct: list[float] = []
    started: list[Any] = []
    with tempfile.TemporaryDirectory(prefix="mntp-") as tmp, Lab("tp") as lab:
        a, e, d = lab.node("client"), lab.node("endpoints"), lab.node("direct")
        lab.link(a, e, subnet=62, ipv6=False)
        Lab.route(a, "default", "198.18.62.2")
        with entered(e.path), IPRoute() as ipr:
            idx = ipr.link_lookup(ifname=e.ifname)[0]
            for ip in ENDPOINTS:
                ipr.addr("add", index=idx, address=ip, prefixlen=24)
        lab.link(d, e, subnet=63, ipv6=False)  # an uncaptured client, for the direct path
        Lab.route(d, "default", "198.18.63.2")
        try:
            server = subprocess.Popen(in_netns(e, [sys.executable, "-m", "bench.netload",
                                                   "serve", str(PORT)]), cwd=REPO)
            started.append(server)
            feed = Feeder(str(Path(tmp) / "mesh.sock"))
            started.append(feed)
            agent = AgentProc(Path(tmp) / "agent", proxy_handoff=True, drift_interval=3600)
            started.append(agent)
            agent.start()
            proxy = ProxyProc(Path(tmp) / "proxy", str(agent.workdir / "zds.sock"),
                              extra={"mesh_socket": str(Path(tmp) / "mesh.sock"),
                                     "dns_capture": False, "access_log": False})
            started.append(proxy)
            proxy.start()
            feed.apply(CLIENT, SVC, *endpoints(), *workload_labels())
            assert cni("ADD", agent.socket, a.path, "c-client", [a.ip4],
                       name="client").code == 0
            assert proxy.proc is not None
            pid = proxy.proc.pid
            time.sleep(0.5)

            def first_byte(node: Node, ip: str, port: int) -> tuple[float, float]:
                return latency(node, ip, port, n)

            conn_rate(a, VIP, 80, 1)  # warm-up: the pod's first connections, the server
            calibration = first_byte(d, ENDPOINTS[0], PORT)[0]

            def state(name: str) -> None:
                if name == "rules":
                    feed.apply(rules())
                    _wait("the rules in the proxy", lambda: _has_rules(proxy))
                else:
                    feed.apply(removed_traffic=(("traffic", SVC.key),))
                    _wait("the rules gone", lambda: not _has_rules(proxy))
                got = per_round[name]
                p50, p99 = first_byte(a, VIP, 80)
                cpu0 = _cpu(pid)
                rate = conn_rate(a, VIP, 80, seconds)
                cpu = (_cpu(pid) - cpu0) / (rate * seconds) * 1e6
                for m, v in zip(METRICS, (rate, p50, p99, cpu), strict=True):
                    got[m].append(v)

            for i in range(rounds):
                direct.append(first_byte(d, ENDPOINTS[0], PORT)[0])
                for name in STATES if i % 2 == 0 else tuple(reversed(STATES)):
                    state(name)
        finally:
            for p in reversed(started):
                if isinstance(p, subprocess.Popen):
                    p.terminate()
                    p.wait(10)
                elif isinstance(p, Feeder):
                    p.close()
                else:
                    p.stop()
    rows = {name: {**{m: statistics.median(v) for m, v in got.items()}, "rounds": got}
            for name, got in per_round.items()}
    return {"seconds": seconds, "rounds": rounds, "samples": n, "calibration_us": calibration,
            "direct_rtt_us": direct, "rows": rows,
            "config": {"routes": len(rules().routes), "subsets": len(rules().subsets),
                       "endpoints": len(ENDPOINTS)}}


def targets(r: dict[str, Any]) -> list[Target]:
    """Issue 16's "within 5%": per round, the rules state against the same round's no-rules
    state."""
    none, ruled = (r["rows"][s]["rounds"] for s in STATES)
    n = len(none["conn_s"])
    return [
        Target("connections/s, traffic rules ÷ no rules",
               [ruled["conn_s"][i] / none["conn_s"][i] for i in range(n)], 0.95),
        Target("connect latency (p50, to the first byte), traffic rules ÷ no rules",
               [ruled["p50_us"][i] / none["p50_us"][i] for i in range(n)], 1.05,
               at_least=False),
    ]


def report(r: dict[str, Any]) -> str:
    rows, cfg = r["rows"], r["config"]
    none = rows["none"]
    names = {"none": "no traffic rules (existing path)",
             "rules": f"{cfg['routes']} routes, {cfg['subsets']} subsets, DestinationRule"}
    table = []
    for key in STATES:
        x = rows[key]["rounds"]
        table.append([names[key], spread(x["conn_s"]), spread(x["p50_us"]),
                      spread(x["p99_us"]),
                      f"{statistics.median(x['p50_us']) - none['p50_us']:+.0f}",
                      spread(x["cpu_us_per_conn"])])
    text = ("### Traffic management: the cost of routing decisions (one run, same service)\n\n"
            f"One captured pod, one service with {cfg['endpoints']} plain endpoints, with and "
            f"without traffic rules ({cfg['routes']} VirtualService routes matching on "
            "ports, source labels and namespace, the last one the client's, weighing "
            f"{cfg['subsets']} subsets 50/30/20; a DestinationRule with LEAST_REQUEST, a "
            "connection pool and outlier detection). Connection rate: connect, 1-byte echo, "
            "close, 8 concurrent clients. Connect latency: sequential connect and 1-byte echo, "
            f"to the echo's return ({r['samples']} per measurement). Proxy CPU: the proxy "
            "process's user + system time over the connection-rate run ÷ connections. "
            f"{r['seconds']:g} s per rate measurement; both states once per round, "
            f"alternating which goes first, {r['rounds']} rounds; each figure is the median "
            "of the rounds, with (min-max).\n\n")
    text += md_table(["state", "conn/s", "connect p50 µs", "connect p99 µs",
                      "added p50 µs", "proxy CPU µs/conn"], table)
    text += "\n" + machine_note(r["calibration_us"], r["direct_rtt_us"]) + "\n\n"
    text += md_table(HEADERS, [t.row() for t in targets(r)])
    return text


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "latency":
        samples = sorted(first_byte_latency(sys.argv[2], int(sys.argv[3]), int(sys.argv[4])))
        print(samples[len(samples) // 2], samples[int(len(samples) * 0.99)])
        sys.exit(0)
    print(report(measure(float(os.environ.get("MESHNODE_BENCH_SECONDS", "5")))))
