"""No half state on failure (issue 12): a real agent, the real plugin and a real proxy.

An ADD the agent cannot finish within the plugin's deadline is undone whole (rules, pod
record, the proxy's listeners); STATUS is not-ready without a synced proxy; a proxy that
never acks does not take new pods; the agent's own and the host's netns are refused.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.redirect import backend as engine
from agent.redirect.spec import RedirectSpec
from core.wire import zds as wire
from meshpb import zds_pb2
from testing.agent_harness import AgentProc, CniResult, cni
from testing.lab import Node
from testing.proxy_procs import ProxyProc
from tests.agent.zds_relay import SlowAckRelay
from tests.zds import short_dir

PROXY_PORTS = {15001, 15006, 15008}  # dns_capture off: no 15053


def has_our_rules(netns: str) -> bool:
    return bool(engine.read(netns, RedirectSpec(), engine.make_backend("nftables")).rules)


def listening(node: Node) -> set[int]:
    out = subprocess.run(["ip", "netns", "exec", node.name, "ss", "-ltnH"],
                         capture_output=True, text=True, check=True).stdout
    return {int(line.split()[3].rsplit(":", 1)[1]) for line in out.splitlines()}


def pod_files(agent: AgentProc) -> list[str]:
    return sorted(p.name for p in (agent.workdir / "state").rglob("*.json")
                  if "install" not in p.name)


def wait_for(pred: object, timeout: float = 8.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():  # type: ignore[operator]
            return True
        time.sleep(0.05)
    return False


def raw_request(path: str, req: dict[str, object]) -> dict[str, object]:
    """One request on the agent's socket, as a plugin of any version would send it."""
    with socket.socket(socket.AF_UNIX) as s:
        s.settimeout(10)
        s.connect(path)
        s.sendall((json.dumps(req) + "\n").encode())
        reply: dict[str, object] = json.loads(s.makefile().readline())
        return reply


@pytest.fixture
def workdir() -> Iterator[Path]:
    with short_dir() as d:  # unix socket paths must stay under 108 bytes
        yield Path(d)


@pytest.fixture
def agent(workdir: Path) -> Iterator[AgentProc]:
    a = AgentProc(workdir / "agent", proxy_handoff=True, drift_interval=3600).start()
    try:
        yield a
    finally:
        a.stop()


def status(agent: AgentProc) -> int:
    return cni("STATUS", agent.socket, "", "", []).code


def test_add_past_its_deadline_leaves_no_rules_no_state_no_listener(
        workdir: Path, agent: AgentProc, pods: tuple[Node, Node]) -> None:
    pod, _ = pods
    relay_path = str(workdir / "relay.sock")
    with SlowAckRelay(relay_path, str(agent.workdir / "zds.sock")) as relay:
        proxy = ProxyProc(workdir / "proxy", relay_path, extra={"dns_capture": False}).start()
        try:
            assert wait_for(lambda: status(agent) == 0), "proxy never became eligible"
            relay.add_ack_delay = 2.5  # the proxy opens its listeners, its ack comes late
            started = time.monotonic()
            r = cni("ADD", agent.socket, pod.path, "c1", [pod.ip4],
                    extra_conf={"timeout_seconds": 1})
            assert r.code == 1, r.stdout + r.stderr
            assert r.error["code"] == 11 and "did not answer in time" in r.error["msg"], r.stdout
            assert time.monotonic() - started < 2.0
            # The proxy did take the pod (only its ack is held back) ...
            assert listening(pod) >= PROXY_PORTS
            assert relay.delayed == 1
            # ... and the agent's rollback takes it back out everywhere.
            assert wait_for(lambda: not PROXY_PORTS & listening(pod)), listening(pod)
            assert wait_for(lambda: agent.pods() == [])
            assert pod_files(agent) == []
            assert not has_our_rules(pod.path)
            assert [w for w in proxy.workloads() if w.get("uid") == "u-web-0"] == []
            assert "enroll_failed" in agent.log.read_text()
            # Once the proxy is prompt again, the runtime's retry succeeds.
            relay.add_ack_delay = 0
            assert wait_for(lambda: status(agent) == 0)
            r = cni("ADD", agent.socket, pod.path, "c1", [pod.ip4],
                    extra_conf={"timeout_seconds": 5})
            assert r.code == 0, r.stdout + r.stderr
            assert listening(pod) >= PROXY_PORTS and has_our_rules(pod.path)
        finally:
            proxy.stop()


def test_a_deadline_already_passed_is_refused_at_once(agent: AgentProc,
                                                     pods: tuple[Node, Node]) -> None:
    pod, _ = pods
    req = {"v": 1, "cmd": "ADD", "container_id": "c1", "netns": pod.path, "ifname": "eth0",
           "pod": {"name": "web-0", "namespace": "default", "uid": "u1"}, "ips": [pod.ip4],
           "config": {"name": "t", "cniVersion": "1.1.0", "capture": {}}}
    reply = raw_request(agent.socket, {**req, "deadline_ms": 0})
    assert reply["ok"] is False and reply["code"] == 11
    assert "passed before the agent could start; nothing was changed" in str(reply["msg"])
    assert agent.pods() == [] and not has_our_rules(pod.path)
    assert agent.metric('meshnode_add_deadline_exceeded_total{stage="before_start"}') == 1
    reply = raw_request(agent.socket, {**req, "deadline_ms": "soon"})
    assert reply["ok"] is False and reply["code"] == 7
    assert "deadline_ms must be a number of milliseconds" in str(reply["msg"])
    assert agent.pods() == []


def test_status_is_not_ready_without_a_synced_proxy(workdir: Path, agent: AgentProc) -> None:
    r = cni("STATUS", agent.socket, "", "", [])
    assert r.code == 1 and r.error["code"] == 50, r.stdout
    assert "no node proxy is connected" in r.error["msg"]
    # Readiness stays the agent's own: a proxy restart must not make the agent unready.
    assert agent.http("/readyz")[0] == 200
    proxy = ProxyProc(workdir / "proxy", str(agent.workdir / "zds.sock"),
                      extra={"dns_capture": False}).start()
    try:
        assert wait_for(lambda: status(agent) == 0)
    finally:
        proxy.stop()
    assert wait_for(lambda: status(agent) == 1)


def test_a_proxy_that_never_acks_does_not_take_new_pods(
        workdir: Path, agent: AgentProc, pods: tuple[Node, Node]) -> None:
    pod, _ = pods
    proxy = ProxyProc(workdir / "proxy", str(agent.workdir / "zds.sock"),
                      extra={"dns_capture": False}).start()
    silent = wire.seqpacket()
    silent.setblocking(True)
    try:
        assert wait_for(lambda: status(agent) == 0)
        # The newest connection: says hello, then never acks its snapshot.
        silent.connect(str(agent.workdir / "zds.sock"))
        silent.send(zds_pb2.ZdsHello(version=zds_pb2.V1).SerializeToString())
        assert wait_for(lambda: agent.metric("meshnode_proxies_connected") == 2, 3)
        started = time.monotonic()
        r = cni("ADD", agent.socket, pod.path, "c1", [pod.ip4],
                extra_conf={"timeout_seconds": 3})
        assert r.code == 0, r.stdout + r.stderr
        assert time.monotonic() - started < 1.5  # no ack timeout was waited out
        [rec] = agent.pods()
        assert rec["state"] == "enrolled"
        assert listening(pod) >= PROXY_PORTS
    finally:
        silent.close()
        proxy.stop()


def refused_as_the_node(r: CniResult) -> None:
    assert r.code == 1, r.stdout
    assert r.error["code"] == 4, r.stdout
    assert "network namespace: refusing to capture the node's own traffic" in r.error["msg"]


def test_the_agents_own_or_the_host_netns_is_refused(agent: AgentProc, workdir: Path) -> None:
    # The agent runs in this process's netns (the host's): any path to it is refused, a
    # bind mount included (netns are compared by their nsfs inode, not by path).
    alias = workdir / "alias-ns"
    alias.touch()
    subprocess.run(["mount", "--bind", "/proc/self/ns/net", str(alias)], check=True)
    try:
        for path in ("/proc/self/ns/net", str(alias)):
            refused_as_the_node(cni("ADD", agent.socket, path, "c1", ["198.18.0.1"]))
    finally:
        subprocess.run(["umount", str(alias)], check=True)
    r = cni("ADD", agent.socket, "/proc/1/ns/net", "c1", ["198.18.0.1"])
    if os.access("/proc/1/ns/net", os.R_OK):
        refused_as_the_node(r)
    else:  # a sandbox that hides pid 1's namespaces from root: the agent cannot open it
        assert r.code == 1 and "/proc/1/ns/net does not exist" in r.error["msg"], r.stdout
    assert agent.pods() == []
    assert not has_our_rules("/proc/self/ns/net")
    assert "enroll_refused" in agent.log.read_text()
