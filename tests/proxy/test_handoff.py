"""Agent + proxy + plugin as separate processes: enrollment completes on the proxy's ack,
and restarts of either side lose nothing."""

from __future__ import annotations

import signal
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.redirect import backend as engine
from agent.redirect.spec import RedirectSpec
from core.netns import entered
from testing.agent_harness import AgentProc, cni
from testing.lab import Lab, Node
from testing.proxy_procs import ProxyProc
from tests.dns.resolver import Resolver, answer_ip, build_query, tcp_ask, udp_ask
from tests.kernel.netutil import udp_socket

NFT = engine.make_backend("nftables")


@pytest.fixture
def pods() -> Iterator[tuple[Node, Node]]:
    with Lab("ho") as lab:
        a, b = lab.node("a"), lab.node("b")
        lab.link(a, b, subnet=7)
        yield a, b


@pytest.fixture
def agent(tmp_path: Path) -> Iterator[AgentProc]:
    a = AgentProc(tmp_path / "agent", proxy_handoff=True, drift_interval=3600).start()
    try:
        yield a
    finally:
        a.stop()


@pytest.fixture
def proxy(tmp_path: Path, agent: AgentProc) -> Iterator[ProxyProc]:
    p = ProxyProc(tmp_path / "proxy", str(agent.workdir / "zds.sock"),
                  extra={"dns_capture": False}).start()
    try:
        yield p
    finally:
        p.stop()


def echo_server(node: Node, port: int) -> socket.socket:
    with entered(node.path):
        s = socket.create_server(("0.0.0.0", port))

    def serve() -> None:
        while True:
            try:
                c, _ = s.accept()
            except OSError:
                return
            threading.Thread(target=_echo, args=(c,), daemon=True).start()

    threading.Thread(target=serve, daemon=True).start()
    return s


def _echo(c: socket.socket) -> None:
    with c:
        while data := c.recv(65536):
            c.sendall(data)


def roundtrip(node: Node, ip: str, port: int, msg: bytes = b"ping") -> bytes:
    with entered(node.path):
        s = socket.socket()
    with s:
        s.settimeout(5)
        s.connect((ip, port))
        s.sendall(msg)
        return s.recv(len(msg))


def test_enrollment_completes_on_the_proxys_ack_and_traffic_flows(
        agent: AgentProc, proxy: ProxyProc, pods: tuple[Node, Node]) -> None:
    a, b = pods
    for node, name in ((a, "a"), (b, "b")):
        r = cni("ADD", agent.socket, node.path, f"c-{name}", [node.ip4], name=name)
        assert r.code == 0, r.stdout
    states = {p["name"]: p["state"] for p in agent.pods()}
    assert states == {"a": "enrolled", "b": "enrolled"}
    views = {p["name"]: p["proxy"] for p in agent.pods(f"127.0.0.1:{proxy.port}")}
    assert views["a"]["listeners"]["outbound"] == 15001 and views["b"]["connections"] == 0
    assert {w["name"] for w in proxy.workloads()} == {"a", "b"}
    srv = echo_server(b, 8080)
    assert roundtrip(a, b.ip4, 8080) == b"ping"
    time.sleep(0.3)
    log = proxy.access_log()
    assert {(e["direction"], e["src_workload"], e["dst_workload"]) for e in log} == {
        ("outbound", "a", "b"), ("inbound", "a", "b")}
    srv.close()
    assert cni("DEL", agent.socket, a.path, "c-a", [a.ip4], name="a").code == 0
    assert {w["name"] for w in proxy.workloads()} == {"b"}


def test_no_proxy_fails_the_add_and_leaves_no_rules(agent: AgentProc,
                                                    pods: tuple[Node, Node]) -> None:
    a, _ = pods
    r = cni("ADD", agent.socket, a.path, "c-a", [a.ip4], name="a")
    assert r.code != 0 and "proxy" in r.error["msg"], r.stdout
    assert not engine.read(a.path, RedirectSpec(), NFT).rules
    assert agent.pods() == []


def test_agent_killed_under_traffic_loses_nothing(agent: AgentProc, proxy: ProxyProc,
                                                  pods: tuple[Node, Node]) -> None:
    a, b = pods
    assert cni("ADD", agent.socket, a.path, "c-a", [a.ip4], name="a").code == 0
    srv = echo_server(b, 8080)
    with entered(a.path):
        long = socket.create_connection((b.ip4, 8080), timeout=5)
    long.sendall(b"before")
    assert long.recv(6) == b"before"
    agent.stop(signal.SIGKILL)
    long.sendall(b"during")  # established connection keeps flowing
    assert long.recv(6) == b"during"
    for _ in range(5):  # new connections are still captured and served
        assert roundtrip(a, b.ip4, 8080) == b"ping"
    agent.start()  # reconciles with the proxy through a new snapshot
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and '"snapshot_received": true' not in \
            proxy.get("/config_dump")[1].replace(" ", " "):
        time.sleep(0.1)
    assert [w["name"] for w in proxy.workloads()] == ["a"]
    long.sendall(b"after")
    assert long.recv(5) == b"after"
    assert roundtrip(a, b.ip4, 8080) == b"ping"
    outbound = [e for e in proxy.access_log() if e["direction"] == "outbound"]
    assert len(outbound) >= 5
    long.close()
    srv.close()


def test_proxy_replacement_fails_no_connection(tmp_path: Path, agent: AgentProc,
                                               proxy: ProxyProc, pods: tuple[Node, Node]) -> None:
    a, b = pods
    assert cni("ADD", agent.socket, a.path, "c-a", [a.ip4], name="a").code == 0
    srv = echo_server(b, 8080)
    failures: list[str] = []
    done = threading.Event()
    count = 0

    def client() -> None:
        nonlocal count
        while not done.is_set():
            try:
                assert roundtrip(a, b.ip4, 8080) == b"ping"
                count += 1
            except Exception as exc:
                failures.append(repr(exc))

    t = threading.Thread(target=client)
    t.start()
    try:
        time.sleep(0.5)
        new = ProxyProc(tmp_path / "proxy2", str(agent.workdir / "zds.sock"), name="proxy2",
                        extra={"dns_capture": False}).start()
        time.sleep(0.5)  # the new proxy took the snapshot and listens beside the old one
        proxy.stop(signal.SIGTERM)  # the old one drains and exits
        time.sleep(1.0)
        before = count
        time.sleep(0.5)
        assert count > before, "no connection succeeded after the old proxy left"
        assert [w["name"] for w in new.workloads()] == ["a"]
    finally:
        done.set()
        t.join(10)
        srv.close()
    new.stop()
    assert failures == [], f"{len(failures)} of {count + len(failures)} failed: {failures[:3]}"
    assert count > 20


def test_dns_from_an_enrolled_pod_goes_through_15053_and_gets_answers(
        tmp_path: Path, agent: AgentProc, pods: tuple[Node, Node]) -> None:
    """The full stack: plugin ADD → agent rules (DNS capture on) → proxy's 15053 → the
    resolver the pod asked, over UDP and TCP."""
    a, b = pods
    proxy = ProxyProc(tmp_path / "dnsproxy", str(agent.workdir / "zds.sock"), name="dns").start()
    try:
        assert cni("ADD", agent.socket, a.path, "c-a", [a.ip4], name="a").code == 0
        with Resolver(b.path) as resolver:
            with udp_socket(a.path) as q:
                got = udp_ask(q, (b.ip4, 53), build_query("web.mesh.local", 7), timeout=5)
            assert got is not None, "no UDP answer"
            answer, peer = got
            assert answer_ip(7, answer) == resolver.ip and peer == (b.ip4, 53)
            with entered(a.path):
                t = socket.create_connection((b.ip4, 53), timeout=5)
            with t:
                assert answer_ip(8, tcp_ask(t, build_query("db.mesh.local", 8))) == resolver.ip
            assert resolver.udp_queries == 1 and resolver.tcp_queries == 1
        [pod] = proxy.workloads()
        assert pod["dns"]["udp"]["answered"] >= 1 and pod["dns"]["tcp"]["queries"] >= 1, pod["dns"]
    finally:
        proxy.stop()
