"""On SIGTERM: is this an upgrade (keep the CNI plugin) or an uninstall (remove it)?

The plugin and its conflist entry stay in place across an agent restart, so that new pods
wait for the next agent instead of starting uncaptured. After `helm uninstall` no agent
comes back, and a plugin left behind fails every new pod's CNI ADD. The agent tells the two
apart as istio-cni does: it asks for its own DaemonSet. Gone (404) or carrying a
deletionTimestamp: uninstall. Present: a rolling upgrade or a restart.

The API may refuse us once the release is being deleted (Helm deletes the RBAC and the
ServiceAccount right after the DaemonSet), so a 401/403 counts as "uninstall" too. Every
"uninstall" verdict needs the same request to have worked at start-up: a wrong DaemonSet
name or a cluster that never granted `get daemonsets` keeps today's behaviour instead of
uninstalling on every upgrade. No Kubernetes at all (no DaemonSet name
in the environment, no API), or an API that cannot be reached: keep, and say why.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import structlog

from agent.k8s.api import ApiError, KubeApi

log = structlog.get_logger("owner")

DAEMONSET_ENV = "MESHNODE_DAEMONSET"  # set in the DaemonSet's pod template
NAMESPACE_ENV = "POD_NAMESPACE"       # the downward API


@dataclass(frozen=True)
class Verdict:
    uninstall: bool
    reason: str


class OwnerCheck:
    def __init__(self, api: KubeApi | None, namespace: str, name: str,
                 unavailable: str = "") -> None:
        self.api = api
        self.namespace = namespace
        self.name = name
        self.unavailable = unavailable  # why there is no API client
        self.readable_at_start = False

    @classmethod
    async def connect(cls, kubeconfig: str) -> OwnerCheck:
        name, namespace = os.environ.get(DAEMONSET_ENV, ""), os.environ.get(NAMESPACE_ENV, "")
        if not name or not namespace:
            return cls(None, namespace, name, f"not run by a DaemonSet ({DAEMONSET_ENV} or "
                                              f"{NAMESPACE_ENV} unset)")
        try:
            api = await KubeApi.connect(kubeconfig)
        except Exception as exc:  # the client's config errors have no common base
            return cls(None, namespace, name, f"no Kubernetes API: {exc}")
        return cls(api, namespace, name)

    async def probe(self) -> None:
        """At start-up: can we read our DaemonSet at all (RBAC granted, API reachable)?"""
        if self.api is None:
            log.info("uninstall_detection_off", reason=self.unavailable)
            return
        try:
            self.readable_at_start = await self.api.get_daemonset(self.namespace,
                                                                  self.name) is not None
        except ApiError as exc:
            log.warning("uninstall_detection_off", daemonset=f"{self.namespace}/{self.name}",
                        reason=str(exc)[:200])
            return
        if not self.readable_at_start:
            log.warning("uninstall_detection_off", daemonset=f"{self.namespace}/{self.name}",
                        reason="daemonset not found at start-up")

    async def verdict(self) -> Verdict:
        if self.api is None:
            return Verdict(False, self.unavailable)
        where = f"daemonset {self.namespace}/{self.name}"
        if not self.readable_at_start:
            # A wrong name or missing RBAC would otherwise look like "gone" on every restart.
            return Verdict(False, f"{where} was not readable at start-up")
        try:
            ds = await self.api.get_daemonset(self.namespace, self.name)
        except ApiError as exc:
            if exc.status in (401, 403):
                return Verdict(True, f"{where}: access withdrawn since start-up (HTTP "
                                     f"{exc.status}): the release is being deleted")
            return Verdict(False, f"{where}: cannot tell: {str(exc)[:200]}")
        if ds is None:
            return Verdict(True, f"{where} is gone")
        if (ds.get("metadata") or {}).get("deletionTimestamp"):
            return Verdict(True, f"{where} is being deleted")
        return Verdict(False, f"{where} still exists: upgrade or restart")

    async def close(self) -> None:
        if self.api is not None:
            await self.api.close()
