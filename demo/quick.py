"""`meshnode demo --quick`: one node, in about 3 s, then cleaned up.

A real node agent and a real node proxy run as child processes; pods are network namespaces
enrolled through the real CNI plugin (as a runtime would call it); traffic goes pod to pod
(two proxy hops) and pod to a non-mesh host (one hop); then the report: pods, the
connections the proxy saw, and one pod's rules with their counters. No control plane, no
mTLS, no containerd: the full demo (run.py) has those.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

import yaml

from agent.redirect import backend as engine
from agent.redirect.spec import RedirectSpec
from core.netns import entered
from testing.lab import Lab, Node
from testing.pins import private_pins

REPO = Path(__file__).resolve().parents[1]
PLUGIN = REPO / "cni" / "meshnode-cni"


def _step(n: int, total: int, text: str) -> None:
    print(f"[{n}/{total}] {text}", flush=True)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _ready(url: str, proc: subprocess.Popen[bytes], log: Path, what: str) -> None:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited:\n{log.read_text()[-1500:]}")
        try:
            with urllib.request.urlopen(url, timeout=1) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"{what} did not become ready:\n{log.read_text()[-1500:]}")


def _spawn(kind: str, cfg: dict[str, Any], work: Path) -> tuple[subprocess.Popen[bytes], Path]:
    conf, log = work / f"{kind}.yaml", work / f"{kind}.log"
    conf.write_text(yaml.safe_dump(cfg))
    with open(log, "wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "cli.main", kind, "--config",
                                 str(conf)], stdout=out, stderr=out, cwd=REPO)
    return proc, log


def _cni(cmd: str, sock: str, node: Node, name: str) -> dict[str, Any]:
    prev = {"cniVersion": "1.0.0", "interfaces": [{"name": "eth0", "sandbox": node.path}],
            "ips": [{"address": f"{node.ip4}/24", "interface": 0}]}
    conf = {"cniVersion": "1.0.0", "name": "demo", "type": "meshnode-cni",
            "agent_socket": sock, "prevResult": prev}
    env = {"CNI_COMMAND": cmd, "CNI_CONTAINERID": f"demo-{name}", "CNI_NETNS": node.path,
           "CNI_IFNAME": "eth0", "CNI_PATH": "/usr/lib/cni", "PATH": os.environ["PATH"],
           "CNI_ARGS": f"K8S_POD_NAMESPACE=demo;K8S_POD_NAME={name};K8S_POD_UID=uid-{name}"}
    p = subprocess.run([str(PLUGIN)], input=json.dumps(conf), capture_output=True, text=True,
                       env=env, timeout=30)
    if p.returncode != 0:
        raise RuntimeError(f"CNI {cmd} for {name} failed: {p.stdout.strip()}")
    return json.loads(p.stdout) if p.stdout.strip() else {}


def _echo_server(node: Node, port: int) -> socket.socket:
    with entered(node.path):
        srv = socket.create_server(("0.0.0.0", port))

    def serve() -> None:
        while True:
            try:
                c, _ = srv.accept()
            except OSError:
                return
            with c:
                while data := c.recv(65536):
                    c.sendall(data)

    threading.Thread(target=serve, daemon=True).start()
    return srv


def _talk(node: Node, ip: str, port: int, payload: bytes) -> bool:
    with entered(node.path):
        s = socket.socket()
    with s:
        s.settimeout(5)
        s.connect((ip, port))
        s.sendall(payload)
        s.shutdown(socket.SHUT_WR)
        got = b""
        while data := s.recv(65536):
            got += data
    return got == payload


def run_quick(backend: str, flavour: str) -> int:
    if backend == "ebpf":
        with private_pins():  # the agent and proxy find it through MESHNODE_BPF_PIN_DIR
            return _run_demo(backend, flavour)
    return _run_demo(backend, flavour)


def _run_demo(backend: str, flavour: str) -> int:
    total = 6
    procs: list[subprocess.Popen[bytes]] = []
    ok = False
    print(f"meshnode demo — agent + node proxy + CNI plugin ({backend})\n")
    with tempfile.TemporaryDirectory(prefix="meshnode-demo-") as tmp, Lab("demo") as lab:
        work = Path(tmp)
        try:
            web, client, outside = lab.node("web"), lab.node("client"), lab.node("outside")
            lab.link(client, web, subnet=1)
            lab.link(client, outside, subnet=2)
            _step(1, total, f"pods: client {client.ip4}, web {web.ip4} (mesh); outside "
                            f"{outside.ip4} (no mesh)")

            agent_port, proxy_port = _free_port(), _free_port()
            zds, cni_sock = str(work / "zds.sock"), str(work / "cni.sock")
            agent, alog = _spawn("agent", {
                "cni_socket": cni_sock, "zds_socket": zds, "state_dir": str(work / "state"),
                "http_address": f"127.0.0.1:{agent_port}",
                "metrics_address": "",  # on the host: no listener on its interfaces
                "capture": {"backend": backend, "iptables_flavour": flavour}}, work)
            procs.append(agent)
            _ready(f"http://127.0.0.1:{agent_port}/readyz", agent, alog, "agent")
            proxy, plog = _spawn("proxy", {"zds_socket": zds, "dns_capture": False,
                                           "admin_address": f"127.0.0.1:{proxy_port}",
                                           "metrics_address": ""}, work)
            procs.append(proxy)
            _ready(f"http://127.0.0.1:{proxy_port}/healthz/ready", proxy, plog, "proxy")
            _step(2, total, f"node agent and node proxy running (proxy admin "
                            f"127.0.0.1:{proxy_port})")

            for node, name in ((client, "client"), (web, "web")):
                _cni("ADD", cni_sock, node, name)
            _step(3, total, "CNI ADD for client and web: rules installed, proxy acked")

            servers = [_echo_server(web, 8080), _echo_server(outside, 9090)]
            mesh_ok = _talk(client, web.ip4, 8080, b"x" * 100_000)
            ext_ok = _talk(client, outside.ip4, 9090, b"y" * 20_000)
            time.sleep(0.3)
            _step(4, total, f"client -> web:8080 (mesh, two hops): "
                            f"{'intact' if mesh_ok else 'FAILED'}; client -> outside:9090 "
                            f"(non-mesh, one hop): {'intact' if ext_ok else 'FAILED'}")

            pods = subprocess.run([sys.executable, "-m", "cli.main", "pods", "--config",
                                   str(work / "agent.yaml"), "--proxy-admin",
                                   f"127.0.0.1:{proxy_port}"], capture_output=True, text=True,
                                  cwd=REPO).stdout
            _step(5, total, "what the node saw:\n")
            print("  pods (meshnode pods):")
            print("".join(f"    {line}\n" for line in pods.splitlines()))
            print("  connections (proxy access log):")
            conns = [json.loads(line) for line in plog.read_text().splitlines()
                     if '"event": "connection"' in line]
            for c in conns:
                dst = (f"{c['dst_workload']}/{c['dst_namespace']}"
                       if c["dst_workload"] != "unknown" else "(not in the mesh)")
                print(f"    {c['direction']:<8} {c['src_workload']}/{c['src_namespace']} -> "
                      f"{dst} ({c['dst']}): "
                      f"{c['bytes_sent']} B sent, {c['bytes_received']} B received")
            print("\n  client's redirect rules that matched (meshnode redirect show):")
            state = engine.read(client.path, RedirectSpec(),
                                engine.make_backend(backend, flavour))
            for key, rules in state.rules.chains.items():
                for r in rules:
                    if r.packets:
                        print(f"    {r.packets:>4} pkts {r.bytes:>7} B  {key}: {r.text}")
            for s in servers:
                s.close()
            for node, name in ((client, "client"), (web, "web")):
                _cni("DEL", cni_sock, node, name)
            _step(6, total, "CNI DEL for both pods: rules removed, proxy released them")
            ok = mesh_ok and ext_ok and {c["direction"] for c in conns} == {"outbound",
                                                                             "inbound"}
        except KeyboardInterrupt:
            print("\ninterrupted: cleaning up")
        finally:
            for p in reversed(procs):
                if p.poll() is None:
                    p.send_signal(signal.SIGTERM)
                    try:
                        p.wait(15)
                    except subprocess.TimeoutExpired:
                        p.kill()
                        p.wait()
    print("\ncleanup: agent and proxy stopped, namespaces deleted")
    verdict = ("PASS — pod traffic captured, carried by the node proxy, delivered intact"
               if ok else "FAIL — see above")
    print(f"\nverdict: {verdict}")
    return 0 if ok else 1
