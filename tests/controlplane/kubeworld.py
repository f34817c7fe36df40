"""A small cluster in the fake API server (testing/fakeapi.py) for the Kubernetes-token tests:
two nodes, a node agent pod on each (service account meshnode-system/meshnode-node),
workloads shop/web on node1 and shop/sleep on node2, and the tokens the TokenReview
endpoint vouches for."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from controlplane.server import ControlPlane, ControlPlaneConfig
from testing import fakeapi
from testing.fakeapi import CONTROLPLANE_RESOURCES, FakeApi, obj, sa_user

AGENT_NS, AGENT_SA = "meshnode-system", "meshnode-node"
WEB = "spiffe://cluster.local/ns/shop/sa/web"       # runs on node1
SLEEP = "spiffe://cluster.local/ns/shop/sa/sleep"   # runs on node2

# Tokens (what a projected token file would hold; opaque to the control plane).
AGENT1 = "agent-node1-token"           # node1's agent; the node is in the token (>= 1.30)
AGENT2 = "agent-node2-token"           # node2's agent; pod only (before 1.30): pod lookup
AGENT1_ROTATED = "agent-node1-token-2"
WEB_TOKEN = "web-0-token"              # the workload shop/web's own token
WRONG_AUDIENCE = "agent-node1-api-audience"   # node1's agent, audience of the API server
UNBOUND_AGENT = "agent-unbound-token"  # the agents' service account, bound to no pod
GONE_POD = "agent-of-a-deleted-pod"    # bound to a pod uid that no longer exists

AGENT_POD_UIDS = {"node1": "uid-agent-node1", "node2": "uid-agent-node2"}


def pod(name: str, ns: str, sa: str, node: str, ip: str, uid: str = "",
        app: str = "") -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "namespace": ns, "uid": uid or f"uid-{name}",
                         "labels": {"app": app or name}},
            "spec": {"nodeName": node, "serviceAccountName": sa,
                     "containers": [{"name": "app"}]},
            "status": {"phase": "Running", "podIP": ip, "podIPs": [{"ip": ip}],
                       "conditions": [{"type": "Ready", "status": "True"}]}}


def agent_user(node: str, with_node: bool = True) -> dict[str, Any]:
    return sa_user(AGENT_NS, AGENT_SA, pod_name=f"meshnode-node-{node}",
                   pod_uid=AGENT_POD_UIDS[node], node_name=node if with_node else "")


def world() -> FakeApi:
    api = FakeApi(CONTROLPLANE_RESOURCES)
    api.put("namespaces", obj(fakeapi.NAMESPACES, "shop", metadata={
        "name": "shop", "labels": {"istio.io/dataplane-mode": "ambient"}}))
    api.put("namespaces", obj(fakeapi.NAMESPACES, AGENT_NS))
    for n in ("node1", "node2"):
        api.put("nodes", obj(fakeapi.NODES, n))
        api.put("pods", pod(f"meshnode-node-{n}", AGENT_NS, AGENT_SA, n,
                            "10.0.0.1" if n == "node1" else "10.0.0.2",
                            uid=AGENT_POD_UIDS[n]))
    api.put("pods", pod("web-0", "shop", "web", "node1", "198.18.1.2", app="web"))
    api.put("pods", pod("sleep-0", "shop", "sleep", "node2", "198.18.2.2", app="sleep"))
    api.add_token(AGENT1, agent_user("node1"))
    api.add_token(AGENT2, agent_user("node2", with_node=False))
    api.add_token(WEB_TOKEN, sa_user("shop", "web", pod_name="web-0", pod_uid="uid-web-0",
                                     node_name="node1"))
    api.add_token(WRONG_AUDIENCE, agent_user("node1"), audiences=fakeapi.API_AUDIENCES)
    api.add_token(UNBOUND_AGENT, sa_user(AGENT_NS, AGENT_SA))
    api.add_token(GONE_POD, sa_user(AGENT_NS, AGENT_SA, pod_name="meshnode-node-node1",
                                    pod_uid="uid-of-an-older-pod"))
    return api


@asynccontextmanager
async def kube_control_plane(tmp: Path, api: FakeApi | None = None,
                             **overrides: Any) -> AsyncIterator[tuple[FakeApi, ControlPlane]]:
    """The fake API server (started) and a control plane reading it, serving."""
    api = api or world()
    await api.start()
    try:
        cp = ControlPlane(ControlPlaneConfig(
            kubeconfig=api.kubeconfig(tmp / "kubeconfig"), address="127.0.0.1:0",
            state_dir=tmp / "state", **overrides))
        await cp.start()
        try:
            yield api, cp
        finally:
            await cp.stop(0)
    finally:
        await api.stop()
