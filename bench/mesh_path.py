"""The mesh path (issue 6): two node proxies with HBONE (mTLS + HTTP/2 CONNECT) between them,
against the direct path in the same run, and the agent's cost of a large discovery snapshot.

Data path: the two-node lab of tests/mesh (pods a and b under netns "nodes" joined by a
link, each node's agent + proxy inside the node's netns, one control plane in its own netns
reached over the node network). First direct (pods not enrolled), then
a → service VIP → b through both proxies over HBONE. Latency is sockperf's TCP ping-pong
(1 KiB, one persistent connection, p50/p99 round trip); throughput is one iperf3 stream.
The control plane learns the mesh from Kubernetes manifests (`--config`): the ambient
namespace, the two Nodes, pods a and b, and a Service on the VIP.

Snapshot: a realistic 10k and 100k-workload Delta ADS response (tests/xds/test_memory.py's
shape) applied through the agent's client: memory per workload (deep size of the client),
apply time; plus encoding it for the proxy channel and the proxy's table apply.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

# The same tools, servers and ports as the proxy benchmark, so the two read alike.
from bench.proxy_path import PORTS, conn_rate, in_netns, ping_pong, throughput
from bench.stats import md_table
from bench.verdict import HEADERS, Target, machine_note, spread
from core.bpf import PIN_DIR_ENV
from testing.lab import Lab, Node

METRICS = ("p50_us", "p90_us", "p99_us", "conn_s", "gbps", "proxy_cpu_us")


def _manifests(a: Node, b: Node, vip: str) -> list[dict[str, Any]]:
    """The ambient namespace default, node1 and node2, pods client (a, node1) and server
    (b, node2), and the Service bench on `vip` selecting the server, on the tools' ports."""
    from testing import mesh_manifests as k8s

    return [*k8s.two_nodes(),
            k8s.service("bench", vip, [(p, p) for p in PORTS.values()],
                        selector={"app": "bench"}),
            k8s.pod("client", a.ip4, "node1", service_account="client",
                    labels={"app": "client"}),
            k8s.pod("server", b.ip4, "node2", service_account="server",
                    labels={"app": "bench"}, ports=list(PORTS.values()))]


ROUNDS = 3


def measure_path(seconds: int = 3, rounds: int = ROUNDS) -> dict[str, Any]:
    """The direct row and both mesh rows, `rounds` times, interleaved (each round measures
    all three), so a disturbance hits one round of every row. Each row keeps its rounds;
    its figures are their medians."""
    from testing.agent_harness import cni
    from testing.mesh_procs import ControlPlaneProc, MeshNode
    from testing.mesh_topology import VIP, build
    from testing.pins import private_pins

    per_round: dict[str, dict[str, list[Any]]] = {}
    direct_rtt: list[float] = []
    servers: list[subprocess.Popen[bytes]] = []
    started: list[Any] = []
    with tempfile.TemporaryDirectory(prefix="mnmesh-") as tmp, Lab("mb") as lab:
        t = build(lab)
        pods = {"node1": t.a, "node2": t.b}
        try:
            servers.append(subprocess.Popen(
                in_netns(t.b, ["sockperf", "server", "--tcp", "-i", "0.0.0.0", "-p",
                          str(PORTS["sockperf"])]),
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
            servers.append(subprocess.Popen(in_netns(t.b, ["iperf3", "-s", "-p",
                                                      str(PORTS["iperf"])]),
                                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
            servers.append(subprocess.Popen(
                in_netns(t.b, [sys.executable, "-m", "bench.netload", "serve",
                               str(PORTS["echo"])]),
                cwd=Path(__file__).resolve().parents[1]))
            time.sleep(1.0)
            calibration = ping_pong(t.a, t.b.ip4, 2)["50.000"]

            def run_all(name: str, ip: str, proxies: tuple[int, ...] = ()) -> None:
                # CPU per round trip of each proxy is steadier than latency (latency there
                # is roughly the sum of every hop's CPU, as all four processes share two
                # cores). The connection rate is short request/response exchanges: a new
                # HBONE stream each, over the pooled mTLS connection between the nodes.
                before = [_cpu(pid) for pid in proxies]
                pp = ping_pong(t.a, ip, seconds)
                cpu = [(_cpu(pid) - b) / pp["round_trips"] * 1e6
                       for pid, b in zip(proxies, before, strict=True)]
                got = per_round.setdefault(name, {m: [] for m in METRICS})
                for m, v in zip(METRICS, (pp["50.000"], pp["90.000"], pp["99.000"],
                                          conn_rate(t.a, ip, seconds),
                                          throughput(t.a, ip, seconds), cpu), strict=True):
                    got[m].append(v)

            def mesh_row(row: str, backend: str, env: dict[str, dict[str, str]],
                         round_: int) -> None:
                """Enroll both pods with `backend` on fresh nodes, measure through the
                VIP, then unenroll them (CNI DEL, each agent removing its own capture) and
                stop the nodes, leaving the pods as the direct row measured them."""
                nodes = []
                for name, node in (("node1", t.node1), ("node2", t.node2)):
                    n = MeshNode(name, Path(tmp) / f"{row}-{round_}" / name, cp, node,
                                 backend=backend,
                                 env=env.get(name))
                    n.proxy.config.write_text(n.proxy.config.read_text() + "access_log: false\n")
                    started.append(n)  # before start(): a failed start still gets stopped
                    n.start()
                    nodes.append(n)
                    pod = pods[name]
                    assert cni("ADD", n.agent.socket, pod.path, f"c-{name}", [pod.ip4],
                               name=name).code == 0
                for n in nodes:
                    assert [(p["state"], p["backend"]) for p in n.agent.pods()] == \
                        [("enrolled", backend)], f"{n.name}: pod not captured by {backend}"
                deadline = time.monotonic() + 20
                while time.monotonic() < deadline and not all(
                        n.proxy_mesh().get("certificates") for n in nodes):
                    time.sleep(0.1)
                run_all(row, VIP, tuple(n.proxy.proc.pid for n in nodes if n.proxy.proc))
                opened = nodes[1].proxy_metric("meshnode_hbone_streams_opened_total",
                                               direction="inbound", response_code="200")
                assert opened >= 2, f"the {row} row did not go through HBONE"
                for n in nodes:
                    pod = pods[n.name]
                    assert cni("DEL", n.agent.socket, pod.path, f"c-{n.name}", [pod.ip4],
                               name=n.name).code == 0
                for n in reversed(nodes):
                    n.stop()
                    started.remove(n)

            cp = ControlPlaneProc(Path(tmp) / "cp", t.cp)
            cp.write_manifests("mesh.yaml", *_manifests(t.a, t.b, VIP))
            started.append(cp)  # before start(): a failed start still gets stopped
            cp.start()
            # Both mesh rows run in this one lab, against the one direct row above: the same
            # netns, links, servers and control plane, one after the other. A fresh lab for
            # the eBPF row would need a direct row of its own and compare across labs. What
            # makes the reuse safe: each row's pods are unenrolled by CNI DEL while their
            # agent is alive (the backend removes its own capture: nft table, ip rule/route;
            # for eBPF the pods-map entry, sk_lookup link and rule), checked after each row; the
            # eBPF programs themselves (attached to the cgroup root, pinned per node) are
            # only loaded for the second row and detached at the end.
            clean = _capture_state(t.a, t.b)
            # The eBPF rows pin into a private bpffs. Each node is its own machine: its own
            # pins, shared by its agent and proxy (as `meshnode demo --backend ebpf`); two
            # nodes must not share a pods map.
            with private_pins() as pins:
                node_pins = {name: f"{pins}-{name}" for name in pods}
                try:
                    for i in range(rounds):
                        run_all("direct", t.b.ip4)
                        direct_rtt.append(per_round["direct"]["p50_us"][-1])
                        mesh_row("mesh_hbone", "nftables", {}, i)
                        assert _capture_state(t.a, t.b) == clean, \
                            "the nftables capture was left behind"
                        mesh_row("mesh_hbone_ebpf", "ebpf",
                                 {name: {PIN_DIR_ENV: p} for name, p in node_pins.items()}, i)
                        assert _capture_state(t.a, t.b) == clean, \
                            "the eBPF capture was left behind"
                finally:
                    for p in reversed(started):  # nodes left by a failure, before the pins go
                        if isinstance(p, MeshNode):
                            p.stop()
                    _destroy_pins(node_pins.values())
        finally:
            for p in reversed(started):
                p.stop()
            for s in servers:
                s.terminate()
                s.wait(10)
    rows = {name: {**{m: statistics.median(v) for m, v in got.items() if m != "proxy_cpu_us"},
                   **({"proxy_cpu_us": [statistics.median(c) for c in zip(*got["proxy_cpu_us"],
                                                                            strict=True)]}
                      if got["proxy_cpu_us"] and got["proxy_cpu_us"][0] else {}),
                   "rounds": got}
            for name, got in per_round.items()}
    return {"seconds": seconds, "rounds": rounds, "calibration_us": calibration,
            "direct_rtt_us": direct_rtt, "rows": rows}


def _capture_state(*pods: Node) -> list[str]:
    """What capture leaves in the pods' netns: nft ruleset, ip rules, routes of all tables."""
    return [subprocess.run(in_netns(pod, argv), capture_output=True, text=True,
                           check=True).stdout
            for pod in pods
            for argv in (["nft", "list", "ruleset"], ["ip", "-4", "rule", "show"],
                         ["ip", "-6", "rule", "show"], ["ip", "-4", "route", "show", "table",
                                                        "all"],
                         ["ip", "-6", "route", "show", "table", "all"])]


def _destroy_pins(pin_dirs: Iterable[str]) -> None:
    """Detach the eBPF programs (cgroup root, pods' sk_lookup) and remove their pins."""
    from agent.redirect.ebpf.loader import Loader

    for pin_dir in pin_dirs:
        if os.path.isdir(pin_dir):
            with contextlib.suppress(Exception):
                Loader(pin_dir=pin_dir).destroy()


def _cpu(pid: int) -> float:
    """User + system CPU seconds of a process (proc(5): fields 14 and 15, in clock ticks)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def measure_snapshot(sizes: tuple[int, ...] = (10_000, 100_000)) -> dict[str, Any]:
    from agent.meshconfig.server import snapshot as channel_snapshot
    from core.wire.meshconfig import frame
    from proxy.meshconfig.table import MeshTable
    from testing.xds import client, deep_size, snapshot

    out: dict[str, Any] = {}
    for n in sizes:
        resp = snapshot(n)
        c = client()
        base = deep_size(c)
        t0 = time.perf_counter()
        asyncio.run(c.handle(resp))
        apply_s = time.perf_counter() - t0
        per = (deep_size(c) - base) / n
        t0 = time.perf_counter()
        msg = channel_snapshot(c.state)
        data = frame(msg)
        encode_s = time.perf_counter() - t0
        table = MeshTable()
        t0 = time.perf_counter()
        table.apply(json.loads(data[4:]))
        proxy_s = time.perf_counter() - t0
        out[str(n)] = {"bytes_per_workload": per, "apply_s": apply_s,
                       "channel_mb": len(data) / 1e6, "encode_s": encode_s,
                       "proxy_apply_s": proxy_s}
        del resp, c, msg, data, table
    return out


def measure(seconds: int = 3) -> dict[str, Any]:
    return {"path": measure_path(seconds), "snapshot": measure_snapshot()}


def targets(r: dict[str, Any], proxy: dict[str, Any] | None) -> list[Target]:
    """Issue 17's tunnel targets. Throughput is against the direct row of the same round.
    The connection rate is against the one-hop plaintext rate of the proxy benchmark
    (`proxy`, the same `make bench` run, another lab of the same shape): each normalised by
    its own lab's direct rate of the same round index, so the two labs' differences cancel."""
    rows = r["path"]["rows"]
    m, d = rows["mesh_hbone"]["rounds"], rows["direct"]["rounds"]
    n = len(d["gbps"])
    out = [Target("single-stream throughput through the mesh path ÷ direct",
                  [m["gbps"][i] / d["gbps"][i] for i in range(n)], 0.35)]
    if proxy is not None:
        b, pd = proxy["rows"]["b_one_hop"]["rounds"], proxy["rows"]["a_direct"]["rounds"]
        k = min(n, len(pd["conn_s"]))
        out.insert(0, Target(
            "connections/s through the mesh path (HBONE mTLS, two hops) ÷ one hop plaintext",
            [(m["conn_s"][i] / d["conn_s"][i]) / (b["conn_s"][i] / pd["conn_s"][i])
             for i in range(k)], 0.5))
    return out


def report(r: dict[str, Any], proxy: dict[str, Any] | None = None) -> str:
    """`proxy`: the proxy benchmark's results of the same run, for the tunnel's connection
    rate target (left out without it)."""
    path = r["path"]
    rows = path["rows"]
    d = rows["direct"]
    mesh = [(label, rows[key]) for key, label in (
        ("mesh_hbone", "mesh, nftables capture: a → VIP → node1 proxy → HBONE mTLS → node2 "
                       "proxy → b"),
        ("mesh_hbone_ebpf", "mesh, eBPF capture: the same path")) if key in rows]
    table = [[name, f"{x['p50_us']:.0f}", f"{x['p90_us']:.0f}", f"{x['p99_us']:.0f}",
              f"{x['p50_us'] - d['p50_us']:+.0f}", f"{x['p90_us'] - d['p90_us']:+.0f}",
              f"{x['p99_us'] - d['p99_us']:+.0f}",
              " / ".join(f"{c:.0f}" for c in x.get("proxy_cpu_us", ())) or "-",
              spread(x["rounds"]["conn_s"]), f"{x['conn_s'] / d['conn_s']:.2f}",
              f"{x['gbps']:.2f}", f"{x['gbps'] / d['gbps']:.2f}"]
             for name, x in (("direct (pod a → pod b)", d), *mesh)]
    runs = "; ".join(
        f"{label.split(':')[0].removeprefix('mesh, ')} "
        + ", ".join(f"{a:.0f}/{b:.0f}/{c:.0f}" for a, b, c in zip(
            x["rounds"]["p50_us"], x["rounds"]["p90_us"], x["rounds"]["p99_us"], strict=True))
        for label, x in mesh)
    text = ("### The mesh path: two hops with mTLS (same namespaces, interleaved rounds)\n\n"
            f"Every row measured once per round, {path['rounds']} rounds of "
            f"{path['seconds']} s per measurement; each figure is the median of the rounds. "
            f"Latency: sockperf TCP ping-pong, 1 KiB, round trip in µs (the mesh rounds' "
            f"p50/p90/p99: {runs}). Connection rate: connect, 1-byte echo, close, 8 "
            "concurrent clients, each connection a new HBONE stream over the pooled mTLS "
            "connection between the nodes; median (min-max). Throughput: one iperf3 stream. "
            "Proxy CPU: user + system time of each node proxy over the latency run, per "
            "round trip. The two mesh rows differ only in how the pods' traffic is captured "
            "(nftables rules or eBPF programs). ztunnel publishes about 170 µs p90 / 200 µs "
            "p99 added for its two hops.\n\n")
    text += md_table(["path", "RTT p50 µs", "RTT p90 µs", "RTT p99 µs", "added p50 µs",
                      "added p90 µs", "added p99 µs",
                      "proxy CPU µs per round trip (node1 / node2)", "conn/s",
                      "conn/s vs direct", "Gbit/s", "vs direct"], table)
    text += "\n" + machine_note(path["calibration_us"], path["direct_rtt_us"]) + "\n\n"
    text += md_table(HEADERS, [t.row() for t in targets(r, proxy)])
    snap = [[f"{int(n):,}", f"{x['bytes_per_workload']:.0f}", f"{x['apply_s']:.2f}",
             f"{x['channel_mb']:.1f}", f"{x['encode_s']:.2f}", f"{x['proxy_apply_s']:.2f}"]
            for n, x in r["snapshot"].items()]
    text += ("\n### Discovery snapshot cost\n\nAgent memory per workload (deep size of the "
             "discovery client's state), time to apply the Delta ADS response, and the "
             "snapshot on the agent → proxy channel (size, encode, proxy table apply).\n\n")
    text += md_table(["workloads", "agent B/workload", "agent apply s", "channel MB",
                      "encode s", "proxy apply s"], snap)
    return text


if __name__ == "__main__":
    res = measure(int(sys.argv[1]) if len(sys.argv) > 1 else 3)
    print(json.dumps(res, indent=2))
    print(report(res))
