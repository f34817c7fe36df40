"""Metrics of the list/watch machinery (core/k8s/reflector.py), by resource: served on the
/metrics of whichever process runs reflectors (the agent, the control plane)."""

from __future__ import annotations

from prometheus_client import REGISTRY, Counter

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
