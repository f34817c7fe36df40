"""The example mesh, as Kubernetes and Istio manifests, and the mesh's daemons: one control
plane (`--config` on those manifests), and per node an agent (with a `controlplane:`
section, so it dials the control plane over the node network) and a proxy (fed by the agent
over ZDS and mesh.sock). The layout of testing/mesh_procs.py."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from controlplane import nodeauth
from core.ports import ADMIN_PORT, AGENT_HTTP_PORT
from demo.procs import Daemon
from demo.topology import CONTROL_PLANE_IP

NAMESPACE = "demo"
VIP = "198.19.41.10"
CP_PORT = 15012
# each node netns has its own loopback: fixed ports are safe
AGENT_HTTP = f"127.0.0.1:{AGENT_HTTP_PORT}"
PROXY_ADMIN = f"127.0.0.1:{ADMIN_PORT}"
SERVER_PORT = 8080


@dataclass(frozen=True)
class PodSpec:
    name: str
    node: str
    ip: str
    cmd: tuple[str, ...]

    @property
    def identity(self) -> str:
        return f"spiffe://cluster.local/ns/{NAMESPACE}/sa/{self.name}"


SLEEP = ("sleep", "3600")
PODS = (
    PodSpec("frontend", "node1", "198.18.41.10", SLEEP),
    PodSpec("batch", "node1", "198.18.41.11", SLEEP),
    PodSpec("backend", "node2", "198.18.43.10", ("httpd", "-f", "-p", str(SERVER_PORT),
                                                 "-h", "/www")),
)
DENIED = "batch"  # the one flow the policy denies: batch -> backend
POLICY = f"{NAMESPACE}/deny-batch-to-backend"


def pod(name: str) -> PodSpec:
    return next(p for p in PODS if p.name == name)


def example_manifests() -> list[dict[str, Any]]:
    """The mesh as Kubernetes and Istio objects, as `kubectl apply -f` would take them: the
    namespace enrolled in ambient mode, the two nodes, the pods (each its own service
    account, running and Ready at its address), the backend Service on the VIP, and one L4
    DENY AuthorizationPolicy."""
    docs: list[dict[str, Any]] = [
        {"apiVersion": "v1", "kind": "Namespace",
         "metadata": {"name": NAMESPACE, "labels": {"istio.io/dataplane-mode": "ambient"}}}]
    docs += [{"apiVersion": "v1", "kind": "Node", "metadata": {"name": n}}
             for n in sorted({p.node for p in PODS})]
    docs += [{"apiVersion": "v1", "kind": "Pod",
              "metadata": {"name": p.name, "namespace": NAMESPACE, "labels": {"app": p.name}},
              "spec": {"nodeName": p.node, "serviceAccountName": p.name,
                       "containers": [{"name": p.name, "image": "busybox"}]},
              "status": {"phase": "Running", "podIP": p.ip, "podIPs": [{"ip": p.ip}],
                         "conditions": [{"type": "Ready", "status": "True"}]}}
             for p in PODS]
    docs.append({"apiVersion": "v1", "kind": "Service",
                 "metadata": {"name": "backend", "namespace": NAMESPACE},
                 "spec": {"clusterIP": VIP, "selector": {"app": "backend"},
                          "ports": [{"port": 80, "targetPort": SERVER_PORT}]}})
    docs.append({"apiVersion": "security.istio.io/v1", "kind": "AuthorizationPolicy",
                 "metadata": {"name": "deny-batch-to-backend", "namespace": NAMESPACE},
                 "spec": {"selector": {"matchLabels": {"app": "backend"}}, "action": "DENY",
                          "rules": [{"from": [{"source": {"principals": [
                              f"cluster.local/ns/{NAMESPACE}/sa/{DENIED}"]}}]}]}})
    return docs


def control_plane(work: Path, netns: str) -> Daemon:
    """`meshnode controlplane` on its netns' address; its certificate names that address,
    so the agents verify it without a name override."""
    manifests = work / "manifests"
    manifests.mkdir(parents=True, exist_ok=True)
    (manifests / "demo.yaml").write_text(yaml.safe_dump_all(example_manifests(),
                                                            sort_keys=False))
    return Daemon.meshnode("control plane", [
        "controlplane", "--config", str(manifests), "--state-dir", str(work / "state"),
        "--address", f"{CONTROL_PLANE_IP}:{CP_PORT}", "--server-name", "meshnode-controlplane",
        "--server-name", CONTROL_PLANE_IP], netns, work / "controlplane.log")


def node_token(cp_work: Path, node: str) -> str:
    # In-process (the same key file the control plane reads), instead of one more
    # `meshnode controlplane --print-node-token` start per node.
    return nodeauth.mint(nodeauth.load_or_create_key(cp_work / "state" / "node-token.key"), node)


@dataclass
class NodeDaemons:
    name: str
    work: Path
    agent: Daemon
    proxy: Daemon

    @property
    def cni_socket(self) -> str:
        return str(self.work / "cni.sock")

    @property
    def agent_config(self) -> Path:
        return self.work / "agent.yaml"


def node_daemons(name: str, work: Path, netns: str, cp_work: Path, backend: str,
                 flavour: str, env: dict[str, str]) -> NodeDaemons:
    work.mkdir(parents=True, exist_ok=True)
    agent_cfg = {
        "cni_socket": str(work / "cni.sock"), "zds_socket": str(work / "zds.sock"),
        "mesh_socket": str(work / "mesh.sock"), "state_dir": str(work / "state"),
        "http_address": AGENT_HTTP, "drift_interval_seconds": 3600, "proxy_handoff": True,
        "capture": {"backend": backend, "iptables_flavour": flavour},
        "controlplane": {"address": f"{CONTROL_PLANE_IP}:{CP_PORT}",
                         "root_cert": str(cp_work / "state" / "root-cert.pem"),
                         "token": node_token(cp_work, name), "node_name": name,
                         "cluster_id": "Kubernetes", "cert_ttl_seconds": 3600}}
    proxy_cfg = {"zds_socket": str(work / "zds.sock"), "admin_address": PROXY_ADMIN,
                 "drain_seconds": 1, "dns_capture": False, "mesh_socket": str(work / "mesh.sock")}
    (work / "agent.yaml").write_text(yaml.safe_dump(agent_cfg))
    (work / "proxy.yaml").write_text(yaml.safe_dump(proxy_cfg))
    agent = Daemon.meshnode(f"{name} agent", ["agent", "--config", str(work / "agent.yaml")],
                            netns, work / "agent.log", env)
    proxy = Daemon.meshnode(f"{name} proxy", ["proxy", "--config", str(work / "proxy.yaml")],
                            netns, work / "proxy.log", env)
    return NodeDaemons(name, work, agent, proxy)

