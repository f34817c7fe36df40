"""The processes of the two-node mesh: one control plane in its own netns, and per node an
agent (with a `controlplane` section) and a proxy (with `mesh_socket`), both inside that
node's netns. Built on the agent and proxy harnesses by composition: every process is
forked from a thread that has entered the netns (so it starts there), and every HTTP call
to a process's 127.0.0.1 port is made from inside that netns. Every process is stopped by
its own PID."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from core.netns import inside
from testing import mesh_manifests
from testing.agent_harness import REPO, AgentProc, stop_process, wait_up
from testing.lab import Node
from testing.proxy_procs import ProxyProc

CONTROL_PLANE_PORT = 15012  # istiod's; the control plane's netns is its own, nothing else binds


@dataclass
class NetnsAgentProc(AgentProc):
    """The agent harness's agent, run inside `netns` (its HTTP port is that netns' own)."""

    netns: str = ""

    def start(self, wait_ready: bool = True) -> NetnsAgentProc:
        with inside(self.netns):
            super().start(wait_ready)
        return self

    def http(self, path: str) -> tuple[int, str]:
        with inside(self.netns):
            return super().http(path)

    def pods(self, proxy_admin: str = "127.0.0.1:1") -> list[dict[str, Any]]:
        with inside(self.netns):
            return super().pods(proxy_admin)


@dataclass
class NetnsProxyProc(ProxyProc):
    """The proxy harness's proxy, run inside `netns` (its admin port is that netns' own)."""

    netns: str = ""

    def start(self, wait_ready: bool = True) -> NetnsProxyProc:
        with inside(self.netns):
            super().start(wait_ready)
        return self

    def get(self, path: str) -> tuple[int, str]:
        with inside(self.netns):
            return super().get(path)


@dataclass
class ControlPlaneProc:
    """`meshnode controlplane` inside `netns`, listening on that netns' address; its server
    certificate names that address, so the agents verify it without a name override.

    Its source is the directory `workdir/manifests` of Kubernetes and Istio objects
    (`--config`; `write_manifests`, `remove_manifests`, testing/mesh_manifests.py)."""

    workdir: Path
    netns: Node
    port: int = CONTROL_PLANE_PORT
    proc: subprocess.Popen[bytes] | None = None

    def __post_init__(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.config = self.workdir / "manifests"
        self.config.mkdir(exist_ok=True)
        self.state = self.workdir / "state"
        self.log = self.workdir / "controlplane.log"

    @property
    def address(self) -> str:
        return f"{self.netns.ip4}:{self.port}"

    def _cmd(self, *extra: str) -> list[str]:
        return [sys.executable, "-m", "cli.main", "controlplane", "--config", str(self.config),
                "--state-dir", str(self.state), "--address", self.address,
                "--server-name", "meshnode-controlplane", "--server-name", self.netns.ip4,
                *extra]

    def start(self) -> ControlPlaneProc:
        seen = self.log.stat().st_size if self.log.exists() else 0  # a restart logs anew
        with open(self.log, "ab") as log, inside(self.netns.path):
            self.proc = subprocess.Popen(self._cmd(), stdout=log, stderr=log, cwd=REPO)

        def serving() -> bool:
            fresh = self.log.read_bytes()[seen:].decode(errors="replace")
            return self.root_cert.exists() and "serving" in fresh

        wait_up(self.proc, self.log, "control plane", serving, state="serving")
        return self

    @property
    def root_cert(self) -> Path:
        return self.state / "root-cert.pem"

    def token(self, node: str) -> str:
        return subprocess.run(self._cmd("--print-node-token", node), capture_output=True,
                              text=True, check=True, cwd=REPO).stdout.strip()

    def stop(self, sig: int = signal.SIGTERM) -> None:
        stop_process(self.proc, sig)
        self.proc = None

    def write_manifests(self, name: str, *docs: dict[str, Any] | str) -> None:
        """Put the file `name` (objects, or YAML text as it is) in the manifests directory,
        whole (`kubectl apply -f`)."""
        mesh_manifests.write(self.config, name, *docs)

    def remove_manifests(self, name: str) -> None:
        """Delete the file `name` from the manifests directory (`kubectl delete -f`)."""
        mesh_manifests.remove(self.config, name)


@dataclass
class MeshNode:
    """One node's agent + proxy, both inside the node's netns; the agent dials the control
    plane at its address on the node network."""

    name: str
    workdir: Path
    cp: ControlPlaneProc
    node: Node
    cert_ttl_seconds: int = 3600
    backend: str = "nftables"  # the agent's capture backend
    env: dict[str, str] | None = None  # added to the agent's and the proxy's environment
    agent: NetnsAgentProc = field(init=False)
    proxy: NetnsProxyProc = field(init=False)

    def __post_init__(self) -> None:
        self.agent = NetnsAgentProc(self.workdir / "agent", backend=self.backend,
                                    proxy_handoff=True, drift_interval=3600, env=self.env,
                                    netns=self.node.path)
        self.mesh_socket = str(self.agent.workdir / "mesh.sock")
        cfg = yaml.safe_load(self.agent.config.read_text())
        cfg["mesh_socket"] = self.mesh_socket
        cfg["controlplane"] = {"address": self.cp.address,
                               "root_cert": str(self.cp.root_cert),
                               "token": self.cp.token(self.name), "node_name": self.name,
                               "cluster_id": "Kubernetes",
                               "cert_ttl_seconds": self.cert_ttl_seconds}
        self.agent.config.write_text(yaml.safe_dump(cfg))
        self.proxy = NetnsProxyProc(self.workdir / "proxy", str(self.agent.workdir / "zds.sock"),
                                    extra={"dns_capture": False, "mesh_socket": self.mesh_socket},
                                    env=self.env, netns=self.node.path)

    def start(self) -> MeshNode:
        self.agent.start()
        self.proxy.start()
        return self

    def stop(self) -> None:
        self.proxy.stop()
        self.agent.stop()

    def agent_mesh(self) -> dict[str, Any]:
        status, body = self.agent.http("/debug/mesh")
        return dict(json.loads(body)) if status == 200 else {}

    def proxy_mesh(self) -> dict[str, Any]:
        status, body = self.proxy.get("/config_dump")
        return dict(json.loads(body).get("mesh") or {}) if status == 200 else {}

    def proxy_metric(self, name: str, **labels: str) -> float:
        """Sum of a proxy metric's samples whose labels include `labels`."""
        total = 0.0
        for line in self.proxy.get("/metrics")[1].splitlines():
            if not line.startswith(name + "{") and not line.startswith(name + " "):
                continue
            got = dict(re.findall(r'(\w+)="([^"]*)"', line.split(" ", 1)[0]))
            if all(got.get(k) == v for k, v in labels.items()):
                total += float(line.rsplit(" ", 1)[1])
        return total

    def log_events(self, event: str) -> list[dict[str, Any]]:
        out = []
        for line in self.proxy.log.read_text().splitlines():
            if f'"event": "{event}"' in line:
                out.append(json.loads(line))
        return out


# A pod's app for tests that must tell endpoints apart: every connection gets the server's
# name and a newline, then EOF. Each connection is served in a thread of its own; the
# server's write side is shut before it waits for the client's EOF, so nothing is lost to
# an RST.
_NAME_SERVER = r"""
import socket, sys, threading
name, port = sys.argv[1].encode() + b"\n", int(sys.argv[2])
srv = socket.create_server(("0.0.0.0", port), backlog=128)
print("serving", flush=True)
def answer(c):
    with c:
        try:
            c.settimeout(10)
            c.sendall(name)
            c.shutdown(socket.SHUT_WR)
            while c.recv(4096):
                pass
        except OSError:
            pass
while True:
    c, _ = srv.accept()
    threading.Thread(target=answer, args=(c,), daemon=True).start()
"""


@dataclass
class NameServer:
    """A TCP server process inside `pod`'s netns that answers every connection with `name`
    (see `_NAME_SERVER`). Stopped by its own PID."""

    pod: Node
    name: str
    port: int
    proc: subprocess.Popen[bytes] | None = None

    def start(self) -> NameServer:
        with inside(self.pod.path):
            self.proc = subprocess.Popen([sys.executable, "-c", _NAME_SERVER, self.name,
                                          str(self.port)], stdout=subprocess.PIPE)
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()  # "serving" once it listens, b"" if it died
        if line.strip() != b"serving":
            self.stop()
            raise RuntimeError(f"name server {self.name} in {self.pod.name} did not start")
        return self

    def stop(self) -> None:
        stop_process(self.proc, timeout=5)
        if self.proc is not None and self.proc.stdout is not None:
            self.proc.stdout.close()
        self.proc = None


def wait_for(cond: Callable[[], Any], timeout: float, what: str, step: float = 0.05) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = cond()
        if got:
            return got
        time.sleep(step)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def certs_of(node: MeshNode) -> set[str]:
    """The identities whose certificates node's proxy holds."""
    return {c["identity"] for c in node.proxy_mesh().get("certificates", [])}
