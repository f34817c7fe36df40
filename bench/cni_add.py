"""CNI ADD wall time, driven the way a runtime drives a chain (libcni: exec each plugin in
order, feeding the previous result as prevResult), in a private "node" netns.

(a) bridge + host-local alone, (b) bridge + host-local + meshnode-cni with enrollment by a
real agent, in the same run. Then 100 concurrent ADDs through the full chain.
"""

from __future__ import annotations

import json
import os
import subprocess
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from agent.redirect import backend as engine
from agent.redirect.spec import RedirectSpec
from bench.stats import md_table, pct
from core.netns import entered
from testing.agent_harness import PLUGIN, AgentProc
from testing.lab import Lab, Node

CNI_PATH = "/usr/lib/cni"


class Chain:
    def __init__(self, node: Node, data_dir: str, agent_socket: str | None) -> None:
        self.node = node
        self.plugins: list[dict[str, Any]] = [{
            "type": "bridge", "bridge": "mnbench0", "isGateway": True, "ipMasq": False,
            "ipam": {"type": "host-local", "subnet": "198.18.64.0/18", "dataDir": data_dir}}]
        if agent_socket:
            self.plugins.append({"type": "meshnode-cni", "agent_socket": agent_socket,
                                 "timeout_seconds": 30})

    def _exec(self, plugin: dict[str, Any], cmd: str, cid: str, netns: str,
              prev: dict[str, Any] | None) -> tuple[dict[str, Any] | None, float]:
        conf = {"cniVersion": "1.0.0", "name": "bench", **plugin}
        if prev is not None:
            conf["prevResult"] = prev
        exe = str(PLUGIN) if plugin["type"] == "meshnode-cni" else f"{CNI_PATH}/{plugin['type']}"
        env = {"CNI_COMMAND": cmd, "CNI_CONTAINERID": cid, "CNI_NETNS": netns,
               "CNI_IFNAME": "eth0", "CNI_PATH": CNI_PATH, "PATH": os.environ["PATH"],
               # IgnoreUnknown=1: what kubelet/containerd send; Go plugins reject K8S_* without
               "CNI_ARGS": f"IgnoreUnknown=1;K8S_POD_NAMESPACE=bench;K8S_POD_NAME={cid};"
                           f"K8S_POD_UID=u-{cid}"}
        t0 = time.perf_counter()
        with entered(self.node.path):  # plugins run where the runtime runs: the node
            p = subprocess.run([exe], input=json.dumps(conf), capture_output=True, text=True,
                               env=env, timeout=60)
        dt = (time.perf_counter() - t0) * 1e3
        if p.returncode != 0:
            raise RuntimeError(f"{plugin['type']} {cmd} failed: {p.stdout} {p.stderr[-300:]}")
        return (json.loads(p.stdout) if p.stdout.strip() else None), dt

    def add(self, cid: str, netns: str) -> list[float]:
        prev, times = None, []
        for plugin in self.plugins:
            prev, dt = self._exec(plugin, "ADD", cid, netns, prev)
            times.append(dt)
        return times

    def delete(self, cid: str, netns: str) -> None:
        for plugin in reversed(self.plugins):
            self._exec(plugin, "DEL", cid, netns, None)


def measure(pods: int = 200, concurrent: int = 100) -> dict[str, Any]:
    res: dict[str, Any] = {"pods": pods, "concurrent": concurrent}
    with tempfile.TemporaryDirectory(prefix="mnbench-") as tmp, Lab("cb") as lab:
        node = lab.node("node")
        agent = AgentProc(Path(tmp), backend="nftables", drift_interval=3600).start()
        try:
            bare = Chain(node, f"{tmp}/ipam-a", None)
            full = Chain(node, f"{tmp}/ipam-b", agent.socket)
            bare_t, full_t, ours_t = [], [], []
            for i in range(pods + 3):
                for chain, sink in ((bare, bare_t), (full, full_t)):
                    pod = lab.node(f"p{i}{'b' if chain is full else 'a'}")
                    cid = f"c{i}{'b' if chain is full else 'a'}"
                    times = chain.add(cid, pod.path)
                    chain.delete(cid, pod.path)
                    lab.drop(pod)
                    if i >= 3:  # warm-up
                        sink.append(sum(times))
                        if chain is full:
                            ours_t.append(times[-1])
            res["bare"] = {"p50": pct(bare_t, 50), "p99": pct(bare_t, 99)}
            res["full"] = {"p50": pct(full_t, 50), "p99": pct(full_t, 99)}
            res["ours"] = {"p50": pct(ours_t, 50), "p99": pct(ours_t, 99)}

            nodes = [lab.node(f"q{i}") for i in range(concurrent)]
            errors: list[str] = []

            def one(i: int) -> None:
                try:
                    full.add(f"q{i}", nodes[i].path)
                except Exception as exc:
                    errors.append(str(exc))

            threads = [threading.Thread(target=one, args=(i,)) for i in range(concurrent)]
            t0 = time.perf_counter()
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            wall = time.perf_counter() - t0
            impl = engine.make_backend("nftables")
            captured = sum(engine.diff(n.path, RedirectSpec(), impl).in_sync for n in nodes)
            res["burst"] = {"wall_s": wall, "errors": len(errors),
                            "enrolled": len(agent.pods()), "in_sync": captured}
            for i, n in enumerate(nodes):
                full.delete(f"q{i}", n.path)
        finally:
            agent.stop()
    return res


def report(r: dict[str, Any]) -> str:
    bare, full, ours = r["bare"], r["full"], r["ours"]
    bridge = bare["p50"]
    text = (f"### CNI ADD ({r['pods']} pods per chain, plugins exec'd as libcni does)\n\n"
            "Each pod gets a fresh netns; the chain runs in a private node netns. meshnode-cni's "
            "time includes the agent installing the redirection (nftables backend).\n\n")
    text += md_table(["chain", "ADD p50 ms", "ADD p99 ms"], [
        ["bridge + host-local", f"{bare['p50']:.1f}", f"{bare['p99']:.1f}"],
        ["bridge + host-local + meshnode-cni", f"{full['p50']:.1f}", f"{full['p99']:.1f}"],
        ["meshnode-cni alone (incl. enrollment)", f"{ours['p50']:.1f}", f"{ours['p99']:.1f}"],
    ])
    text += (f"\nmeshnode-cni adds {ours['p50'] / bridge:.2f}x the time of the Go bridge plugin "
             f"itself (p50; target: at most 1.00x).\n\n")
    b = r["burst"]
    text += (f"**{r['concurrent']} concurrent ADDs** through the full chain: all done in "
             f"{b['wall_s']:.2f} s, {b['errors']} errors, {b['enrolled']} enrolled, "
             f"{b['in_sync']} with rules verified in sync.\n")
    return text


if __name__ == "__main__":
    print(report(measure(int(os.environ.get("MESHNODE_BENCH_PODS", "200")))))
