"""Harness for the meshnode-cni plugin tests.

The plugin runs for real: the static binary `cni/meshnode-cni` (built from cni/cmd by
cni/build.sh, once per session if its sources changed), exec'd as a runtime execs it, with
env and stdin. The agent is replaced by `FakeAgent`, a real unix-socket server that records
requests and answers as told.
"""

from __future__ import annotations

import copy
import json
import os
import shutil
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
BUILD = ROOT / "cni" / "build.sh"
PLUGIN = ROOT / "cni" / "meshnode-cni"
SUPPORTED = ("0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0")
LEGACY = ("0.3.0", "0.3.1", "0.4.0")
ERROR_KEYS = {"cniVersion", "code", "msg", "details"}
CONTAINER_ID = "3f6940ab5ab43bc522569d15b23f8c1bbde1d7678b080398506924fc01d72755"
NETNS = "/var/run/netns/cni-1b2c3d4e-0000-1111-2222-333344445555"
POD_ARGS = (
    "IgnoreUnknown=1;K8S_POD_NAMESPACE=shop;K8S_POD_NAME=cart-7d9f8c6b5-x2x9z;"
    "K8S_POD_INFRA_CONTAINER_ID="
    + CONTAINER_ID
    + ";K8S_POD_UID=0a1b2c3d-4e5f-6789-abcd-ef0123456789"
)
REPLY_OK = b'{"ok": true, "captured": true, "detail": "enrolled"}\n'


def bridge_prev_result(version: str) -> dict[str, Any]:
    """What the bridge plugin (with host-local IPAM) returns, in `version`'s layout."""
    ips: list[dict[str, Any]] = [
        {"address": "10.22.0.5/16", "gateway": "10.22.0.1", "interface": 2},
        {"address": "fd00:10:22::5/64", "gateway": "fd00:10:22::1", "interface": 2},
    ]
    if version in LEGACY:  # 0.3.x/0.4.0 ips carry "version"; 1.0.0 removed it
        ips[0]["version"] = "4"
        ips[1]["version"] = "6"
    result: dict[str, Any] = {
        "cniVersion": version,
        "interfaces": [
            {"name": "cni0", "mac": "6a:1f:c4:2b:9e:01"},
            {"name": "veth5e2a9b1c", "mac": "ce:7d:12:00:4a:b3"},
            {"name": "eth0", "mac": "0a:58:0a:16:00:05", "sandbox": NETNS},
        ],
        "ips": ips,
        "routes": [{"dst": "0.0.0.0/0", "gw": "10.22.0.1"}, {"dst": "::/0"}],
        "dns": {"nameservers": ["10.96.0.10"], "search": ["shop.svc.cluster.local"]},
    }
    if version == "1.1.0":  # fields new in 1.1
        result["interfaces"][2]["mtu"] = 1450
        result["routes"][0]["priority"] = 100
    return result


def make_conf(
    version: str, socket_path: str | None, prev: dict[str, Any] | None = None, **extra: Any
) -> dict[str, Any]:
    conf: dict[str, Any] = {
        "cniVersion": version,
        "name": "k8s-pod-network",
        "type": "meshnode-cni",
    }
    if socket_path is not None:
        conf["agent_socket"] = socket_path
    if prev is not None:
        conf["prevResult"] = copy.deepcopy(prev)
    conf.update(extra)
    return conf


def attachment_env(command: str, **overrides: str | None) -> dict[str, str]:
    env = {
        "CNI_COMMAND": command,
        "CNI_CONTAINERID": CONTAINER_ID,
        "CNI_NETNS": NETNS,
        "CNI_IFNAME": "eth0",
        "CNI_ARGS": POD_ARGS,
        "CNI_PATH": "/opt/cni/bin",
    }
    for key, value in overrides.items():
        if value is None:
            env.pop(key, None)
        else:
            env[key] = value
    return env


# --------------------------------------------------------------------------- fake agent


class FakeAgent:
    """A unix stream server speaking the agent side of docs/cni-protocol.md.

    mode "reply" sends `reply` (raw bytes) and closes; "silent" reads the request and holds
    the connection open without answering; "close" closes without a reply.
    """

    def __init__(self, path: str) -> None:
        self.path = path
        self.mode = "reply"
        self.reply = REPLY_OK
        self.requests: list[Any] = []
        self._held: list[socket.socket] = []
        self._stop = threading.Event()
        self._listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._listener.bind(path)
        self._listener.listen(64)
        self._listener.settimeout(0.05)
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def answer(self, reply: bytes | dict[str, Any]) -> None:
        self.mode = "reply"
        self.reply = reply if isinstance(reply, bytes) else (json.dumps(reply) + "\n").encode()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            self._handle(conn)

    def _handle(self, conn: socket.socket) -> None:
        conn.settimeout(5)
        buf = b""
        try:
            while b"\n" not in buf:
                chunk = conn.recv(65536)
                if not chunk:
                    break
                buf += chunk
        except OSError:
            pass
        line = buf.split(b"\n", 1)[0]
        try:
            self.requests.append(json.loads(line))
        except ValueError:
            self.requests.append({"unparseable": line.decode(errors="replace")})
        if self.mode == "silent":
            self._held.append(conn)
            return
        try:
            if self.mode == "reply":
                conn.sendall(self.reply)
        except OSError:
            pass
        conn.close()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self._listener.close()
        for conn in self._held:
            conn.close()


@pytest.fixture(scope="session", autouse=True)
def plugin_binary() -> Path:
    """The binary under test, rebuilt first if its sources are newer (needs `go`: make setup)."""
    proc = subprocess.run([str(BUILD)], capture_output=True, text=True, timeout=600, check=False)
    assert proc.returncode == 0, f"cni/build.sh failed:\n{proc.stdout}{proc.stderr}"
    assert os.access(PLUGIN, os.X_OK), PLUGIN
    return PLUGIN


@pytest.fixture
def sockdir() -> Iterator[str]:
    # Not tmp_path: sun_path is 108 bytes and pytest's per-test paths can be longer.
    path = tempfile.mkdtemp(prefix="mncni-", dir="/tmp")
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def agent(sockdir: str) -> Iterator[FakeAgent]:
    fake = FakeAgent(os.path.join(sockdir, "cni.sock"))
    yield fake
    fake.stop()


@pytest.fixture
def absent_socket(sockdir: str) -> str:
    return os.path.join(sockdir, "absent.sock")


# --------------------------------------------------------------------------- running


@dataclass
class Run:
    rc: int
    stdout: bytes
    stderr: bytes
    elapsed: float
    logs: list[dict[str, Any]] = field(default_factory=list)

    @property
    def json(self) -> Any:
        return json.loads(self.stdout)

    @property
    def error(self) -> dict[str, Any]:
        """The spec error object; asserts it is one."""
        assert self.rc != 0, self
        err: dict[str, Any] = self.json
        assert set(err) == ERROR_KEYS, err
        assert isinstance(err["code"], int) and not isinstance(err["code"], bool)
        assert isinstance(err["msg"], str) and err["msg"]
        assert isinstance(err["details"], str)
        return err


def check_streams(rc: int, stdout: bytes, stderr: bytes) -> list[dict[str, Any]]:
    """Invariants of every invocation; returns the parsed log records."""
    assert b"Traceback" not in stderr and b"Traceback" not in stdout
    logs = []
    for line in stderr.splitlines():
        record = json.loads(line)  # every stderr line is one JSON object
        assert isinstance(record, dict) and "msg" in record and "level" in record
        logs.append(record)
    if rc != 0:
        assert rc == 1
        assert stdout.endswith(b"\n") and stdout.count(b"\n") == 1
        err = json.loads(stdout)
        assert set(err) == ERROR_KEYS, err
        assert isinstance(err["code"], int) and not isinstance(err["code"], bool)
        assert isinstance(err["msg"], str) and isinstance(err["details"], str)
        assert err["cniVersion"] in SUPPORTED
    elif stdout:
        assert stdout.count(b"\n") == 1
        assert isinstance(json.loads(stdout), dict)
    return logs


def run_plugin(
    env: dict[str, str],
    stdin: bytes | dict[str, Any] = b"",
    timeout: float = 20,
) -> Run:
    data = stdin if isinstance(stdin, bytes) else json.dumps(stdin).encode()
    start = time.monotonic()
    proc = subprocess.run(
        [str(PLUGIN)], input=data, env=env, capture_output=True, timeout=timeout, check=False
    )
    elapsed = time.monotonic() - start
    logs = check_streams(proc.returncode, proc.stdout, proc.stderr)
    return Run(proc.returncode, proc.stdout, proc.stderr, elapsed, logs)
