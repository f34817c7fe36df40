"""What the conversion needs to know about the mesh that no object says (istiod's mesh config,
flags and features, with istiod's defaults)."""

from __future__ import annotations

from dataclasses import dataclass

from core.mesh.model import DEFAULT_CLUSTER, DEFAULT_TRUST_DOMAIN
from core.mesh.traffic import OutboundMode


@dataclass(frozen=True, slots=True)
class Options:
    # istiod's --clusterID (default "Kubernetes"): the first part of every workload uid.
    cluster_id: str = DEFAULT_CLUSTER
    # meshConfig.rootNamespace: its AuthorizationPolicies without a selector are GLOBAL, its
    # PeerAuthentications without a selector are mesh-wide.
    root_namespace: str = "istio-system"
    # istiod's own namespace: its `topology.istio.io/network` label names the local network.
    system_namespace: str = "istio-system"
    # Kubernetes' cluster domain: Service hostnames are <name>.<ns>.svc.<domain_suffix>.
    domain_suffix: str = "cluster.local"
    # meshConfig.trustDomain; istiod leaves Workload.trust_domain empty for the default.
    trust_domain: str = DEFAULT_TRUST_DOMAIN
    # istiod marks a pod HBONE only from the annotation the CNI node agent writes once the pod
    # is captured. With this on (the default here), a pod with no such annotation is HBONE
    # when its labels enroll it (istio-cni's default enablement selectors), so a manifests
    # source with no node agent to annotate still gets the tunnel. See labels.py.
    enroll_by_labels: bool = True
    # istiod's AMBIENT_ENABLE_DRY_RUN_AUTHORIZATION_POLICY (off there by default): convert
    # `istio.io/dry-run: "true"` AuthorizationPolicies with dry_run set instead of dropping
    # them. The node proxy evaluates dry-run policies without enforcing them, so it is on.
    dry_run_policies: bool = True
    # PILOT_ENABLE_SERVICEENTRY_SELECT_PODS / PILOT_ENABLE_K8S_SELECT_WORKLOAD_ENTRIES (both on
    # by default in istiod).
    service_entry_selects_pods: bool = True
    service_selects_workload_entries: bool = True
    # meshConfig.outboundTrafficPolicy.mode (ALLOW_ANY unless set; `meshnode controlplane
    # --outbound-traffic-policy`): what a Sidecar that says nothing, or no Sidecar, does
    # with destinations outside the registry. A root-namespace Sidecar's mode wins.
    outbound_traffic_policy: OutboundMode = OutboundMode.ALLOW_ANY
