"""The proxy's Prometheus metrics, with Istio's TCP metric names and labels, so existing
dashboards work unchanged."""

from __future__ import annotations

from prometheus_client import Counter, Gauge

_LABELS = ["reporter", "source_workload", "source_workload_namespace",
           "destination_workload", "destination_workload_namespace", "direction"]

OPENED = Counter("istio_tcp_connections_opened", "TCP connections opened", _LABELS)
CLOSED = Counter("istio_tcp_connections_closed", "TCP connections closed", _LABELS)
SENT = Counter("istio_tcp_sent_bytes", "Bytes sent to the destination", _LABELS)
RECEIVED = Counter("istio_tcp_received_bytes", "Bytes received from the destination", _LABELS)
ACTIVE_PODS = Gauge("workload_manager_active_proxy_count", "Pods the proxy serves")
PODS_STARTED = Counter("workload_manager_proxies_started", "Pod proxies started")
PODS_STOPPED = Counter("workload_manager_proxies_stopped", "Pod proxies stopped")
CONNECTIONS = Gauge("meshnode_proxy_active_connections", "Connections being relayed")
# Issue 12: what the loop guard and the limits refused, and what the error-log budget dropped.
# `reason`: loop (the destination is one of the proxy's own listeners), pod_limit /
# global_limit (connections), pod_pending_limit / global_pending_limit (upstream dials).
REFUSED = Counter("meshnode_proxy_connections_refused",
                  "Connections refused before any upstream dial (loop guard, limits)",
                  ["direction", "reason"])
PENDING_CONNECTS = Gauge("meshnode_proxy_pending_connects", "Upstream dials not yet answered")
LOG_SUPPRESSED = Counter("meshnode_proxy_log_suppressed",
                         "Error log lines dropped by the per-pod rate limit", ["event"])
