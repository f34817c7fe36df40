"""The agent's Prometheus metrics (names follow istio-cni's where there is one)."""

from __future__ import annotations

from prometheus_client import REGISTRY, Counter, Gauge

# The default registry: the CNI install metrics (agent/install) live there too, and one
# /metrics endpoint serves both.

PLUGIN_REQUESTS = Counter(
    "meshnode_cni_plugin_requests", "CNI plugin requests by command and result",
    ["command", "result"], registry=REGISTRY)
ENROLLMENTS = Counter(
    "meshnode_enrollments", "Pods enrolled (redirection installed)", ["backend"],
    registry=REGISTRY)
RECONCILE_EVENTS = Counter(
    "meshnode_reconcile_events", "Reconcile events by type", ["type"], registry=REGISTRY)
DRIFT_REPAIRS = Counter(
    "meshnode_drift_repairs", "Pods whose drifted redirection was repaired", registry=REGISTRY)
BACKEND_FALLBACK = Counter(
    "meshnode_backend_fallback", "Start-ups where the eBPF backend could not load and "
    "capture.fallback was used instead", registry=REGISTRY)
PODS = Gauge("meshnode_pods", "Known pods by state", ["state"], registry=REGISTRY)
READY = Gauge("meshnode_agent_ready", "1 when the agent serves the plugin socket and the "
              "install is valid", registry=REGISTRY)
PROXIES = Gauge("meshnode_proxies_connected", "Node proxy connections (ZDS)", registry=REGISTRY)
DEADLINE_EXCEEDED = Counter(
    "meshnode_add_deadline_exceeded", "CNI ADDs past the plugin's deadline: refused before "
    "starting, or rolled back at the commit point", ["stage"], registry=REGISTRY)
