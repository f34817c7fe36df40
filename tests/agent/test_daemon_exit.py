"""The real `meshnode agent` process: a bad address or socket path is a one-line error naming
the key (exit 2, nothing bound), a port in use at start-up leaves no socket behind, and
SIGTERM / SIGINT stop it with exit 0, its sockets removed."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from testing.agent_harness import REPO, AgentProc

SOCKETS = ("cni.sock", "zds.sock", "mesh.sock")


def _leftovers(workdir: Path) -> list[str]:
    return sorted(p.name for p in workdir.rglob("*.sock"))


def _agent(workdir: Path, proxy_handoff: bool = False, **extra: Any) -> AgentProc:
    """The harness's agent with more (or other) config keys."""
    agent = AgentProc(workdir, proxy_handoff=proxy_handoff)
    cfg = yaml.safe_load(agent.config.read_text())
    cfg.update(extra)
    agent.config.write_text(yaml.safe_dump(cfg))
    return agent


def _run(agent: AgentProc) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "cli.main", "agent", "--config",
                           str(agent.config)], capture_output=True, text=True, timeout=20,
                          cwd=REPO)


@pytest.mark.parametrize(("extra", "error"), [
    ({"http_address": "127.0.0.1:99999"}, "http_address: port 99999 out of range 1-65535"),
    ({"http_address": "nothostport"}, "http_address: 'nothostport' is not HOST:PORT"),
    ({"http_address": "localhost:15021"}, "http_address: 'localhost' is not an IP address"),
    ({"http_address": "127.0.0.1:0"}, "http_address: port 0 out of range 1-65535"),
    ({"cni_socket": "cni.sock"}, "cni_socket: 'cni.sock' is not an absolute path"),
    ({"proxy_handoff": True, "zds_socket": "/" + "z" * 120},
     "zds_socket: '/" + "z" * 120 + "' is 121 bytes; a unix socket path holds at most 107"),
    ({"proxy_handoff": True, "zds_socket": "@CNI@"}, "zds_socket: the same path as cni_socket"),
    ({"controlplane": {"address": "cp.example:70000", "root_cert": "/r.pem", "token": "t"}},
     "controlplane.address: port 70000 out of range 1-65535"),
    ({"controlplane": {"address": "cp:15012", "ca_address": "ca..x:15012",
                       "root_cert": "/r.pem", "token": "t"}},
     "controlplane.ca_address: 'ca..x' is neither an IP address nor a host name"),
], ids=["port-range", "not-hostport", "hostname", "port-0", "relative-socket", "long-socket",
        "same-socket", "cp-port", "ca-host"])
def test_bad_address_is_one_line_exit_2_nothing_left(tmp_path: Path, extra: dict[str, Any],
                                                     error: str) -> None:
    if extra.get("zds_socket") == "@CNI@":
        extra = {**extra, "zds_socket": str(tmp_path / "cni.sock")}
    agent = _agent(tmp_path, **extra)
    done = _run(agent)
    assert (done.returncode, done.stderr) == (2, f"error: config: {error}\n")
    assert _leftovers(tmp_path) == []


def test_http_port_in_use_at_start_leaves_no_socket(tmp_path: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        agent = _agent(tmp_path, proxy_handoff=True, http_address=f"127.0.0.1:{port}")
        done = _run(agent)
    assert done.returncode == 2, done.stderr
    # The sockets were made (the HTTP port is bound last), then removed.
    assert '"event": "zds_server_listening"' in done.stderr
    assert done.stderr.endswith(f"error: config: http_address: cannot listen on 127.0.0.1:"
                                f"{port}: Address already in use\n"), done.stderr
    assert "Traceback" not in done.stderr
    assert _leftovers(tmp_path) == []


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_signal_exits_0_and_removes_the_sockets(tmp_path: Path, sig: int) -> None:
    agent = AgentProc(tmp_path, proxy_handoff=True).start(wait_ready=False)
    try:
        assert agent.proc is not None
        proc = agent.proc
        assert _leftovers(tmp_path) == ["cni.sock", "zds.sock"]
        signalled = time.monotonic()
        proc.send_signal(sig)
        assert proc.wait(timeout=10) == 0, agent.log.read_text()[-2000:]
        assert time.monotonic() - signalled < 5
        assert _leftovers(tmp_path) == []
        log = agent.log.read_text()
        assert '"event": "agent_stopping"' in log and "Traceback" not in log
    finally:
        agent.stop()
