"""A real agent (capture, ZDS) and a real proxy process, with the agent's mesh config server
(agent/meshconfig/server.py, the code the agent runs) in this process (testing/mesh_feed.py),
so a test fills its XdsState with services, workloads and traffic records directly, as the
agent's xDS client would from the control plane.

    pod a (198.18.61.1, captured) ──veth──▶ netns e: the endpoints, one address each
                                            198.18.61.11, .12, .13 (echo servers on 8081..),
                                            198.18.61.100 (an external host)

Every process is stopped by its own PID; the lab's namespaces are deleted even on failure.
"""

from __future__ import annotations

import json
import re
import socket
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pyroute2 import IPRoute

from core.mesh.model import Port, Service, Vip, Workload
from core.netns import entered, inside
from testing.agent_harness import AgentProc, cni, stop_process
from testing.lab import Lab, Node
from testing.mesh_feed import Feeder
from testing.proxy_procs import ProxyProc

ECHO_VIP = "198.19.61.10"
EXTERNAL = "198.18.61.100"
ENDPOINT_IPS = ("198.18.61.11", "198.18.61.12", "198.18.61.13")

# Answers `name\n` after `delay` seconds, then echoes until the client's EOF.
_SERVER = r"""
import socket, sys, threading, time
name, ip = sys.argv[1].encode() + b"\n", sys.argv[2]
port, delay = int(sys.argv[3]), float(sys.argv[4])
srv = socket.create_server((ip, port), backlog=512)
print("serving", flush=True)
def serve(c):
    with c:
        try:
            c.settimeout(30)
            time.sleep(delay)
            c.sendall(name)
            while data := c.recv(65536):
                c.sendall(data)
        except OSError:
            pass
while True:
    c, _ = srv.accept()
    threading.Thread(target=serve, args=(c,), daemon=True).start()
"""


@dataclass
class Server:
    """An endpoint's app in netns `node` on ip:port: `script` (_SERVER's arguments, printing
    "serving" once listening)."""

    node: Node
    name: str
    ip: str
    port: int
    delay: float = 0.0
    proc: subprocess.Popen[bytes] | None = None
    script: str = _SERVER

    def start(self) -> Server:
        with inside(self.node.path):
            self.proc = subprocess.Popen([sys.executable, "-c", self.script, self.name, self.ip,
                                          str(self.port), str(self.delay)],
                                         stdout=subprocess.PIPE)
        assert self.proc.stdout is not None
        if self.proc.stdout.readline().strip() != b"serving":
            self.stop()
            raise RuntimeError(f"server {self.name} did not start")
        return self

    def stop(self) -> None:
        stop_process(self.proc, timeout=5)
        if self.proc is not None and self.proc.stdout is not None:
            self.proc.stdout.close()
        self.proc = None


def echo_service(vip: str = ECHO_VIP, name: str = "echo") -> Service:
    return Service(name=name, namespace="default",
                   hostname=f"{name}.default.svc.cluster.local", vips=(Vip("", vip),),
                   ports=(Port(80, 8080),))


def endpoint(name: str, ip: str, svc: Service, port: int) -> Workload:
    return Workload(uid=f"uid-{name}", name=name, namespace="default", addresses=(ip,),
                    node="node2", service_account=name,
                    services=((svc.key, (Port(80, port),)),))


@dataclass
class Rig:
    lab: Lab
    a: Node
    e: Node
    agent: AgentProc
    proxy: ProxyProc
    feed: Feeder
    servers: list[Server] = field(default_factory=list)

    def serve(self, name: str, ip: str, port: int, delay: float = 0.0,
              script: str = _SERVER) -> Server:
        s = Server(self.e, name, ip, port, delay, script=script).start()
        self.servers.append(s)
        return s

    def connect(self, ip: str, port: int, timeout: float = 5) -> socket.socket:
        with entered(self.a.path):
            s = socket.socket()
        s.settimeout(timeout)
        try:
            s.connect((ip, port))
        except BaseException:
            s.close()
            raise
        return s

    def ask(self, ip: str = ECHO_VIP, port: int = 80, timeout: float = 5) -> str:
        """Connect from pod a and read the server's name; "" when the connection is reset
        or closed without one (what a refused connection looks like to the app)."""
        try:
            s = self.connect(ip, port, timeout)
        except OSError:
            return ""
        with s:
            data = b""
            try:
                while not data.endswith(b"\n"):
                    chunk = s.recv(4096)
                    if not chunk:
                        break
                    data += chunk
            except OSError:
                return ""
        return data.decode().strip()

    def view(self, name: str) -> Any:
        status, body = self.proxy.get(f"/debug/{name}")
        assert status == 200, body
        return json.loads(body)

    def metric(self, name: str, **labels: str) -> float:
        total = 0.0
        for line in self.proxy.get("/metrics")[1].splitlines():
            if not line.startswith(name + "{") and not line.startswith(name + " "):
                continue
            got = dict(re.findall(r'(\w+)="([^"]*)"', line.split(" ", 1)[0]))
            if all(got.get(k) == v for k, v in labels.items()):
                total += float(line.rsplit(" ", 1)[1])
        return total


@contextmanager
def rig(tmp: Path) -> Iterator[Rig]:
    started: list[Any] = []
    with Lab("tm") as lab:
        try:
            a, e = lab.node("a"), lab.node("e")
            lab.link(a, e, subnet=61, ipv6=False)
            Lab.route(a, "default", "198.18.61.2")
            with entered(e.path), IPRoute() as ipr:
                idx = ipr.link_lookup(ifname=e.ifname)[0]
                for ip in (*ENDPOINT_IPS, EXTERNAL):
                    ipr.addr("add", index=idx, address=ip, prefixlen=24)
            feed = Feeder(str(tmp / "mesh.sock"))
            started.append(feed)
            agent = AgentProc(tmp / "agent", proxy_handoff=True, drift_interval=3600)
            started.append(agent)
            agent.start()
            proxy = ProxyProc(tmp / "proxy", str(agent.workdir / "zds.sock"),
                              extra={"mesh_socket": str(tmp / "mesh.sock")})
            started.append(proxy)
            proxy.start()
            client = Workload(uid="uid-a", name="a", namespace="default",
                              addresses=(a.ip4,), node="node1", service_account="sleep")
            feed.apply(client)
            r = cni("ADD", agent.socket, a.path, "c-a", [a.ip4], name="a")
            assert r.code == 0, r.stdout
            rg = Rig(lab, a, e, agent, proxy, feed)
            started.append(rg)
            yield rg
        finally:
            for p in reversed(started):
                if isinstance(p, Rig):
                    for s in p.servers:
                        s.stop()
                elif isinstance(p, Feeder):
                    p.close()
                else:
                    p.stop()
