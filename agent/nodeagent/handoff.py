"""Hand enrolled pods to the node proxy over ZDS, from the enrollment worker threads.

Enrollment runs on worker threads; the ZDS server lives on the agent's event loop. This
bridges the two, with a deadline, so a pod is `enrolled` only once the proxy has acked it.
"""

from __future__ import annotations

import asyncio
import concurrent.futures

import structlog

from agent.nodeagent.pods import PodRecord, PodState, PodStore
from agent.zds.server import Workload, ZdsError, ZdsServer

log = structlog.get_logger("handoff")


def workload_of(rec: PodRecord) -> Workload:
    # Pods without Kubernetes identity (plain runtimes) are keyed by their container id.
    return Workload(uid=rec.uid or rec.container_id, name=rec.name or rec.container_id,
                    namespace=rec.namespace, service_account="default", netns=rec.netns)


class ProxyHandoff:
    def __init__(self, server: ZdsServer, loop: asyncio.AbstractEventLoop,
                 timeout: float) -> None:
        self.server = server
        self.loop = loop
        self.timeout = timeout

    def ready(self) -> bool:
        """A proxy takes new pods now (read on the loop: CNI STATUS)."""
        return self.server.connected

    def add(self, rec: PodRecord, budget: float | None = None) -> None:
        """Block until a proxy acked the pod; raise ZdsError otherwise. `budget` (seconds)
        bounds the whole hand-off, fallbacks to older proxies included."""
        fut = asyncio.run_coroutine_threadsafe(
            self.server.add(workload_of(rec), budget), self.loop)
        # The coroutine keeps its own budget; this bound only guards against a stuck loop.
        wait = self.timeout if budget is None else min(self.timeout, budget) + 1.0
        try:
            fut.result(wait)
        except concurrent.futures.TimeoutError:
            fut.cancel()
            raise ZdsError(f"no ack from the node proxy within {wait:.1f}s") from None

    def delete(self, rec: PodRecord) -> None:
        """Tell every connected proxy; best effort (a proxy that missed it drains the pod at
        its next snapshot)."""
        fut = asyncio.run_coroutine_threadsafe(
            self.server.delete(workload_of(rec).uid), self.loop)
        try:
            fut.result(self.timeout)
        except Exception as exc:
            log.warning("proxy_delete_failed", container=rec.container_id, error=str(exc))


def snapshot_of(store: PodStore) -> list[Workload]:
    """Every pod whose rules are in place: a new proxy must serve all of them."""
    return [workload_of(r) for r in store.all()
            if r.state in (PodState.REDIRECTED, PodState.ENROLLED)]
