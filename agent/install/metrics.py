"""Prometheus metrics of the CNI install (registered on prometheus-client's default registry)."""

from __future__ import annotations

from prometheus_client import REGISTRY, Counter, Gauge

REPAIRS = Counter(
    "meshnode_cni_install_repairs",
    "Times the CNI plugin binary or conflist entry was found broken and put back, by reason.",
    ["reason"],
)
THROTTLED = Counter(
    "meshnode_cni_install_throttled",
    "Repairs delayed by the fighting-loop throttle (another CNI keeps rewriting the config).",
)
READY = Gauge(
    "meshnode_cni_install_ready",
    "1 when the plugin binary is in place and our entry is chained in the primary conflist.",
)


def repairs_total(reason: str) -> float:
    """Current value of the repair counter for `reason` (for status and tests)."""
    value = REGISTRY.get_sample_value("meshnode_cni_install_repairs_total", {"reason": reason})
    return 0.0 if value is None else value


def throttled_total() -> float:
    value = REGISTRY.get_sample_value("meshnode_cni_install_throttled_total")
    return 0.0 if value is None else value


def ready_value() -> float:
    value = REGISTRY.get_sample_value("meshnode_cni_install_ready")
    return 0.0 if value is None else value
