"""The node proxy on the data path, against a direct connection and HAProxy, in one run.

(a) direct; (b) one hop through meshnode (the client pod enrolled: outbound capture only);
(c) two hops (both pods enrolled: outbound + inbound); (c') two hops with the userspace
copy path instead of splice; (b-ebpf, c-ebpf) the same with eBPF redirection instead of
nftables; (d) one hop through HAProxy in TCP mode in the client's netns.
Latency is sockperf's TCP ping-pong (1 KiB, one persistent connection); connection rate is
connect/1-byte echo/close from 8 concurrent clients; throughput is one iperf3 stream.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench.stats import md_table
from bench.verdict import HEADERS, Target, machine_note, spread
from testing.agent_harness import AgentProc, cni
from testing.lab import Lab, Node
from testing.proxy_procs import ProxyProc

PORTS = {"sockperf": 11111, "echo": 12000, "iperf": 5201}
HAPROXY_CFG = """global
  maxconn 4000
defaults
  mode tcp
  timeout connect 5s
  timeout client 1h
  timeout server 1h
""" + "".join(f"""listen {name}
  bind 127.0.0.1:{port}
  server s {{server}}:{port}
""" for name, port in PORTS.items())


def in_netns(node: Node, argv: list[str]) -> list[str]:
    return ["ip", "netns", "exec", node.name, *argv]


def _run(node: Node, argv: list[str], timeout: float = 60) -> str:
    return subprocess.run(in_netns(node, argv), capture_output=True, text=True, check=True,
                          timeout=timeout).stdout


def ping_pong(client: Node, ip: str, seconds: int) -> dict[str, float]:
    """sockperf's TCP ping-pong, 1 KiB: round-trip percentiles (µs) and how many round
    trips the whole run made (warm-up included, for CPU per round trip)."""
    out = _run(client, ["sockperf", "ping-pong", "--tcp", "-i", ip, "-p",
                        str(PORTS["sockperf"]), "-m", "1024", "-t", str(seconds), "--full-rtt"])
    res: dict[str, float] = {}
    for line in out.splitlines():
        # "sockperf: ---> percentile 50.000 =   45.123"
        if "percentile" in line and "=" in line:
            key = line.split("percentile")[1].split("=")[0].strip()
            res[key] = float(line.split("=")[1].strip())
        # "sockperf: [Total Run] RunTime=1.001 sec; ...; ReceivedMessages=44818"
        elif "[Total Run]" in line and "ReceivedMessages=" in line:
            res["round_trips"] = float(line.rsplit("ReceivedMessages=", 1)[1].split(";")[0])
    return res


def latency(client: Node, ip: str, seconds: int) -> tuple[float, float]:
    r = ping_pong(client, ip, seconds)
    return r["50.000"], r["99.000"]


def conn_rate(client: Node, ip: str, seconds: float) -> float:
    out = _run(client, [sys.executable, "-m", "bench.netload", "rate", ip,
                        str(PORTS["echo"]), str(seconds)])
    return float(out.strip().splitlines()[-1])


def throughput(client: Node, ip: str, seconds: int) -> float:
    out = _run(client, ["iperf3", "-c", ip, "-p", str(PORTS["iperf"]), "-t", str(seconds),
                        "-J"], timeout=seconds + 30)
    return float(json.loads(out)["end"]["sum_received"]["bits_per_second"]) / 1e9


ROUNDS = 3
METRICS = ("p50_us", "p99_us", "conn_s", "gbps", "cpu_us_per_conn")


def measure(seconds: int = 3, rounds: int = ROUNDS) -> dict[str, Any]:
    """Every path, `rounds` times, interleaved (round 1 measures them all, then round 2...),
    so a disturbance hits one round of every path rather than every round of one. Each
    row keeps its rounds; its figure is their median."""
    per_round: dict[str, dict[str, list[float]]] = {}
    direct_rtt: list[float] = []
    procs: list[subprocess.Popen[bytes]] = []
    with tempfile.TemporaryDirectory(prefix="mnpb-") as tmp, Lab("pb") as lab:
        client, server = lab.node("client"), lab.node("server")
        lab.link(client, server, subnet=9)
        sip = server.ip4
        try:
            procs.append(subprocess.Popen(in_netns(server, ["sockperf", "server", "--tcp", "-i",
                                                            "0.0.0.0", "-p",
                                                            str(PORTS["sockperf"])]),
                                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
            procs.append(subprocess.Popen(in_netns(server, ["iperf3", "-s", "-p",
                                                            str(PORTS["iperf"])]),
                                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
            procs.append(subprocess.Popen(in_netns(server, [sys.executable, "-m",
                                                            "bench.netload", "serve",
                                                            str(PORTS["echo"])]),
                                          cwd=Path(__file__).resolve().parents[1]))
            time.sleep(1.0)
            calibration = latency(client, sip, 2)[0]

            def run_all(name: str, ip: str, pid: int | None = None) -> None:
                """`pid`: the proxy process whose CPU per connection is reported."""
                p50, p99 = latency(client, ip, seconds)
                cpu0 = _cpu(pid) if pid else 0.0
                rate = conn_rate(client, ip, seconds)
                cpu = (_cpu(pid) - cpu0) / (rate * seconds) * 1e6 if pid else float("nan")
                got = per_round.setdefault(name, {m: [] for m in METRICS})
                for m, v in zip(METRICS, (p50, p99, rate, throughput(client, ip, seconds),
                                          cpu), strict=True):
                    got[m].append(v)

            for _ in range(rounds):
                run_all("a_direct", sip)
                direct_rtt.append(per_round["a_direct"]["p50_us"][-1])
                _haproxy(Path(tmp), client, sip,
                         lambda pid: run_all("d_haproxy", "127.0.0.1", pid))
                for backend, zero_copy, suffix in (("nftables", True, ""),
                                                   ("nftables", False, "_copy"),
                                                   ("ebpf", True, "_ebpf")):
                    _meshnode(Path(tmp) / f"r{len(direct_rtt)}{suffix}", client, server,
                              backend, zero_copy, suffix, run_all)
        finally:
            for p in procs:
                p.terminate()
                p.wait(10)
    rows = {name: {**{m: statistics.median(v) for m, v in got.items()}, "rounds": got}
            for name, got in per_round.items()}
    return {"seconds": seconds, "rounds": rounds, "calibration_us": calibration,
            "direct_rtt_us": direct_rtt, "rows": rows}


def _cpu(pid: int) -> float:
    """User + system CPU seconds of a process (proc(5): fields 14 and 15, in clock ticks)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _haproxy(tmp: Path, client: Node, sip: str, run: Callable[[int], None]) -> None:
    """HAProxy in TCP mode in the client's netns, for the duration of `run` (with the pod
    not enrolled: its upstream connections must not be captured by meshnode)."""
    hap_cfg = tmp / "haproxy.cfg"
    hap_cfg.write_text(HAPROXY_CFG.replace("{server}", sip))
    hap = subprocess.Popen(in_netns(client, ["haproxy", "-f", str(hap_cfg), "-db"]),
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(0.5)
    try:
        run(hap.pid)  # `ip netns exec` execs haproxy (-db: no fork), so this is its pid
    finally:
        hap.terminate()
        hap.wait(10)


def _meshnode(workdir: Path, client: Node, server: Node, backend: str, zero_copy: bool,
              suffix: str, run_all: Callable[[str, str, int | None], None]) -> None:
    """A fresh agent and proxy: the client enrolled (one hop), then the server too (two
    hops); both unenrolled and the processes stopped at the end."""
    sip = server.ip4
    agent = AgentProc(workdir / "agent", proxy_handoff=True, drift_interval=3600,
                      backend=backend).start()
    proxy = ProxyProc(workdir / "proxy", str(agent.workdir / "zds.sock"),
                      extra={"dns_capture": False, "zero_copy": zero_copy,
                             "access_log": False}).start()
    try:
        assert cni("ADD", agent.socket, client.path, "cl", [client.ip4],
                   name="client").code == 0
        pid = proxy.proc.pid if proxy.proc else None
        if zero_copy:
            run_all(f"b_one_hop{suffix}", sip, pid)
        assert cni("ADD", agent.socket, server.path, "sv", [sip], name="server").code == 0
        run_all(f"c_two_hops{suffix}", sip, pid)
        for node, cid in ((client, "cl"), (server, "sv")):
            cni("DEL", agent.socket, node.path, cid, [])
    finally:
        proxy.stop()
        agent.stop()


def targets(r: dict[str, Any]) -> list[Target]:
    """Issue 17's and the data path's targets, one ratio per round against the same round's
    HAProxy (the peer on the same path)."""
    rows = r["rows"]
    b, h, d = (rows[k]["rounds"] for k in ("b_one_hop", "d_haproxy", "a_direct"))
    n = len(d["p50_us"])
    return [
        Target("connections/s through one hop, meshnode ÷ HAProxy",
               [b["conn_s"][i] / h["conn_s"][i] for i in range(n)], 1.0),
        Target("added round trip per hop (p50), meshnode ÷ HAProxy",
               [(b["p50_us"][i] - d["p50_us"][i]) / max(h["p50_us"][i] - d["p50_us"][i], 1e-9)
                for i in range(n)], 1.5, at_least=False),
        Target("throughput through one hop, meshnode ÷ HAProxy",
               [b["gbps"][i] / h["gbps"][i] for i in range(n)], 1.0),
    ]


def report(r: dict[str, Any]) -> str:
    rows = r["rows"]
    d, h = rows["a_direct"], rows["d_haproxy"]
    names = {"a_direct": "(a) direct", "b_one_hop": "(b) meshnode, one hop",
             "c_two_hops": "(c) meshnode, two hops", "c_two_hops_copy":
             "(c') two hops, copy instead of splice", "d_haproxy": "(d) HAProxy, one hop",
             "b_one_hop_ebpf": "(b-ebpf) meshnode, one hop, eBPF redirection",
             "c_two_hops_ebpf": "(c-ebpf) meshnode, two hops, eBPF redirection"}
    table = []
    for key in ("a_direct", "b_one_hop", "c_two_hops", "c_two_hops_copy", "b_one_hop_ebpf",
                "c_two_hops_ebpf", "d_haproxy"):
        x = rows[key]
        cpu = x["rounds"]["cpu_us_per_conn"]
        table.append([names[key], f"{x['p50_us']:.0f}", f"{x['p99_us']:.0f}",
                      f"{x['p50_us'] - d['p50_us']:+.0f}", spread(x["rounds"]["conn_s"]),
                      f"{x['conn_s'] / d['conn_s']:.2f}",
                      "-" if key == "a_direct" else spread(cpu),
                      f"{x['gbps']:.2f}", f"{x['gbps'] / d['gbps']:.2f}"])
    text = ("### The proxy on the data path (same namespaces, interleaved rounds)\n\n"
            "Latency: sockperf TCP ping-pong, 1 KiB, round trip in µs. Connection rate: "
            "connect, 1-byte echo, close, 8 concurrent clients. CPU per connection: the "
            "proxy process's user + system time over the connection-rate run ÷ connections "
            "(meshnode's one proxy for both hops; HAProxy's process). Throughput: one iperf3 "
            f"stream. {r['seconds']} s per measurement; every path measured once per round, "
            f"{r['rounds']} rounds; each figure is the median of the rounds, with "
            "(min-max).\n\n")
    text += md_table(["path", "RTT p50 µs", "RTT p99 µs", "added p50 µs", "conn/s",
                      "conn/s vs direct", "proxy CPU µs/conn", "Gbit/s", "Gbit/s vs direct"],
                     table)
    text += "\n" + machine_note(r["calibration_us"], r["direct_rtt_us"]) + "\n\n"
    text += md_table(HEADERS, [t.row() for t in targets(r)])
    b = rows["b_one_hop"]
    added_b = b["p50_us"] - d["p50_us"]
    text += (f"\nSplice vs copy, two hops: "
             f"{rows['c_two_hops']['gbps'] / rows['c_two_hops_copy']['gbps']:.2f}x "
             f"throughput. HAProxy's added p50: {h['p50_us'] - d['p50_us']:+.0f} µs.\n")
    be, ce, c = rows["b_one_hop_ebpf"], rows["c_two_hops_ebpf"], rows["c_two_hops"]
    text += (f"\nThe full path with eBPF redirection instead of nftables: one hop "
             f"{be['conn_s'] / b['conn_s']:.2f}x the connection rate and "
             f"{be['p50_us'] - d['p50_us']:+.0f} vs {added_b:+.0f} µs added p50; two hops "
             f"{ce['conn_s'] / c['conn_s']:.2f}x the connection rate, "
             f"{ce['gbps'] / c['gbps']:.2f}x the throughput.\n")
    return text


if __name__ == "__main__":
    print(report(measure()))
