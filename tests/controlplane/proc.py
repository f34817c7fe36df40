"""A real `meshnode controlplane --config DIR` process on 127.0.0.1 (ephemeral ports, read from
its `controlplane_serving` log line), stopped by its own PID with a SIGKILL fallback."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc

from testing.agent_harness import REPO, stop_process

MESHNODE = [sys.executable, "-m", "cli.main"]
# gRPC's C core prints its own lines to stderr otherwise (fork support, keepalive notes).
ENV = {**os.environ, "GRPC_VERBOSITY": "ERROR"}


@dataclass
class ControlPlaneProcess:
    config: Path   # the manifests file or directory
    state: Path
    extra: tuple[str, ...] = ()
    proc: subprocess.Popen[bytes] | None = None
    port: int = 0
    metrics_port: int = 0

    def __post_init__(self) -> None:
        self.log = self.state.parent / "controlplane.log"

    def cmd(self, *extra: str) -> list[str]:
        return [*MESHNODE, "controlplane", "--config", str(self.config),
                "--state-dir", str(self.state), *extra]

    def token(self, node: str) -> str:
        return subprocess.run(self.cmd("--print-node-token", node), capture_output=True,
                              text=True, check=True, cwd=REPO, env=ENV).stdout.strip()

    def start(self) -> ControlPlaneProcess:
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(
                self.cmd("--address", "127.0.0.1:0", "--metrics-address", "127.0.0.1:0",
                         *self.extra), stdout=log, stderr=log, cwd=REPO, env=ENV)
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"control plane exited: {self.log.read_text()[-2000:]}")
            for rec in self.events("controlplane_serving"):
                self.port, self.metrics_port = rec["port"], rec["metrics_port"]
                return self
            time.sleep(0.05)
        raise RuntimeError(f"control plane not serving: {self.log.read_text()[-2000:]}")

    def stop(self, sig: int = signal.SIGTERM) -> None:
        stop_process(self.proc, sig)

    def events(self, name: str) -> list[dict[str, Any]]:
        out = []
        for line in self.log.read_text(errors="replace").splitlines():
            if line.startswith("{"):
                rec = json.loads(line)
                if rec.get("event") == name:
                    out.append(rec)
        return out

    @property
    def root_pem(self) -> bytes:
        return (self.state / "root-cert.pem").read_bytes()

    def channel(self) -> grpc.aio.Channel:
        creds = grpc.ssl_channel_credentials(root_certificates=self.root_pem)
        return grpc.aio.secure_channel(f"localhost:{self.port}", creds)

    def metric(self, name: str, **labels: str) -> float:
        """One sample from /metrics (the series must exist)."""
        with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics",
                                    timeout=5) as r:
            text = r.read().decode()
        want = name + ("{" + ",".join(f'{k}="{v}"' for k, v in labels.items()) + "}"
                       if labels else "")
        values = [float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
                  if line.rsplit(" ", 1)[0] == want]
        assert len(values) == 1, (want, values)
        return values[0]
