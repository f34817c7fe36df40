"""IPv6 is never black-holed: a dual-stack pod is captured on both families by default (the
capture follows the pod's addresses), and with IPv4-only capture forced its IPv6 traffic
reaches the app directly. Real agent, real proxy, real plugin, on every backend.

Pod `a` (enrolled) has 198.18.9.1 and fd00:6d6e:9::1; pod `b` is the client, not enrolled.
"""

from __future__ import annotations

import os
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from agent.redirect.ebpf.loader import Loader
from core.netns import entered
from testing.agent_harness import AgentProc, cni
from testing.lab import Lab, Node
from testing.proxy_procs import ProxyProc
from tests.agent.agentconf import configure

BACKENDS = ["iptables", "nftables", "ebpf"]


@pytest.fixture
def pods() -> Iterator[tuple[Node, Node]]:
    with Lab("v6") as lab:
        a, b = lab.node("a"), lab.node("b")
        lab.link(a, b, subnet=9)
        yield a, b


@pytest.fixture
def mesh(request: pytest.FixtureRequest, tmp_path: Path,
         monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[AgentProc, ProxyProc]]:
    backend: str = request.param
    pin_dir = ""
    if backend == "ebpf":
        pin_dir = os.path.join(request.getfixturevalue("bpffs"), f"v6-{os.getpid()}")
        monkeypatch.setenv("MESHNODE_BPF_PIN_DIR", pin_dir)  # agent and proxy inherit it
    agent = configure(AgentProc(tmp_path / "agent", backend=backend, proxy_handoff=True,
                                drift_interval=3600), capture={"iptables_flavour": "nft"})
    proxy = ProxyProc(tmp_path / "proxy", str(agent.workdir / "zds.sock"),
                      extra={"dns_capture": False})
    try:
        agent.start()
        proxy.start()
        yield agent, proxy
    finally:
        proxy.stop()
        agent.stop()
        if pin_dir and os.path.isdir(pin_dir):
            Loader(pin_dir=pin_dir).destroy()


def echo_app(node: Node, port: int) -> socket.socket:
    """A dual-stack echo server in `node` (the app in the pod)."""
    with entered(node.path):
        s = socket.create_server(("::", port), family=socket.AF_INET6, dualstack_ipv6=True)

    def serve() -> None:
        while True:
            try:
                c, _ = s.accept()
            except OSError:
                return
            with c:
                while data := c.recv(65536):
                    c.sendall(data)

    threading.Thread(target=serve, daemon=True).start()
    return s


def roundtrip(node: Node, ip: str, port: int) -> bytes:
    """Connect from `node`, send, read the echo. A refusal or reset raises (and fails)."""
    fam = socket.AF_INET6 if ":" in ip else socket.AF_INET
    with entered(node.path):
        s = socket.socket(fam, socket.SOCK_STREAM)
    with s:
        s.settimeout(5)
        s.connect((ip, port))
        s.sendall(b"ping")
        return s.recv(4)


def inbound_seen(proxy: ProxyProc, ip: str) -> list[dict[str, Any]]:
    return [e for e in proxy.access_log() if e.get("direction") == "inbound"
            and e.get("dst", "").rsplit(":", 1)[0].strip("[]") == ip]


def wait_logged(proxy: ProxyProc, ip: str, timeout: float = 2.0) -> list[dict[str, Any]]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if seen := inbound_seen(proxy, ip):
            return seen
        time.sleep(0.05)
    return []


@pytest.mark.parametrize("mesh", BACKENDS, indirect=True)
def test_dual_stack_pod_is_captured_on_both_families_by_default(
        mesh: tuple[AgentProc, ProxyProc], pods: tuple[Node, Node]) -> None:
    agent, proxy = mesh
    a, b = pods
    r = cni("ADD", agent.socket, a.path, "c-a", [a.ip4, a.ip6], name="a")
    assert r.code == 0, r.stdout + r.stderr
    [rec] = agent.pods()
    assert rec["capture"].get("ipv6") is True, rec
    app = echo_app(a, 8080)
    try:
        assert roundtrip(b, a.ip4, 8080) == b"ping"
        assert roundtrip(b, a.ip6, 8080) == b"ping"
        assert wait_logged(proxy, a.ip4), "IPv4 inbound did not go through the proxy"
        assert wait_logged(proxy, a.ip6), f"IPv6 inbound bypassed the proxy: {proxy.access_log()}"
    finally:
        app.close()


@pytest.mark.parametrize("mesh", BACKENDS, indirect=True)
def test_ipv4_only_capture_lets_ipv6_reach_the_app_directly(
        mesh: tuple[AgentProc, ProxyProc], pods: tuple[Node, Node]) -> None:
    agent, proxy = mesh
    a, b = pods
    r = cni("ADD", agent.socket, a.path, "c-a", [a.ip4, a.ip6], name="a",
            capture={"ipv6": False})
    assert r.code == 0, r.stdout + r.stderr
    app = echo_app(a, 8080)
    try:
        assert roundtrip(b, a.ip6, 8080) == b"ping"  # neither refused nor reset
        assert roundtrip(b, a.ip4, 8080) == b"ping"
        assert wait_logged(proxy, a.ip4), "IPv4 inbound must still be captured"
        assert inbound_seen(proxy, a.ip6) == [], "IPv6 was captured with IPv4-only capture"
    finally:
        app.close()


@pytest.mark.parametrize("mesh", BACKENDS, indirect=True)
def test_ipv4_only_pod_gets_no_ipv6_capture(mesh: tuple[AgentProc, ProxyProc],
                                            pods: tuple[Node, Node]) -> None:
    """The default follows the addresses the runtime reported: IPv4 only → IPv4 only."""
    agent, _ = mesh
    a, _ = pods
    assert cni("ADD", agent.socket, a.path, "c-a", [a.ip4], name="a").code == 0
    [rec] = agent.pods()
    assert rec["capture"].get("ipv6") is False, rec
