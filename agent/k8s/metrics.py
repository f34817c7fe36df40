"""Metrics of the Kubernetes pod source (served on the agent's /metrics with the rest). The
watch metrics are core/k8s/metrics.py's (the control plane's reflectors count there too)."""

from __future__ import annotations

from prometheus_client import REGISTRY, Counter, Gauge

from core.k8s.metrics import RELISTS, WATCH_ERRORS, WATCH_EVENTS

LABEL_ACTIONS = Counter(
    "meshnode_k8s_pod_actions", "Label-driven actions on pods: enrolled, released, "
    "enroll_failed, netns_not_found", ["action"], registry=REGISTRY)
TAINT_REMOVED = Gauge(
    "meshnode_k8s_not_ready_taint_removed", "1 once the agent removed (or found absent) the "
    "meshnode.io/not-ready taint on its node", registry=REGISTRY)

__all__ = ["LABEL_ACTIONS", "RELISTS", "TAINT_REMOVED", "WATCH_ERRORS", "WATCH_EVENTS"]
