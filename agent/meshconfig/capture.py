"""Capture decisions that use the discovery state (kept modest on purpose).

The agent captures pods by namespace selection; the control plane knows which pods are mesh
workloads. A captured pod the control plane does not know gets plain passthrough from the
proxy (no identity, no mTLS), which is usually a mistake in the mesh file or a pod that is
not yet pushed, so it is logged and counted rather than refused.
"""

from __future__ import annotations

import asyncio

import structlog
from prometheus_client import REGISTRY, Counter

from agent.nodeagent.handoff import ProxyHandoff
from agent.nodeagent.pods import PodRecord
from agent.xds.state import XdsState
from agent.zds.server import ZdsServer

log = structlog.get_logger("meshconfig")

UNKNOWN_PODS = Counter("meshnode_captured_pods_not_in_mesh",
                       "Captured pods whose IPs the control plane does not list as a workload",
                       registry=REGISTRY)


def known(state: XdsState, ips: list[str]) -> bool:
    # CNI gives "ip/prefix" or a bare ip; dict lookups are atomic, so this is safe to read
    # from the enrollment worker threads while the loop applies updates.
    return any(state.workload_by_ip(ip.split("/")[0]) is not None for ip in ips)


class MeshAwareHandoff(ProxyHandoff):
    def __init__(self, server: ZdsServer, loop: asyncio.AbstractEventLoop, timeout: float,
                 state: XdsState) -> None:
        super().__init__(server, loop, timeout)
        self.state = state

    def add(self, rec: PodRecord, budget: float | None = None) -> None:
        super().add(rec, budget)
        if not known(self.state, rec.ips):
            UNKNOWN_PODS.inc()
            log.warning("captured_pod_not_in_mesh", pod=f"{rec.namespace}/{rec.name}",
                        ips=rec.ips, hint="the proxy passes its traffic through in plain TCP")
