"""`meshnode demo`: a control plane, two nodes (agent + proxy each), pods started by
containerd through our CNI chain, four connections, then the report and a verdict; all of
it torn down again, also on Ctrl-C."""

from __future__ import annotations

import contextlib
import json
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from types import FrameType

from agent.redirect.ebpf.loader import Loader
from core.bpf import PIN_DIR_ENV
from demo import mesh
from demo.containerd import Containerd, build_rootfs, kill_pid, netns_names, processes_under
from demo.mesh import PODS, NodeDaemons
from demo.procs import Daemon
from demo.render import render
from demo.topology import POD_SUBNETS, Topology, build
from demo.traffic import Flow, flows, send
from testing.lab import Lab
from testing.pins import private_pins

STEPS = 8
PAYLOAD = 64 * 1024


class Demo:
    def __init__(self, backend: str, flavour: str, work: Path, pins: str) -> None:
        self.backend, self.flavour, self.work, self.pins = backend, flavour, work, pins
        self.t0 = time.monotonic()
        self.lab = Lab("mndemo")
        self.topo: Topology | None = None
        self.daemons: list[Daemon] = []        # started ones, stopped in reverse
        self.runtimes: dict[str, Containerd] = {}
        self.nodes: dict[str, NodeDaemons] = {}
        self.flows: list[Flow] = []

    def step(self, n: int, text: str) -> None:
        print(f"[{n}/{STEPS}] {text:<66} {time.monotonic() - self.t0:5.1f}s", flush=True)

    def env(self, node: str) -> dict[str, str]:
        # Each node is its own machine: with eBPF, its own pins (the agent and proxy of a
        # node share them; two nodes must not).
        return {PIN_DIR_ENV: f"{self.pins}-{node}"} if self.pins else {}

    def _start(self, d: Daemon) -> Daemon:
        self.daemons.append(d)
        return d.start()

    def run(self) -> bool:
        rootfs = build_rootfs(self.work / "rootfs", PAYLOAD)
        self.topo = t = build(self.lab)
        self.step(1, "netns: node1, node2, control plane, outside host; node link")

        cp_work = self.work / "cp"
        cp = self._start(mesh.control_plane(cp_work, t.cp.path))
        for name, node in t.nodes.items():  # containerd starts meanwhile
            rt = Containerd(node.name, self.work / name / "containerd", rootfs)
            self.runtimes[name] = rt
            rt.start()
        self._start(Daemon("outside httpd", ["busybox", "httpd", "-f", "-p", "8080",
                                                       "-h", str(rootfs / "www")],
                                     t.outside.path, self.work / "outside.log"))
        cp.wait_until(lambda: (cp_work / "state" / "root-cert.pem").exists()
                      and "serving" in cp.tail(100_000))
        self.step(2, "control plane serving the example mesh (198.18.40.1:15012)")

        for name, node in t.nodes.items():
            self.nodes[name] = mesh.node_daemons(name, self.work / name, node.path, cp_work,
                                            self.backend, self.flavour, self.env(name))
            self._start(self.nodes[name].agent)
        for nd in self.nodes.values():
            nd.agent.wait_http(f"http://{mesh.AGENT_HTTP}/readyz")
            self._start(nd.proxy)
        for nd in self.nodes.values():
            nd.proxy.wait_http(f"http://{mesh.PROXY_ADMIN}/healthz/ready")
        self.step(3, f"node1, node2: agent ({self.backend}) + proxy, both synced over xDS")

        for rt in self.runtimes.values():
            rt.wait_ready()
        self.step(4, "containerd running inside each node netns")

        for p in PODS:
            self.runtimes[p.node].run(p.name, p.ip, POD_SUBNETS[p.node],
                                      self.nodes[p.node].cni_socket, p.cmd)
        self._wait_certs()
        self.step(5, f"{len(PODS)} pods by `ctr run --cni`, bridge + meshnode-cni; certs issued")

        self.flows = [send(self.runtimes, f) for f in flows()]
        good = sum(f.as_expected for f in self.flows)
        self.step(6, f"traffic: {good}/{len(self.flows)} connections behaved as expected")
        time.sleep(0.3)  # the proxies log a connection when it closes
        ok = self.report()
        return ok

    def _wait_certs(self) -> None:
        def held() -> bool:
            have: set[str] = set()
            for nd in self.nodes.values():
                status, body = nd.proxy.get(f"http://{mesh.PROXY_ADMIN}/config_dump")
                if status == 200:
                    dump = json.loads(body).get("mesh") or {}
                    have |= {c["identity"] for c in dump.get("certificates", [])}
            return {p.identity for p in PODS} <= have
        self.nodes["node1"].proxy.wait_until(held, 20)

    def report(self) -> bool:
        self.step(7, "report")
        return render(self)

    def close(self) -> None:
        for rt in self.runtimes.values():  # pods first: CNI DEL needs their agent alive
            with contextlib.suppress(Exception):
                rt.close()
        for d in reversed(self.daemons):
            with contextlib.suppress(Exception):
                d.stop()
        # A Ctrl-C can land between a fork and the line that records its PID: every process
        # of this run names our work dir (configs, rootfs, sockets), so what is left is
        # found by it. The same for a netns made just before the interrupt: it has our tag.
        for pid in processes_under(str(self.work)):
            kill_pid(pid, grace=2)
        self.lab.close()
        for name in netns_names():
            if name.startswith(f"{self.lab.tag}-"):
                subprocess.run(["ip", "netns", "delete", name], check=False,
                               capture_output=True)


@contextlib.contextmanager
def _interrupts_deferred() -> Iterator[None]:
    """During cleanup a second Ctrl-C must not cut it short (that is what leaves netns and
    processes behind): SIGINT and SIGTERM are ignored until cleanup is done."""
    old = {s: signal.signal(s, signal.SIG_IGN) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for s, h in old.items():
            signal.signal(s, h)


def _sigterm(_sig: int, _frame: FrameType | None) -> None:
    raise KeyboardInterrupt  # `kill <pid>` cleans up like Ctrl-C


def _keep_logs(work: Path) -> Path:
    dest = Path(tempfile.mkdtemp(prefix="meshnode-demo-logs-"))
    for log in work.rglob("*.log"):
        target = dest / log.relative_to(work)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(log, target)
    return dest


TOOLS = ("containerd", "ctr", "runc", "containerd-shim-runc-v2", "busybox", "nsenter",
         "unshare", "ip", "nft", "iptables")


def _missing() -> str:
    """Why the demo cannot run here, before it touches anything ("" when it can)."""
    import os

    if os.geteuid() != 0:
        return "the demo needs root (network namespaces, containerd, netfilter)"
    tools = [t for t in TOOLS if shutil.which(t) is None]
    if tools:
        return f"missing tools: {', '.join(tools)} (`make setup` installs them)"
    return ""


def run_demo(backend: str, flavour: str) -> int:
    why = _missing()
    if why:
        print(f"verdict: FAIL: {why}", flush=True)
        return 1
    if backend == "ebpf":
        with private_pins() as pins:
            return _run(backend, flavour, pins)
    return _run(backend, flavour, "")


def _run(backend: str, flavour: str, pins: str) -> int:
    old_term = signal.signal(signal.SIGTERM, _sigterm)
    work = Path(tempfile.mkdtemp(prefix="meshnode-demo-"))
    print(f"meshnode demo: control plane + 2 nodes + containerd pods, backend {backend}\n"
          f"(work dir {work}, logs there; all removed at the end)\n", flush=True)
    demo = Demo(backend, flavour, work, pins)
    ok, why = False, ""
    try:
        ok = demo.run()
    except KeyboardInterrupt:
        why = "interrupted"
        print("\ninterrupted: cleaning up", flush=True)
    except Exception as exc:  # any failure still gets cleanup and a verdict
        why = f"{type(exc).__name__}: {exc}"
        print(f"\nerror: {why}", file=sys.stderr, flush=True)
    finally:
        with _interrupts_deferred():
            # Logs outlive the run only when something went wrong (not on Ctrl-C).
            kept = _keep_logs(work) if not ok and why != "interrupted" else None
            demo.close()
            if pins:
                _destroy_pins(pins)
            shutil.rmtree(work, ignore_errors=True)
            signal.signal(signal.SIGTERM, old_term)
    demo.step(8, "cleanup: pods deleted (CNI DEL), processes stopped, netns removed")
    if kept is not None:
        print(f"logs kept in {kept}")
    took = time.monotonic() - demo.t0
    verdict = (f"PASS: pods captured by {backend}, mesh traffic carried over mTLS with "
               f"identities, the policy's flow denied, non-mesh traffic passed ({took:.0f}s)"
               if ok else f"FAIL: {why or 'see the report above'}")
    print(f"\nverdict: {verdict}", flush=True)
    return 0 if ok else (130 if why == "interrupted" else 1)


def _destroy_pins(pins: str) -> None:
    for node in ("node1", "node2"):
        with contextlib.suppress(Exception):
            Loader(pin_dir=f"{pins}-{node}").destroy()

