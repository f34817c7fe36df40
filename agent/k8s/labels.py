"""Which pods the labels put in the mesh. Pure functions of the pod and its namespace.

- `meshnode.io/dataplane-mode=enabled` on the pod or its namespace enrolls the pod;
- `meshnode.io/dataplane-mode=disabled` on the pod opts it out, whatever its namespace says;
- in the istio profile, `istio.io/dataplane-mode=ambient` counts as enabled and
  `istio.io/dataplane-mode=none` on the pod as an opt-out (Istio ambient's own labels, so a
  namespace labelled for ambient is captured by meshnode without relabelling);
- a hostNetwork pod is never enrolled: its "netns" is the node's.
A pod's own label wins over its namespace's; an opt-out wins over an opt-in on the pod.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

LABEL = "meshnode.io/dataplane-mode"
ISTIO_LABEL = "istio.io/dataplane-mode"
ANNOTATION = "meshnode.io/redirection"


@dataclass(frozen=True)
class Decision:
    capture: bool
    reason: str


def labels_of(obj: dict[str, Any]) -> dict[str, str]:
    labels = (obj.get("metadata") or {}).get("labels") or {}
    if not isinstance(labels, dict):
        return {}
    return {str(k): str(v) for k, v in labels.items()}


def _says(labels: dict[str, str], istio: bool) -> bool | None:
    """True (in), False (out), None (silent)."""
    mine = labels.get(LABEL)
    if mine == "disabled":
        return False
    theirs = labels.get(ISTIO_LABEL) if istio else None
    if theirs == "none":
        return False
    if mine == "enabled" or theirs == "ambient":
        return True
    return None


def decide(pod: dict[str, Any], namespace_labels: dict[str, str], istio: bool) -> Decision:
    spec = pod.get("spec") or {}
    if isinstance(spec, dict) and spec.get("hostNetwork") is True:
        return Decision(False, "hostNetwork pod")
    on_pod = _says(labels_of(pod), istio)
    if on_pod is False:
        return Decision(False, "pod opted out by label")
    if on_pod is True:
        return Decision(True, "pod label")
    # An opt-out on the namespace simply means "not enabled here"; only a pod opts out of an
    # enabled namespace.
    if _says(namespace_labels, istio) is True:
        return Decision(True, "namespace label")
    return Decision(False, "no dataplane-mode label on the pod or its namespace")


def pod_ips(pod: dict[str, Any]) -> list[str]:
    status = pod.get("status") or {}
    if not isinstance(status, dict):
        return []
    ips = [str(p.get("ip")) for p in status.get("podIPs") or []
           if isinstance(p, dict) and p.get("ip")]
    if not ips and status.get("podIP"):
        ips = [str(status["podIP"])]
    return ips


def is_terminal(pod: dict[str, Any]) -> bool:
    status = pod.get("status") or {}
    return isinstance(status, dict) and status.get("phase") in ("Succeeded", "Failed")
