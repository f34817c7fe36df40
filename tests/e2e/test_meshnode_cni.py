"""containerd → bridge + host-local + meshnode-cni → a real agent, end to end."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.redirect import backend as engine
from agent.redirect.errors import RedirectError
from agent.redirect.spec import RedirectSpec
from proxy.origdst import original_dst
from testing.agent_harness import PLUGIN, AgentProc
from tests.e2e.runtime import CniError, Container, Runtime, bridge_plugin
from tests.kernel.netutil import accepted_by, tcp_listener

NFT = engine.make_backend("nftables")


def k8s(name: str, namespace: str = "default") -> dict[str, str]:
    return {"K8S_POD_NAMESPACE": namespace, "K8S_POD_NAME": name, "K8S_POD_UID": f"uid-{name}",
            "K8S_POD_INFRA_CONTAINER_ID": f"infra-{name}"}


@pytest.fixture
def agent(tmp_path: Path) -> Iterator[AgentProc]:
    a = AgentProc(tmp_path / "agent", drift_interval=3600)  # no background repair here
    a.start()
    try:
        yield a
    finally:
        a.stop()


@pytest.fixture
def meshed(runtime: Runtime, agent: AgentProc) -> Runtime:
    runtime.add_plugin(PLUGIN, "meshnode-cni")
    runtime.write_conflist([bridge_plugin(), {"type": "meshnode-cni",
                                              "agent_socket": agent.socket,
                                              "timeout_seconds": 10}])
    return runtime


def captured(c: Container) -> bool:
    return engine.diff(c.netns_path(), RedirectSpec(), NFT).in_sync


def test_pod_is_captured_checked_and_released(meshed: Runtime, agent: AgentProc) -> None:
    web = meshed.run("web", cni_args=k8s("web"))
    assert captured(web), "the container's netns does not carry our rules"
    [rec] = agent.pods()
    assert (rec["name"], rec["namespace"], rec["state"]) == ("web", "default", "redirected")
    assert rec["ips"] == [web.ip()]
    meshed.cni_check(web)  # CHECK passes while the rules are intact
    meshed.in_node(["nsenter", f"--net={web.netns_path()}", "nft", "delete", "table", "inet",
                    "meshnode-nat"], check=True)
    # The agent's drift watch (netlink notifications) puts the table back within 1 s.
    deadline = time.monotonic() + 1.0
    while not captured(web):
        assert time.monotonic() < deadline, "the deleted table was not repaired within 1 s"
        time.sleep(0.02)
    meshed.cni_check(web)  # and CHECK passes again
    netns = web.netns_path()
    meshed.delete("web")
    assert agent.pods() == []
    assert not captured_any(netns)


def captured_any(netns: str) -> bool:
    """Whether any rule of ours is in netns. A netns that is gone holds none; every other
    failure to read it fails the test instead of passing for "not captured"."""
    try:
        return bool(engine.read(netns, RedirectSpec(), NFT).rules)
    except RedirectError:
        if os.path.exists(netns):
            raise
        return False


def test_captured_pod_traffic_lands_on_the_proxy_port(meshed: Runtime) -> None:
    client = meshed.run("client", cni_args=k8s("client"))
    server = meshed.run("server", cni_args=k8s("server"))
    proxy = tcp_listener(client.netns_path(), 15001, "0.0.0.0")
    # busybox nc waits for the peer to close: run it aside, accept, then close.
    nc = threading.Thread(target=client.exec,
                          args=(["sh", "-c", f"echo hi | nc {server.ip()} 80"],))
    nc.start()
    conn = accepted_by(proxy, 10)
    try:
        assert conn is not None, "the pod's connection was not captured"
        assert original_dst(conn) == (server.ip(), 80)
        assert conn.recv(16) == b"hi\n"
    finally:
        if conn is not None:
            conn.close()
        nc.join(20)


def test_agent_down_fails_the_pod_and_a_retry_succeeds(meshed: Runtime,
                                                       agent: AgentProc) -> None:
    agent.stop()
    with pytest.raises(CniError, match="agent"):
        meshed.run("late", cni_args=k8s("late"))
    assert "late" not in meshed.containers  # the runtime gave up on it: nothing half-made
    agent.start()
    late = meshed.run("late", cni_args=k8s("late"))
    assert captured(late)


def test_plain_ctr_container_without_k8s_args_is_captured(meshed: Runtime,
                                                         agent: AgentProc) -> None:
    """`ctr run --cni` sends no CNI_ARGS: the agent still captures it (selection: all)."""
    box = meshed.run("box")
    assert captured(box)
    [rec] = agent.pods()
    assert rec["container_id"].endswith("box") and rec["ips"] == [box.ip()]
    meshed.delete("box")
    assert agent.pods() == []


def test_excluded_namespace_runs_uncaptured(meshed: Runtime, agent: AgentProc) -> None:
    sys_pod = meshed.run("dns", cni_args=k8s("coredns", "kube-system"))
    assert not captured_any(sys_pod.netns_path())
    assert agent.pods() == []
