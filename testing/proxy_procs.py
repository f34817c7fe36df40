"""A real `meshnode proxy` process, next to the agent harness's real agent."""

from __future__ import annotations

import json
import signal
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from testing.agent_harness import free_port, http_get, start_meshnode, stop_process, wait_up


@dataclass
class ProxyProc:
    workdir: Path
    zds_socket: str
    name: str = "proxy"
    extra: dict[str, Any] = field(default_factory=dict)
    env: dict[str, str] | None = None  # added to this process's environment (None: ours)
    proc: subprocess.Popen[bytes] | None = None

    def __post_init__(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        # The metrics listener on loopback too (its default, 0.0.0.0:15020, is for nodes).
        self.metrics_port = free_port()
        cfg = {"zds_socket": self.zds_socket, "admin_address": f"127.0.0.1:{self.port}",
               "metrics_address": f"127.0.0.1:{self.metrics_port}", "drain_seconds": 10,
               **self.extra}
        self.config = self.workdir / f"{self.name}.yaml"
        self.config.write_text(yaml.safe_dump(cfg))
        self.log = self.workdir / f"{self.name}.log"

    def start(self, wait_ready: bool = True) -> ProxyProc:
        self.proc = start_meshnode("proxy", self.config, self.log, self.env)
        if wait_ready:
            wait_up(self.proc, self.log, "proxy", lambda: self.get("/healthz/ready")[0] == 200)
        return self

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 20) -> None:
        stop_process(self.proc, sig, timeout)
        self.proc = None

    def get(self, path: str) -> tuple[int, str]:
        return http_get(self.port, path)

    def workloads(self) -> list[dict[str, Any]]:
        status, body = self.get("/config_dump")
        return list(json.loads(body)["workloads"]) if status == 200 else []

    def access_log(self) -> list[dict[str, Any]]:
        out = []
        for line in self.log.read_text().splitlines():
            if '"event": "connection"' in line:
                out.append(json.loads(line))
        return out
