"""Time to apply and to remove a pod's redirection, per backend, in fresh namespaces.

Each sample is one pod: a fresh netns, then `apply` (routes + rules, as the agent does on
CNI ADD), then `remove`. The baseline, measured in the same run on the same machine, is what
a naive implementation pays: one exec of the stock tool with the same rules (no routes).
"""

from __future__ import annotations

import subprocess
import time
from typing import Any

from agent.redirect import backend as engine
from agent.redirect import iptables_rules, nftables_rules
from agent.redirect.spec import RedirectSpec
from bench.stats import md_table, pct
from core.netns import entered
from testing.lab import Lab

BACKENDS = [("iptables", "nft"), ("iptables", "legacy"), ("nftables", "auto"), ("ebpf", "")]


def _time_pods(n: int, fn: Any) -> list[float]:
    out = []
    with Lab("b") as lab:
        nodes = [lab.node(f"p{i}") for i in range(n)]
        for node in nodes:
            out.append(fn(node.path))
    return out


def measure(pods: int = 200) -> dict[str, Any]:
    spec = RedirectSpec()
    results: dict[str, Any] = {"pods": pods, "rows": []}
    for b, f in BACKENDS:
        impl = engine.make_backend(b, f)
        removes: list[float] = []

        def one(path: str, impl: engine.RuleBackend = impl,
                removes: list[float] = removes) -> float:
            t0 = time.perf_counter()
            engine.apply(path, spec, impl)
            t1 = time.perf_counter()
            engine.remove(path, spec, impl)
            removes.append((time.perf_counter() - t1) * 1e3)
            return (t1 - t0) * 1e3

        _time_pods(3, one)  # warm-up (imports, caches) outside the samples
        removes.clear()
        applies = _time_pods(pods, one)
        results["rows"].append({"backend": impl.name, "apply_p50": pct(applies, 50),
                                "apply_p99": pct(applies, 99), "remove_p50": pct(removes, 50),
                                "remove_p99": pct(removes, 99)})

    def exec_tool(argv: list[str], payload: str) -> Any:
        def one(path: str) -> float:
            with entered(path):
                t0 = time.perf_counter()
                subprocess.run(argv, input=payload, text=True, check=True)
                return (time.perf_counter() - t0) * 1e3
        return one

    v4 = iptables_rules.render_pod(spec, 4).text()
    base = {  # keyed by the backend each one is the naive form of
        "iptables-nft": exec_tool(["iptables-nft-restore", "--noflush"], v4),
        "iptables-legacy": exec_tool(["iptables-legacy-restore", "--noflush"], v4),
        "nftables": exec_tool(["nft", "-f", "-"], nftables_rules.render_pod(spec).text()),
    }
    results["baseline"] = []
    for name, fn in base.items():
        samples = _time_pods(pods, fn)
        results["baseline"].append({"backend": name, "tool": f"exec {name} tool",
                                    "p50": pct(samples, 50),
                                    "p99": pct(samples, 99)})
    return results


def report(r: dict[str, Any]) -> str:
    naive = {b["backend"]: b["p50"] for b in r["baseline"]}
    rows = [[x["backend"], f"{x['apply_p50']:.1f}", f"{x['apply_p99']:.1f}",
             f"{x['apply_p50'] / naive[x['backend']]:.2f}x" if x["backend"] in naive else "n/a",
             f"{x['remove_p50']:.1f}",
             f"{x['remove_p99']:.1f}"] for x in r["rows"]]
    text = (f"### Redirect apply/remove ({r['pods']} fresh namespaces per backend)\n\n"
            "Apply = netlink routes + all rules, as on CNI ADD. The ratio is our apply p50 "
            "over the p50 of one exec of that backend's stock tool with the same rules and "
            "no routes (the naive way; lower is better). eBPF: map writes, the pod's "
            "addresses and one sk_lookup link; its programs are loaded once, before the "
            "samples, as the agent does at start-up.\n\n")
    text += md_table(["backend", "apply p50 ms", "apply p99 ms", "vs naive exec",
                      "remove p50 ms", "remove p99 ms"], rows)
    text += "\nBaseline, same run: one exec of the stock tool with the same rules, no routes.\n\n"
    text += md_table(["baseline", "p50 ms", "p99 ms"],
                     [[b["tool"], f"{b['p50']:.1f}", f"{b['p99']:.1f}"] for b in r["baseline"]])
    return text


if __name__ == "__main__":
    print(report(measure()))
