"""Two real `meshnode proxy` processes on one admin address, as during the proxy
DaemonSet's surge (deploy/proxy-daemonset.yaml: maxSurge 1, both on the host network):
both bind it (SO_REUSEPORT), both get ready, /healthz/ready answers throughout and after
the old one leaves, and the manifest's readiness probe tells the two apart."""

from __future__ import annotations

import http.client
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from proxy.admin import PID_HEADER, POD_HEADER
from testing.agent_harness import AgentProc, free_port
from testing.proxy_procs import ProxyProc
from tests.deploy.manifests import find, plain

# Real processes: a real agent (ZDS server, netfilter backend) and two proxies.
pytestmark = pytest.mark.kernel


@pytest.fixture
def agent(tmp_path: Path) -> Iterator[AgentProc]:
    a = AgentProc(tmp_path / "agent", proxy_handoff=True, drift_interval=3600).start()
    try:
        yield a
    finally:
        a.stop()


def ask(port: int, path: str = "/healthz/ready") -> tuple[int, str, str]:
    """(status, pod header, pid header) of one GET on a fresh connection, so the kernel
    picks a listener again."""
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
    try:
        c.request("GET", path)
        r = c.getresponse()
        r.read()
        return r.status, r.getheader(POD_HEADER) or "", r.getheader(PID_HEADER) or ""
    finally:
        c.close()


def answers(port: int, n: int = 64) -> list[tuple[int, str, str]]:
    return [ask(port) for _ in range(n)]


def readiness_probe(port: int, pod: str) -> int:
    """The exit status of the proxy DaemonSet's own readiness command, as the kubelet runs
    it in the container (POD_NAME from the downward API), aimed at `port`."""
    objs = [o for _f, o in plain()]
    spec = find(objs, "DaemonSet", "meshnode-proxy")["spec"]["template"]["spec"]
    (c,) = spec["containers"]
    cmd = list(c["readinessProbe"]["exec"]["command"])
    assert cmd[0] == "python3" and cmd[3] == "127.0.0.1:15000"
    cmd[0], cmd[3] = sys.executable, f"127.0.0.1:{port}"
    return subprocess.run(cmd, env={**os.environ, "POD_NAME": pod}, timeout=30).returncode


def start(tmp: Path, agent: AgentProc, name: str, port: int,
          monkeypatch: pytest.MonkeyPatch) -> ProxyProc:
    monkeypatch.setenv("POD_NAME", f"meshnode-proxy-{name}")  # inherited by the process
    p = ProxyProc(tmp / name, str(agent.workdir / "zds.sock"), name=name,
                  extra={"admin_address": f"127.0.0.1:{port}", "dns_capture": False})
    p.port = port
    return p.start(wait_ready=False)


def wait_own_ready(p: ProxyProc, timeout: float = 15) -> None:
    """Until the answer from this very process (its pid) is 200."""
    assert p.proc is not None
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if p.proc.poll() is not None:
            raise AssertionError(f"{p.name} exited: {p.log.read_text()[-2000:]}")
        try:
            if (200, str(p.proc.pid)) in {(s, pid) for s, _pod, pid in answers(p.port, 8)}:
                return
        except OSError:
            pass
        time.sleep(0.05)
    raise AssertionError(f"{p.name} not ready: {p.log.read_text()[-2000:]}")


def test_two_proxies_share_the_admin_address(tmp_path: Path, agent: AgentProc,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    port = free_port()
    old = start(tmp_path, agent, "old", port, monkeypatch)
    new: ProxyProc | None = None
    try:
        wait_own_ready(old)
        assert readiness_probe(port, "meshnode-proxy-old") == 0
        # Not started yet: the probe must not take the old proxy's answer for the new one's.
        assert readiness_probe(port, "meshnode-proxy-new") == 1

        new = start(tmp_path, agent, "new", port, monkeypatch)
        wait_own_ready(new)  # it bound the same address: without SO_REUSEPORT it exits here
        assert old.proc is not None and new.proc is not None
        pids = {str(old.proc.pid): "meshnode-proxy-old", str(new.proc.pid): "meshnode-proxy-new"}

        # Both run, both answer ready, each connection from one or the other.
        got = answers(port)
        assert {s for s, _pod, _pid in got} == {200}
        assert {pid for _s, _pod, pid in got} == set(pids)
        assert all(pids[pid] == pod for _s, pod, pid in got)
        assert readiness_probe(port, "meshnode-proxy-old") == 0
        assert readiness_probe(port, "meshnode-proxy-new") == 0
        assert readiness_probe(port, "meshnode-proxy-gone") == 1

        # The old one leaves (SIGTERM: the kubelet's stop); the address keeps answering,
        # from the new one only.
        old.stop(signal.SIGTERM)
        got = answers(port)
        assert {(s, pid) for s, _pod, pid in got} == {(200, str(new.proc.pid))}
        assert readiness_probe(port, "meshnode-proxy-new") == 0
        assert readiness_probe(port, "meshnode-proxy-old") == 1
        assert new.proc.poll() is None
    finally:
        old.stop()
        if new is not None:
            new.stop()
