"""`meshnode status|version --kubeconfig`: every node's agent, read through the API server's
pod proxy subresource. The API server is testing/fakeapi.py, run inside the control plane's
netns (which routes to both nodes, as an API server reaches pods on the cluster network);
the agents are the real ones of the session's mesh, whose pods carry their node's IP (host
network), so the pod proxy reaches each agent's own HTTP port."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from testing.fakeapi import PODS, ThreadedFakeApi
from tests.cli.clirun import meshnode, meshnode_json
from tests.cli.conftest import AGENT_PORT, Mesh

pytestmark = pytest.mark.kernel
NS = "meshnode-system"


def agent_pod(name: str, node: str, ip: str) -> dict[str, Any]:
    return {"metadata": {"name": name, "namespace": NS,
                         "labels": {"app.kubernetes.io/name": "meshnode-node"}},
            "spec": {"nodeName": node, "hostNetwork": True,
                     "containers": [{"name": "agent", "image": "registry.test/meshnode:0.1.0",
                                     "ports": [{"containerPort": AGENT_PORT}]}]},
            "status": {"phase": "Running", "podIP": ip,
                       "conditions": [{"type": "Ready", "status": "True"}]}}


@pytest.fixture
def api(mesh: Mesh, tmp_path: Path) -> Iterator[tuple[ThreadedFakeApi, str]]:
    with ThreadedFakeApi((PODS,), netns=mesh.t.cp.path) as fake:
        for name, node, n in (("meshnode-node-aaaaa", "node1", mesh.n1),
                              ("meshnode-node-bbbbb", "node2", mesh.n2)):
            fake.call(fake.api.put, "pods", agent_pod(name, node, n.node.ip4))
        fake.call(fake.api.put, "pods", {
            "metadata": {"name": "meshnode-controlplane-x1", "namespace": NS,
                         "labels": {"app.kubernetes.io/name": "meshnode-controlplane"}},
            "spec": {"containers": [{"name": "controlplane",
                                     "image": "registry.test/meshnode:0.1.0"}]},
            "status": {"phase": "Running", "podIP": "198.18.40.1"}})
        # Not meshnode's: never listed, never asked.
        fake.call(fake.api.put, "pods", {"metadata": {"name": "web", "namespace": NS},
                                         "status": {"podIP": "198.18.40.1"}})
        yield fake, fake.api.kubeconfig(tmp_path / "kubeconfig")


def test_cluster_status_reads_every_agent_through_the_pod_proxy(
        mesh: Mesh, api: tuple[ThreadedFakeApi, str]) -> None:
    fake, kubeconfig = api
    st = meshnode_json("status", "--kubeconfig", kubeconfig, netns=mesh.t.cp.path)
    assert st["problems"] == []
    rows = {r["node"]: r for r in st["nodes"]}
    assert set(rows) == {"node1", "node2"}
    for node, pod in (("node1", "meshnode-node-aaaaa"), ("node2", "meshnode-node-bbbbb")):
        ag = rows[node]["agent"]
        assert rows[node]["pod"] == pod and ag["ready"]
        assert ag["controlplane"]["connected"] and ag["controlplane"]["ready"]
        assert ag["pods"]["enrolled"] == 1 and ag["proxies_connected"] == 1
    proxied = [p for m, p, _ in fake.api.requests if p.endswith("/proxy/debug/status")]
    assert sorted(proxied) == [
        f"/api/v1/namespaces/{NS}/pods/meshnode-node-aaaaa:{AGENT_PORT}/proxy/debug/status",
        f"/api/v1/namespaces/{NS}/pods/meshnode-node-bbbbb:{AGENT_PORT}/proxy/debug/status"]
    text = meshnode("status", "--kubeconfig", kubeconfig, netns=mesh.t.cp.path)
    assert text.returncode == 0
    assert "node1" in text.stdout and "node2" in text.stdout and "synced" in text.stdout
    assert "All 2 node(s) connected and in sync" in text.stdout


def test_an_unreachable_agent_is_a_problem_not_a_crash(
        mesh: Mesh, api: tuple[ThreadedFakeApi, str]) -> None:
    fake, kubeconfig = api
    # A third node whose agent does not answer (nothing listens there on the agent port).
    fake.call(fake.api.put, "pods", agent_pod("meshnode-node-ccccc", "node3", "198.18.40.1"))
    st = meshnode_json("status", "--kubeconfig", kubeconfig, netns=mesh.t.cp.path, code=1)
    [bad] = [r for r in st["nodes"] if r["node"] == "node3"]
    assert "agent" not in bad and "503" in bad["error"]
    assert any(p.startswith("node node3 (meshnode-node-ccccc): agent not reachable")
               for p in st["problems"]), st["problems"]
    r = meshnode("status", "--kubeconfig", kubeconfig, netns=mesh.t.cp.path)
    assert r.returncode == 1 and "unreachable" in r.stdout and "! node node3" in r.stdout


def test_rbac_refusals_name_what_is_needed(mesh: Mesh,
                                          api: tuple[ThreadedFakeApi, str]) -> None:
    fake, kubeconfig = api
    fake.call(fake.api.fail_next, f"GET /api/v1/namespaces/{NS}/pods", 403)
    r = meshnode("status", "--kubeconfig", kubeconfig, netns=mesh.t.cp.path)
    assert r.returncode == 2 and "`list pods` and `get pods/proxy`" in r.stderr
    fake.call(fake.api.fail_next,
              f"GET /api/v1/namespaces/{NS}/pods/meshnode-node-aaaaa:{AGENT_PORT}/proxy", 403)
    st = meshnode_json("status", "--kubeconfig", kubeconfig, netns=mesh.t.cp.path, code=1)
    [row] = [r for r in st["nodes"] if r["node"] == "node1"]
    assert "HTTP 403" in row["error"] and "get pods/proxy" in row["error"]


def test_no_agents_in_the_namespace(mesh: Mesh, api: tuple[ThreadedFakeApi, str]) -> None:
    _, kubeconfig = api
    r = meshnode("status", "--kubeconfig", kubeconfig, "-n", "elsewhere", netns=mesh.t.cp.path)
    assert r.returncode == 2 and "no meshnode agent pods" in r.stderr and "elsewhere" in r.stderr


def test_a_kubeconfig_that_does_not_exist(tmp_path: Path) -> None:
    r = meshnode("status", "--kubeconfig", str(tmp_path / "nope"))
    assert r.returncode == 2 and "kubeconfig" in r.stderr and "no such file" in r.stderr


def test_cluster_version(mesh: Mesh, api: tuple[ThreadedFakeApi, str]) -> None:
    _, kubeconfig = api
    d = meshnode_json("version", "--kubeconfig", kubeconfig, "--agent", "127.0.0.1:1",
                      "--proxy-admin", "127.0.0.1:1", netns=mesh.t.cp.path)
    agents = {a["node"]: a for a in d["cluster"]["agents"]}
    assert {a["version"] for a in agents.values()} == {d["client"]["version"]}
    assert {a["image"] for a in agents.values()} == {"0.1.0"}
    assert d["cluster"]["controlplane"] == [{"pod": "meshnode-controlplane-x1",
                                             "image": "0.1.0"}]
    assert d["agent"]["running"] is False  # none on this host: said, not an error
