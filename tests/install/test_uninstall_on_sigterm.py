"""SIGTERM: an uninstall removes the plugin and our entry, an upgrade keeps them.

A real agent (install on, in a temporary net.d and bin dir) asks a local API server
(testing/fakeapi.py) for its own DaemonSet when it is told to stop. Then a chained ADD
runs the remaining conflist with the reference plugins (bridge + host-local), in a "node"
netns for a "pod" netns: after an uninstall it succeeds; after an upgrade our entry is
still there and the ADD fails closed until the next agent comes (pods never start
uncaptured).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from testing.agent_harness import AgentProc
from testing.fakeapi import ThreadedFakeApi, daemonset
from testing.lab import Lab, Node
from tests.agent.agentconf import configure

pytestmark = pytest.mark.kernel
SYSTEM_CNI = "/usr/lib/cni"
NS, DS = "meshnode-system", "meshnode-node"


@pytest.fixture
def api() -> Iterator[ThreadedFakeApi]:
    with ThreadedFakeApi() as t:
        yield t


@pytest.fixture
def lab() -> Iterator[tuple[Node, Node]]:
    with Lab("un") as lab:
        yield lab.node("node"), lab.node("pod")


def primary(tmp: Path) -> dict[str, Any]:
    return {"cniVersion": "1.0.0", "name": "pods", "plugins": [
        {"type": "bridge", "bridge": "mnun0", "isGateway": True,
         "ipam": {"type": "host-local", "subnet": "198.18.210.0/24",
                  "dataDir": str(tmp / "ipam")}}]}


def start_agent(tmp: Path, api: ThreadedFakeApi) -> tuple[AgentProc, Path, Path]:
    net_d, bin_d = tmp / "net.d", tmp / "bin"
    net_d.mkdir()
    bin_d.mkdir()
    (net_d / "10-pods.conflist").write_text(json.dumps(primary(tmp)))
    agent = AgentProc(tmp / "agent", install={"enabled": True, "cni_net_dir": str(net_d),
                                              "cni_bin_dir": str(bin_d)},
                      env={"MESHNODE_DAEMONSET": DS, "POD_NAMESPACE": NS})
    configure(agent, kubernetes={"kubeconfig": api.api.kubeconfig(tmp / "kubeconfig")})
    agent.start()
    assert (bin_d / "meshnode-cni").exists()
    assert "meshnode-cni" in (net_d / "10-pods.conflist").read_text()
    return agent, net_d, bin_d


def chained_add(net_d: Path, bin_d: Path, node: Node,
                pod: Node) -> subprocess.CompletedProcess[str]:
    """ADD as a runtime does: every plugin of the primary conflist in order, each given the
    previous result; the first failure is the ADD's result."""
    [conf_file] = sorted(net_d.glob("*.conflist"))
    conflist = json.loads(conf_file.read_text())
    prev: dict[str, Any] | None = None
    proc = subprocess.CompletedProcess[str]([], 0, "", "")
    for plugin in conflist["plugins"]:
        conf = {**plugin, "name": conflist["name"], "cniVersion": conflist["cniVersion"]}
        if prev is not None:
            conf["prevResult"] = prev
        exe = bin_d / plugin["type"]
        if not exe.exists():
            exe = Path(SYSTEM_CNI) / plugin["type"]
        env = {"PATH": os.environ["PATH"], "CNI_COMMAND": "ADD", "CNI_CONTAINERID": "c-un",
               "CNI_NETNS": pod.path, "CNI_IFNAME": "eth0",
               "CNI_PATH": f"{bin_d}:{SYSTEM_CNI}", "CNI_ARGS": ""}
        proc = subprocess.run(["ip", "netns", "exec", node.name, str(exe)], env=env,
                              input=json.dumps(conf), capture_output=True, text=True,
                              timeout=30)
        if proc.returncode != 0:
            return proc
        prev = json.loads(proc.stdout)
    return proc


def test_uninstall_removes_plugin_and_entry_and_new_pods_start(
        tmp_path: Path, api: ThreadedFakeApi, lab: tuple[Node, Node]) -> None:
    node, pod = lab
    api.call(api.api.put, "daemonsets", daemonset(DS, NS))
    agent, net_d, bin_d = start_agent(tmp_path, api)
    try:
        # `helm uninstall`: the DaemonSet goes first, then its pods get SIGTERM.
        api.call(api.api.delete, "daemonsets", f"uid-ds-{DS}")
        agent.stop(signal.SIGTERM)
    finally:
        agent.stop()
    assert not (bin_d / "meshnode-cni").exists()
    conflist = json.loads((net_d / "10-pods.conflist").read_text())
    assert [p["type"] for p in conflist["plugins"]] == ["bridge"]
    assert "cni_install_uninstall_detected" in agent.log.read_text()
    add = chained_add(net_d, bin_d, node, pod)
    assert add.returncode == 0, add.stdout + add.stderr
    assert json.loads(add.stdout)["ips"][0]["address"].startswith("198.18.210.")


def test_uninstall_with_the_daemonset_being_deleted(tmp_path: Path,
                                                    api: ThreadedFakeApi) -> None:
    api.call(api.api.put, "daemonsets", daemonset(DS, NS))
    agent, net_d, bin_d = start_agent(tmp_path, api)
    try:
        api.call(api.api.put, "daemonsets", daemonset(DS, NS, deleting=True))  # foreground
        agent.stop(signal.SIGTERM)
    finally:
        agent.stop()
    assert not (bin_d / "meshnode-cni").exists()
    assert "meshnode-cni" not in (net_d / "10-pods.conflist").read_text()


def test_upgrade_keeps_plugin_and_entry_so_new_pods_wait(
        tmp_path: Path, api: ThreadedFakeApi, lab: tuple[Node, Node]) -> None:
    node, pod = lab
    api.call(api.api.put, "daemonsets", daemonset(DS, NS))
    agent, net_d, bin_d = start_agent(tmp_path, api)
    try:
        agent.stop(signal.SIGTERM)  # a rolling upgrade: the DaemonSet stays
    finally:
        agent.stop()
    assert (bin_d / "meshnode-cni").exists()
    assert "meshnode-cni" in (net_d / "10-pods.conflist").read_text()
    assert "cni_install_upgrade_detected" in agent.log.read_text()
    add = chained_add(net_d, bin_d, node, pod)
    # No agent: our plugin fails the ADD closed ("try again later"), the pod waits.
    assert add.returncode != 0 and json.loads(add.stdout)["code"] == 11, add.stdout


@pytest.mark.parametrize("status", [500, 0])
def test_api_trouble_at_stop_keeps_the_plugin(tmp_path: Path, api: ThreadedFakeApi,
                                              status: int) -> None:
    """Cannot tell (a server error, or no API at all): keep today's behaviour."""
    api.call(api.api.put, "daemonsets", daemonset(DS, NS))
    agent, net_d, bin_d = start_agent(tmp_path, api)
    try:
        if status:
            api.call(api.api.fail_next, "GET /apis/apps/v1/namespaces", status, 5)
        else:
            api.call_async(api.api.stop())  # the API server is gone
        agent.stop(signal.SIGTERM)
    finally:
        agent.stop()
    assert (bin_d / "meshnode-cni").exists()
    assert "meshnode-cni" in (net_d / "10-pods.conflist").read_text()
    assert "cannot tell" in agent.log.read_text()


def test_no_daemonset_at_start_never_uninstalls(tmp_path: Path, api: ThreadedFakeApi) -> None:
    """A wrong MESHNODE_DAEMONSET (or missing RBAC) would make every restart look like an
    uninstall: detection is off for the agent's lifetime instead, and says so."""
    agent, _net_d, bin_d = start_agent(tmp_path, api)
    try:
        agent.stop(signal.SIGTERM)
    finally:
        agent.stop()
    assert (bin_d / "meshnode-cni").exists()
    log = agent.log.read_text()
    assert "uninstall_detection_off" in log and "not readable at start-up" in log
