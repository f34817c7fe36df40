"""The node identity the agent presents on the discovery stream.

Shaped like ztunnel's (`Config::node()`), so istiod treats meshnode as a ztunnel and a
meshnode control plane can rely on the same fields: the id has the four `~` parts istiod's
`ParseServiceNodeWithMetadata` needs with node type `ztunnel`, and the metadata carries
NODE_NAME (which workloads are on this node), INSTANCE_IPS, NAME/NAMESPACE (the agent's
own pod), CLUSTER_ID and ISTIO_VERSION (istiod warns without it).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from envoy.config.core.v3 import base_pb2

from core.mesh.model import DEFAULT_CLUSTER

NODE_TYPE = "ztunnel"
USER_AGENT = "meshnode"
# istiod gates features on ISTIO_VERSION; claim the ambient era we are wire-compatible with.
COMPAT_ISTIO_VERSION = "1.29.0"


@dataclass
class NodeInfo:
    node_name: str                       # NODE_NAME: the Kubernetes node (or lab node) name
    pod_name: str = "meshnode"           # POD_NAME of the agent itself
    pod_namespace: str = "istio-system"  # POD_NAMESPACE of the agent
    instance_ip: str = "1.1.1.1"         # INSTANCE_IP; ztunnel's default when unknown
    cluster_id: str = DEFAULT_CLUSTER    # ISTIO_META_CLUSTER_ID
    service_account: str = "ztunnel"     # the agent's own SA (CA_TRUSTED_NODE_ACCOUNTS)
    version: str = "0.1.0"
    # Like ISTIO_META_*: extra string metadata, prefix already stripped.
    metadata: dict[str, str] = field(default_factory=dict)

    @property
    def id(self) -> str:
        ns = self.pod_namespace
        return f"{NODE_TYPE}~{self.instance_ip}~{self.pod_name}.{ns}~{ns}.svc.cluster.local"

    def to_proto(self) -> base_pb2.Node:
        node = base_pb2.Node(id=self.id, cluster=self.cluster_id, user_agent_name=USER_AGENT,
                             user_agent_version=self.version)
        md = dict(self.metadata)
        md.update(NAME=self.pod_name, NAMESPACE=self.pod_namespace,
                  INSTANCE_IPS=self.instance_ip, NODE_NAME=self.node_name,
                  CLUSTER_ID=self.cluster_id, SERVICE_ACCOUNT=self.service_account,
                  ISTIO_VERSION=md.get("ISTIO_VERSION", COMPAT_ISTIO_VERSION),
                  MESHNODE_VERSION=self.version)
        node.metadata.update(md)
        return node
