"""Why the proxy refuses a connection: one short reason per cause, fit for a metric label
and the access log, and the exception that carries it with a sentence for people."""

from __future__ import annotations

from enum import StrEnum


class Reason(StrEnum):
    # connectionPool.tcp.maxConnections reached for the cluster (Envoy: upstream overflow).
    OVERFLOW = "overflow"
    # No endpoint to pick: none usable, all ejected (no panic), an empty subset, or strict
    # locality with no match (Envoy: no healthy upstream).
    NO_HEALTHY_ENDPOINT = "no_healthy_endpoint"
    # Every connect attempt failed (refused, unreachable) before the connect timeout.
    CONNECT_FAILED = "connect_failed"
    # The connect timeout ran out before an attempt succeeded.
    CONNECT_TIMEOUT = "connect_timeout"
    # outboundTrafficPolicy REGISTRY_ONLY and the destination is not an imported service.
    REGISTRY_ONLY = "registry_only"
    # A route sends to a host the registry does not have (Istio: "will be dropped").
    UNKNOWN_DESTINATION = "unknown_destination"


class Refused(Exception):
    """A connection the proxy will not make: `reason` for metrics, `detail` for logs."""

    def __init__(self, reason: Reason, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail
