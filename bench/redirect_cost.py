"""What redirection itself costs a new connection, per backend, with no proxy in the way.

A client pod and a server pod; in the client pod a plain accept/echo/close server listens
on the outbound port (15001) in place of the proxy. The client connects to the server pod's
address, and the pod's redirection (iptables-nft, iptables-legacy, nftables or eBPF) sends
the connection to that local listener. The baseline, measured in the same run, is the same
client connecting to 127.0.0.1:15001 itself with no redirection installed: what a loopback
connection costs anyway. Two numbers per backend:
- connect latency: sequential blocking connect() calls, p50/p99 of the call;
- connection rate: connect, 1-byte echo, close, from 8 concurrent clients.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from agent.redirect import backend as engine
from agent.redirect.spec import RedirectSpec
from bench.stats import md_table, median
from core.ports import OUTBOUND_PORT
from testing.lab import Lab, Node

REPO = Path(__file__).resolve().parents[1]
BACKENDS = [("iptables", "nft"), ("iptables", "legacy"), ("nftables", "auto"), ("ebpf", "")]


def _run(node: Node, *argv: str) -> str:
    return subprocess.run(["ip", "netns", "exec", node.name, sys.executable, "-m",
                           "bench.netload", *argv], capture_output=True, text=True, check=True,
                          cwd=REPO, timeout=300).stdout


def _sample(client: Node, ip: str, connects: int, seconds: float) -> dict[str, float]:
    p50, p99 = (float(x) for x in _run(client, "latency", ip, str(OUTBOUND_PORT),
                                       str(connects)).split())
    rate = float(_run(client, "rate", ip, str(OUTBOUND_PORT), str(seconds)).splitlines()[-1])
    return {"connect_p50_us": p50, "connect_p99_us": p99, "conn_s": rate}


def measure(connects: int = 3000, seconds: float = 3.0, rounds: int = 3) -> dict[str, Any]:
    """`rounds` interleaved rounds (every backend once per round), medians reported: this
    machine is noisy, and a slow minute should not land on one backend only."""
    samples: dict[str, list[dict[str, float]]] = {}
    spec = RedirectSpec(dns_capture=False, inbound_capture=False)
    with Lab("rc") as lab:
        client, server = lab.node("client"), lab.node("server")
        lab.link(client, server, subnet=11)
        echo = subprocess.Popen(["ip", "netns", "exec", client.name, sys.executable, "-m",
                                 "bench.netload", "serve", str(OUTBOUND_PORT)], cwd=REPO)
        try:
            time.sleep(1.0)
            # One backend each for the whole run (an eBPF backend loads its programs once).
            impls = {(b, f): engine.make_backend(b, f) for b, f in BACKENDS}
            for _ in range(rounds):
                samples.setdefault("baseline", []).append(
                    _sample(client, "127.0.0.1", connects, seconds))
                for b, f in BACKENDS:
                    impl = impls[b, f]
                    engine.apply(client.path, spec, impl)
                    try:
                        samples.setdefault(f"{b}-{f}" if b == "iptables" else b, []).append(
                            _sample(client, server.ip4, connects, seconds))
                    finally:
                        engine.remove(client.path, spec, impl)
        finally:
            echo.terminate()
            echo.wait(10)
    rows = {name: {k: median([s[k] for s in runs]) for k in runs[0]}
            for name, runs in samples.items()}
    return {"connects": connects, "seconds": seconds, "rounds": rounds, "rows": rows}


def report(r: dict[str, Any]) -> str:
    rows = r["rows"]
    base = rows["baseline"]
    table = []
    for name, x in rows.items():
        table.append([name, f"{x['connect_p50_us']:.1f}", f"{x['connect_p99_us']:.1f}",
                      f"{x['connect_p50_us'] - base['connect_p50_us']:+.1f}",
                      f"{x['conn_s']:.0f}", f"{x['conn_s'] / base['conn_s']:.2f}"])
    ipt, bpf = rows["iptables-nft"], rows["ebpf"]
    text = ("### The cost of redirection itself (no proxy: a plain listener on 15001)\n\n"
            f"connect(): {r['connects']} sequential calls. Connection rate: connect, 1-byte "
            f"echo, close, 8 concurrent clients, {r['seconds']} s. Medians of {r['rounds']} "
            "interleaved rounds. Baseline: the same client connecting to the local listener "
            "directly, nothing installed. The rate is bounded by the Python load tool and echo "
            "server (the baseline's own ceiling); connect() is the kernel's cost alone.\n\n")
    text += md_table(["backend", "connect p50 µs", "connect p99 µs", "added p50 µs", "conn/s",
                      "conn/s vs baseline"], table)
    base_lat = base["connect_p50_us"]
    speed_lat = ipt["connect_p50_us"] / bpf["connect_p50_us"]
    added = (ipt["connect_p50_us"] - base_lat) / max(bpf["connect_p50_us"] - base_lat, 0.1)
    speed_rate = bpf["conn_s"] / ipt["conn_s"]
    verdict = "met" if speed_lat >= 1.2 else "NOT met"
    text += (f"\neBPF vs iptables (nft flavour, the default), connection setup: connect() "
             f"p50 {speed_lat:.2f}x faster (target: at least 1.2x; {verdict}); the cost "
             f"redirection adds to a connect(), {added:.1f}x smaller. Connection rate "
             f"{speed_rate:.2f}x, within the load tool's noise.\n")
    return text


if __name__ == "__main__":
    from testing.pins import private_pins

    with private_pins():
        print(report(measure()))
