"""Run a real `meshnode agent` and drive the real plugin binary as a runtime would."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[1]
PLUGIN = REPO / "cni" / "meshnode-cni"


def http_get(port: int, path: str) -> tuple[int, str]:
    """(status, body) of a GET on localhost; (0, "") when nothing answers."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=2) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()
    except OSError:
        return 0, ""


def start_meshnode(command: str, config: Path, log: Path,
                   env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    """`meshnode <command> --config <config>` from this checkout, its output appended to
    `log`; `env` is added to our environment (None: ours)."""
    with open(log, "ab") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "cli.main", command, "--config", str(config)],
            stdout=out, stderr=out, cwd=REPO,
            env={**os.environ, **env} if env is not None else None)


def wait_up(proc: subprocess.Popen[bytes], log: Path, what: str, up: Callable[[], bool],
            timeout: float = 15, state: str = "ready") -> None:
    """Poll `up()` until true; RuntimeError with the log's tail if `proc` exits first or
    `timeout` passes ("<what> not <state>")."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited: {log.read_text()[-2000:]}")
        if up():
            return
        time.sleep(0.05)
    raise RuntimeError(f"{what} not {state}: {log.read_text()[-2000:]}")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class AgentProc:
    workdir: Path
    backend: str = "nftables"
    fallback: str = ""  # capture.fallback (with backend ebpf)
    flavour: str = ""  # capture.iptables_flavour (with backend iptables); "" = auto
    drift_interval: float = 0.5
    selection: dict[str, Any] = field(default_factory=dict)
    install: dict[str, Any] = field(default_factory=dict)
    proxy_handoff: bool = False  # issue-3 tests: enrollment without a node proxy
    env: dict[str, str] | None = None  # added to this process's environment (None: ours)
    proc: subprocess.Popen[bytes] | None = None

    def __post_init__(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.socket = str(self.workdir / "cni.sock")
        self.port = free_port()
        # The metrics listener on loopback too (its default, 0.0.0.0:15022, is for nodes).
        self.metrics_port = free_port()
        cfg: dict[str, Any] = {
            "cni_socket": self.socket, "state_dir": str(self.workdir / "state"),
            "http_address": f"127.0.0.1:{self.port}",
            "metrics_address": f"127.0.0.1:{self.metrics_port}",
            "drift_interval_seconds": self.drift_interval,
            "capture": {"backend": self.backend, "fallback": self.fallback,
                        **({"iptables_flavour": self.flavour} if self.flavour else {})},
            "zds_socket": str(self.workdir / "zds.sock"),
            "proxy_handoff": self.proxy_handoff,
        }
        if self.selection:
            cfg["selection"] = self.selection
        if self.install:
            cfg["install"] = self.install
        self.config = self.workdir / "agent.yaml"
        self.config.write_text(yaml.safe_dump(cfg))
        self.log = self.workdir / "agent.log"

    def start(self, wait_ready: bool = True) -> AgentProc:
        self.proc = start_meshnode("agent", self.config, self.log, self.env)

        def up() -> bool:  # ready, or (not waiting for that) serving HTTP at all
            status = self.http("/readyz")[0]
            return status == 200 or (status != 0 and not wait_ready)

        wait_up(self.proc, self.log, "agent", up)
        return self

    def stop(self, sig: int = signal.SIGTERM) -> None:
        stop_process(self.proc, sig)
        self.proc = None

    def http(self, path: str) -> tuple[int, str]:
        return http_get(self.port, path)

    def metric(self, name: str) -> float:
        total = 0.0
        for line in self.http("/metrics")[1].splitlines():
            if line.startswith(name) and not line.startswith("#"):
                total += float(line.rsplit(" ", 1)[1])
        return total

    def pods(self, proxy_admin: str = "127.0.0.1:1") -> list[dict[str, Any]]:
        r = subprocess.run([sys.executable, "-m", "cli.main", "pods", "--config",
                            str(self.config), "--proxy-admin", proxy_admin, "-o", "json"],
                           capture_output=True, text=True, cwd=REPO)
        if r.returncode != 0:  # say why: the exit code alone hides the CLI's message
            raise RuntimeError(f"meshnode pods: exit {r.returncode}: {r.stderr[-2000:]}")
        result: list[dict[str, Any]] = json.loads(r.stdout)
        return result


@dataclass
class CniResult:
    code: int
    stdout: str
    stderr: str

    @property
    def error(self) -> dict[str, Any]:
        err: dict[str, Any] = json.loads(self.stdout)
        return err


def cni(cmd: str, agent_socket: str, netns: str, container_id: str, ips: list[str],
        namespace: str = "default", name: str = "web-0", capture: dict[str, Any] | None = None,
        extra_conf: dict[str, Any] | None = None, version: str = "1.1.0",
        uid: str = "") -> CniResult:
    """Run the plugin as a runtime would; the pod's K8S_POD_UID is `uid` (default
    u-<name>: give pods of one name in two namespaces a uid each)."""
    prev = {"cniVersion": version, "interfaces": [{"name": "eth0", "sandbox": netns}],
            "ips": [{"address": f"{ip}/24", "interface": 0} for ip in ips]}
    conf: dict[str, Any] = {"cniVersion": version, "name": "test", "type": "meshnode-cni",
                            "agent_socket": agent_socket, "timeout_seconds": 10,
                            "prevResult": prev, "capture": capture or {}}
    conf.update(extra_conf or {})
    env = {"CNI_COMMAND": cmd, "CNI_CONTAINERID": container_id, "CNI_NETNS": netns,
           "CNI_IFNAME": "eth0", "CNI_PATH": "/usr/lib/cni",
           "CNI_ARGS": f"K8S_POD_NAMESPACE={namespace};K8S_POD_NAME={name};"
                       f"K8S_POD_UID={uid or 'u-' + name}",
           "PATH": os.environ.get("PATH", "")}
    p = subprocess.run([str(PLUGIN)], input=json.dumps(conf), capture_output=True, text=True,
                       env=env, timeout=30)
    return CniResult(p.returncode, p.stdout, p.stderr)


def stop_process(proc: subprocess.Popen[bytes] | None, sig: int = signal.SIGTERM,
                 timeout: float = 10) -> None:
    """Signal a process we started, wait up to `timeout` s, then SIGKILL it and reap it."""
    if proc is not None and proc.poll() is None:
        proc.send_signal(sig)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
