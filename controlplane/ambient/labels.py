"""What labels and annotations mean to the workload API, as istiod reads them.

Sources (istio/istio): pkg/kube/labels/labels.go (canonical service), pkg/kube/util.go
(workload name from the pod's controller), pilot/pkg/serviceregistry/ambient/workloads.go
(setTunnelProtocol), ambient/nodes.go (locality), ambient/networks.go (network), and
istio-cni's default `ambient.enablementSelectors` (manifests/charts/istio-cni/values.yaml,
cni/pkg/util/enablement_selector.go) for which pods are enrolled.
"""

from __future__ import annotations

import re
from typing import Any

from core.mesh.model import TunnelProtocol

# --- enrollment (istio-cni's default selectors; meshnode's own labels as agent/k8s) ---------
DATAPLANE_MODE = "istio.io/dataplane-mode"            # ambient | none
MESHNODE_MODE = "meshnode.io/dataplane-mode"          # enabled | disabled
# Written by the node agent once it captured the pod: "enabled" (or "pending" on failure).
REDIRECTION = ("ambient.istio.io/redirection", "meshnode.io/redirection")
SIDECAR_STATUS = "sidecar.istio.io/status"

TUNNEL_LABEL = "networking.istio.io/tunnel"           # comma list; "http" = native HBONE
NETWORK_LABEL = "topology.istio.io/network"
REGION_LABEL = "topology.kubernetes.io/region"
ZONE_LABEL = "topology.kubernetes.io/zone"
SUBZONE_LABEL = "topology.istio.io/subzone"
WORKLOAD_NAME_LABEL = "service.istio.io/workload-name"
AUTO_REGISTRATION_GROUP = "istio.io/autoRegistrationGroup"

_NAME_LABELS = ("service.istio.io/canonical-name", "app.kubernetes.io/name", "app")
_REVISION_LABELS = ("service.istio.io/canonical-revision", "app.kubernetes.io/version",
                    "version")
_CRONJOB = re.compile(r"(.+)-\d{8,10}$")


def _says(labels: dict[str, str]) -> bool | None:
    """True in, False out, None silent."""
    if labels.get(MESHNODE_MODE) == "disabled" or labels.get(DATAPLANE_MODE) == "none":
        return False
    if labels.get(MESHNODE_MODE) == "enabled" or labels.get(DATAPLANE_MODE) == "ambient":
        return True
    return None


def enrolled_by_labels(pod_labels: dict[str, str], pod_annotations: dict[str, str],
                       host_network: bool, ns_labels: dict[str, str]) -> bool:
    """istio-cni's default enablement: the pod labelled `istio.io/dataplane-mode=ambient`, or
    its namespace so labelled and the pod not labelled `none`; never a hostNetwork pod or one
    with an injected sidecar. meshnode's `meshnode.io/dataplane-mode=enabled|disabled`
    counts the same (agent/k8s/labels.py)."""
    if host_network or SIDECAR_STATUS in pod_annotations:
        return False
    on_pod = _says(pod_labels)
    if on_pod is not None:
        return on_pod
    return _says(ns_labels) is True


def tunnel(labels: dict[str, str], annotations: dict[str, str],
           enrolled: bool | None) -> tuple[int, bool]:
    """(tunnel_protocol, native_tunnel), as istiod's setTunnelProtocol: HBONE when the node
    agent's redirection annotation says `enabled`, or natively (native_tunnel) when the
    `networking.istio.io/tunnel` label lists `http`. `enrolled` (None: not asked) is the
    label decision used when no redirection annotation is present (Options.enroll_by_labels)."""
    proto = int(TunnelProtocol.NONE)
    marks = [annotations[a] for a in REDIRECTION if a in annotations]
    if "enabled" in marks or (not marks and enrolled):
        proto = int(TunnelProtocol.HBONE)
    native = "http" in labels.get(TUNNEL_LABEL, "").split(",")
    if native:
        proto = int(TunnelProtocol.HBONE)
    return proto, native


def _lookup(labels: dict[str, str], keys: tuple[str, ...]) -> str | None:
    for k in keys:
        if k in labels:
            return labels[k]
    return None


def canonical_service(labels: dict[str, str], workload_name: str) -> tuple[str, str]:
    """(canonical name, canonical revision): the first label present of
    canonical-name / app.kubernetes.io/name / app (else the workload name), and of
    canonical-revision / app.kubernetes.io/version / version (else "latest")."""
    name = _lookup(labels, _NAME_LABELS)
    rev = _lookup(labels, _REVISION_LABELS)
    return (workload_name if name is None else name), ("latest" if rev is None else rev)


def pod_workload_name(pod: dict[str, Any], name: str, labels: dict[str, str]) -> str:
    """The pod's controller, as istiod's GetWorkloadMetaFromPod: the workload-name label wins;
    a generated pod takes its controller's name (a ReplicaSet's pod-template-hash suffix and a
    CronJob's Job timestamp suffix removed; OpenShift's deploymentconfig label); else the pod
    name."""
    if WORKLOAD_NAME_LABEL in labels:
        return labels[WORKLOAD_NAME_LABEL]
    meta = pod.get("metadata") or {}
    if not meta.get("generateName"):
        return name
    owner = next((r for r in meta.get("ownerReferences") or []
                  if isinstance(r, dict) and r.get("controller") is True), None)
    if owner is None:
        return name
    kind, oname = str(owner.get("kind") or ""), str(owner.get("name") or "")
    for hash_label in ("pod-template-hash", "rollouts-pod-template-hash"):
        h = labels.get(hash_label, "")
        if kind == "ReplicaSet" and h and oname.endswith(h):
            return oname.removesuffix("-" + h) or name
    if kind == "ReplicationController" and labels.get("deploymentconfig"):
        return labels["deploymentconfig"]
    if kind == "Job" and (m := _CRONJOB.match(oname)):
        return m.group(1)
    return oname or name


def entry_workload_name(name: str, annotations: dict[str, str],
                        labels: dict[str, str]) -> str:
    """A WorkloadEntry's workload: its auto-registration group, the workload-name label, or
    its own name (istiod's WorkloadNameFromWorkloadEntry)."""
    if AUTO_REGISTRATION_GROUP in annotations:
        return annotations[AUTO_REGISTRATION_GROUP]
    return labels.get(WORKLOAD_NAME_LABEL, name)


def node_locality(node_labels: dict[str, str]) -> tuple[str, str, str]:
    return (node_labels.get(REGION_LABEL, ""), node_labels.get(ZONE_LABEL, ""),
            node_labels.get(SUBZONE_LABEL, ""))


def split_locality(text: str) -> tuple[str, str, str]:
    """A WorkloadEntry's `locality: region/zone/subzone` (istiod's SplitLocalityLabel)."""
    if not text:
        return ("", "", "")
    parts = text.split("/")
    parts += [""] * (3 - len(parts))
    return (parts[0], parts[1], parts[2])
