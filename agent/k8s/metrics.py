"""Metrics of the Kubernetes pod source (served on the agent's /metrics with the rest)."""

from __future__ import annotations

from prometheus_client import REGISTRY, Counter, Gauge

WATCH_EVENTS = Counter(
    "meshnode_k8s_watch_events", "Watch events received, by resource and type (BOOKMARK and "
    "ERROR included; MALFORMED = a line or object that was skipped)", ["resource", "type"],
    registry=REGISTRY)
RELISTS = Counter(
    "meshnode_k8s_relists", "Full lists, by resource and reason (start, expired = 410 Gone, "
    "error)", ["resource", "reason"], registry=REGISTRY)
WATCH_ERRORS = Counter(
    "meshnode_k8s_watch_errors", "Failed list/watch attempts (followed by a backoff)",
    ["resource"], registry=REGISTRY)
LABEL_ACTIONS = Counter(
    "meshnode_k8s_pod_actions", "Label-driven actions on pods: enrolled, released, "
    "enroll_failed, netns_not_found", ["action"], registry=REGISTRY)
TAINT_REMOVED = Gauge(
    "meshnode_k8s_not_ready_taint_removed", "1 once the agent removed (or found absent) the "
    "meshnode.io/not-ready taint on its node", registry=REGISTRY)
