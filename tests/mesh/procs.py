"""The processes of the two-node mesh: one control plane, and per node an agent (with a
`controlplane` section) and a proxy (with `mesh_socket`). Built on the agent and proxy
harnesses by composition; every process is stopped by its own PID."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from tests.agent.harness import REPO, AgentProc, free_port, http_get
from tests.proxy.procs import ProxyProc


@dataclass
class ControlPlaneProc:
    workdir: Path
    port: int = field(default_factory=free_port)
    proc: subprocess.Popen[bytes] | None = None

    def __post_init__(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.mesh = self.workdir / "mesh.yaml"
        self.state = self.workdir / "state"
        self.log = self.workdir / "controlplane.log"

    def _cmd(self, *extra: str) -> list[str]:
        return [sys.executable, "-m", "agent.cli.main", "controlplane", "--mesh", str(self.mesh),
                "--state-dir", str(self.state), "--address", f"127.0.0.1:{self.port}", *extra]

    def start(self) -> ControlPlaneProc:
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(self._cmd(), stdout=log, stderr=log, cwd=REPO)
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"control plane exited: {self.log.read_text()[-2000:]}")
            if self.root_cert.exists() and "serving" in self.log.read_text():
                return self
            time.sleep(0.05)
        raise RuntimeError(f"control plane not serving: {self.log.read_text()[-2000:]}")

    @property
    def root_cert(self) -> Path:
        return self.state / "root-cert.pem"

    def token(self, node: str) -> str:
        return subprocess.run(self._cmd("--print-node-token", node), capture_output=True,
                              text=True, check=True, cwd=REPO).stdout.strip()

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def write_mesh(self, mesh: dict[str, Any]) -> None:
        # Write-then-rename: the watcher must never read a half-written file.
        tmp = self.mesh.with_suffix(".tmp")
        tmp.write_text(yaml.safe_dump(mesh, sort_keys=False))
        tmp.replace(self.mesh)


@dataclass
class MeshNode:
    """One node's agent + proxy, both in the host netns with their own sockets/ports."""

    name: str
    workdir: Path
    cp: ControlPlaneProc
    cert_ttl_seconds: int = 3600
    agent: AgentProc = field(init=False)
    proxy: ProxyProc = field(init=False)

    def __post_init__(self) -> None:
        self.agent = AgentProc(self.workdir / "agent", proxy_handoff=True, drift_interval=3600)
        self.mesh_socket = str(self.agent.workdir / "mesh.sock")
        cfg = yaml.safe_load(self.agent.config.read_text())
        cfg["mesh_socket"] = self.mesh_socket
        cfg["controlplane"] = {"address": f"127.0.0.1:{self.cp.port}",
                               "root_cert": str(self.cp.root_cert),
                               "token": self.cp.token(self.name), "node_name": self.name,
                               "cluster_id": "Kubernetes",
                               "cert_ttl_seconds": self.cert_ttl_seconds}
        self.agent.config.write_text(yaml.safe_dump(cfg))
        self.proxy = ProxyProc(self.workdir / "proxy", str(self.agent.workdir / "zds.sock"),
                               extra={"dns_capture": False, "mesh_socket": self.mesh_socket})

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
        for line in http_get(self.proxy.port, "/metrics")[1].splitlines():
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
