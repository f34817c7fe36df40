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
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.stats import md_table
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


def measure(seconds: int = 3) -> dict[str, Any]:
    rows: dict[str, dict[str, float]] = {}
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

            def run_all(name: str, ip: str) -> None:
                p50, p99 = latency(client, ip, seconds)
                rows[name] = {"p50_us": p50, "p99_us": p99,
                              "conn_s": conn_rate(client, ip, seconds),
                              "gbps": throughput(client, ip, seconds)}

            run_all("a_direct", sip)

            hap_cfg = Path(tmp) / "haproxy.cfg"
            hap_cfg.write_text(HAPROXY_CFG.replace("{server}", sip))
            hap = subprocess.Popen(in_netns(client, ["haproxy", "-f", str(hap_cfg), "-db"]),
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            time.sleep(0.5)
            try:
                run_all("d_haproxy", "127.0.0.1")
            finally:
                hap.terminate()
                hap.wait(10)

            for backend, zero_copy, suffix in (("nftables", True, ""),
                                               ("nftables", False, "_copy"),
                                               ("ebpf", True, "_ebpf")):
                agent = AgentProc(Path(tmp) / f"agent{suffix}", proxy_handoff=True,
                                  drift_interval=3600, backend=backend).start()
                proxy = ProxyProc(Path(tmp) / f"proxy{suffix}", str(agent.workdir / "zds.sock"),
                                  extra={"dns_capture": False, "zero_copy": zero_copy,
                                         "access_log": False}).start()
                try:
                    assert cni("ADD", agent.socket, client.path, "cl", [client.ip4],
                               name="client").code == 0
                    if zero_copy:
                        run_all(f"b_one_hop{suffix}", sip)
                    assert cni("ADD", agent.socket, server.path, "sv", [sip],
                               name="server").code == 0
                    run_all(f"c_two_hops{suffix}", sip)
                    for node, cid in ((client, "cl"), (server, "sv")):
                        cni("DEL", agent.socket, node.path, cid, [])
                finally:
                    proxy.stop()
                    agent.stop()
        finally:
            for p in procs:
                p.terminate()
                p.wait(10)
    return {"seconds": seconds, "rows": rows}


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
        table.append([names[key], f"{x['p50_us']:.0f}", f"{x['p99_us']:.0f}",
                      f"{x['p50_us'] - d['p50_us']:+.0f}", f"{x['conn_s']:.0f}",
                      f"{x['conn_s'] / d['conn_s']:.2f}", f"{x['gbps']:.2f}",
                      f"{x['gbps'] / d['gbps']:.2f}"])
    text = ("### The proxy on the data path (one run, same namespaces)\n\n"
            "Latency: sockperf TCP ping-pong, 1 KiB, round trip in µs. Connection rate: "
            "connect, 1-byte echo, close, 8 concurrent clients. Throughput: one iperf3 "
            f"stream. {r['seconds']} s per measurement.\n\n")
    text += md_table(["path", "RTT p50 µs", "RTT p99 µs", "added p50 µs", "conn/s",
                      "conn/s vs direct", "Gbit/s", "Gbit/s vs direct"], table)
    b = rows["b_one_hop"]
    added_b, added_h = b["p50_us"] - d["p50_us"], h["p50_us"] - d["p50_us"]
    text += (f"\nAdded latency per hop, meshnode vs HAProxy (p50): {added_b:.0f} µs vs "
             f"{added_h:.0f} µs = {added_b / max(added_h, 1e-9):.2f}x (target: at most 1.5x). "
             f"Throughput, one hop, meshnode vs HAProxy: {b['gbps'] / h['gbps']:.2f}x "
             f"(target: at least 1.0x). Splice vs copy, two hops: "
             f"{rows['c_two_hops']['gbps'] / rows['c_two_hops_copy']['gbps']:.2f}x "
             f"throughput.\n")
    be, ce, c = rows["b_one_hop_ebpf"], rows["c_two_hops_ebpf"], rows["c_two_hops"]
    text += (f"\nThe full path with eBPF redirection instead of nftables: one hop "
             f"{be['conn_s'] / b['conn_s']:.2f}x the connection rate and "
             f"{be['p50_us'] - d['p50_us']:+.0f} vs {added_b:+.0f} µs added p50; two hops "
             f"{ce['conn_s'] / c['conn_s']:.2f}x the connection rate, "
             f"{ce['gbps'] / c['gbps']:.2f}x the throughput.\n")
    return text


if __name__ == "__main__":
    print(report(measure()))
