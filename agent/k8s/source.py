"""The Kubernetes pod source: pods of this node and all namespaces, enrolled by label.

Two informers fill the caches; their events put pod uids on a work queue; workers compare
what the labels want (`labels.decide`) with what the Enroller holds for that pod, and
enroll, release or annotate. Enrollment goes through the same `PodEnrollment.add/delete`
as a CNI request, in the same request form, so there is one enrollment path. For the CNI
path this source is also the `SelectionPolicy`: a new pod is captured at ADD only if its
labels say so.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from typing import Any

import structlog

from agent.k8s import labels, metrics
from agent.k8s import netns as netns_finder
from agent.k8s.api import ApiError, KubeApi
from agent.k8s.queue import WorkQueue
from agent.k8s.taint import remove_not_ready_taint
from agent.k8s.watch import Informer
from agent.nodeagent.enroll import PodEnrollment
from agent.nodeagent.pods import PodRecord, PodState
from core.backoff import Backoff

log = structlog.get_logger("k8s.source")

FindNetns = Callable[[list[str]], str | None]


def _meta(obj: dict[str, Any], key: str) -> str:
    value = (obj.get("metadata") or {}).get(key)
    return value if isinstance(value, str) else ""


class KubePodSource:
    def __init__(self, api: KubeApi, enroller: PodEnrollment, node: str, istio: bool,
                 ready: Callable[[], bool] = lambda: True, *, workers: int = 4,
                 watch_timeout_seconds: int = 300, retry_seconds: float = 1.0,
                 find_netns: FindNetns = netns_finder.find_by_ips) -> None:
        self.api, self.enroller, self.node, self.istio = api, enroller, node, istio
        self.ready = ready
        self.workers = workers
        self.retry_seconds = retry_seconds
        self.find_netns = find_netns
        self.pods = Informer("pods", lambda: api.list_pods(node),
                             lambda rv, t: api.watch_pods(node, rv, t), self._on_pod,
                             watch_timeout_seconds)
        self.namespaces = Informer("namespaces", api.list_namespaces, api.watch_namespaces,
                                   self._on_namespace, watch_timeout_seconds)
        self.queue = WorkQueue()
        # Read from the enroller's worker threads (`selects`), written on the loop: only
        # single-key get/set/pop on these, which are atomic under the GIL.
        self._by_name: dict[tuple[str, str], dict[str, Any]] = {}
        self._ns_labels: dict[str, dict[str, str]] = {}
        self._identity: dict[str, tuple[str, str]] = {}  # uid -> (namespace, name), kept
        # past DELETED until the pod's sync has run (records without a uid match by name)
        self._retries: dict[str, Backoff] = {}
        self._tasks: list[asyncio.Task[None]] = []
        self.taint_removed = asyncio.Event()

    # -- lifecycle ---------------------------------------------------------------------------

    async def start(self) -> None:
        self._tasks = [asyncio.create_task(self.pods.run(), name="k8s-pods"),
                       asyncio.create_task(self.namespaces.run(), name="k8s-namespaces"),
                       asyncio.create_task(self._run_workers(), name="k8s-workers"),
                       asyncio.create_task(self._untaint_when_ready(), name="k8s-taint")]

    async def stop(self) -> None:
        for t in self._tasks:
            t.cancel()
        for t in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await t
        self._tasks = []
        self.queue.close()

    def synced(self) -> bool:
        return self.pods.synced.is_set() and self.namespaces.synced.is_set()

    # -- SelectionPolicy (called by the Enroller on CNI ADD/CHECK, on a worker thread) -------

    def selects(self, namespace: str, name: str) -> bool | None:
        if not self.synced():
            return None
        pod = self._by_name.get((namespace, name))
        ns_labels = self._ns_labels.get(namespace)
        if pod is None or ns_labels is None:
            return None
        return labels.decide(pod, ns_labels, self.istio).capture and not labels.is_terminal(pod)

    # -- informer events (on the loop) --------------------------------------------------------

    def _on_pod(self, kind: str, pod: dict[str, Any], old: dict[str, Any] | None) -> None:
        key = (_meta(pod, "namespace"), _meta(pod, "name"))
        uid = _meta(pod, "uid")
        self._identity[uid] = key
        if kind == "DELETED":
            held = self._by_name.get(key)
            if held is not None and _meta(held, "uid") == uid:
                self._by_name.pop(key, None)
        else:
            self._by_name[key] = pod
        self.queue.add(uid)

    def _on_namespace(self, kind: str, ns: dict[str, Any], old: dict[str, Any] | None) -> None:
        name = _meta(ns, "name")
        new_labels = labels.labels_of(ns)
        if kind == "DELETED":
            self._ns_labels.pop(name, None)
        else:
            self._ns_labels[name] = new_labels
        if old is not None and kind != "DELETED" and labels.labels_of(old) == new_labels:
            return  # an annotation or status change: no pod's fate changed
        for uid, pod in list(self.pods.cache.items()):
            if _meta(pod, "namespace") == name:
                self.queue.add(uid)

    # -- workers ------------------------------------------------------------------------------

    async def _run_workers(self) -> None:
        # Decide nothing before both caches are full: a pod whose namespace label is not
        # known yet would look unlabelled and be released.
        await self.pods.synced.wait()
        await self.namespaces.synced.wait()
        log.info("k8s_synced", node=self.node, pods=len(self.pods.cache),
                 namespaces=len(self.namespaces.cache))
        # Pods the Enroller holds that the API no longer has on this node (deleted while
        # the agent was down): their sync finds no pod and releases them.
        for rec in self.enroller.store.all():
            if rec.uid and rec.uid not in self.pods.cache:
                self.queue.add(rec.uid)
        workers = [asyncio.create_task(self._worker()) for _ in range(self.workers)]
        try:
            await asyncio.gather(*workers)
        finally:
            for w in workers:
                w.cancel()

    async def _worker(self) -> None:
        while True:
            uid = await self.queue.get()
            try:
                done = await self.sync(uid)
            except Exception:
                log.exception("k8s_sync_failed", uid=uid)
                done = False
            finally:
                self.queue.done(uid)
            if done:
                self._retries.pop(uid, None)
            else:
                backoff = self._retries.get(uid)
                if backoff is None:  # at most 32 times the first delay, and 30 s
                    backoff = self._retries[uid] = Backoff(
                        self.retry_seconds, min(30.0, self.retry_seconds * 2 ** 5), jitter=False)
                self.queue.add_after(uid, backoff.next())

    def _records(self, uid: str) -> list[PodRecord]:
        """The Enroller's records of this pod: by uid, or by namespace/name for a CNI record
        without one (a runtime that does not pass K8S_POD_UID)."""
        ns_name = self._identity.get(uid)
        return [r for r in self.enroller.store.all()
                if r.uid == uid or (not r.uid and ns_name == (r.namespace, r.name))]

    async def _blocking(self, fn: Callable[..., Any], *args: Any) -> Any:
        # Enrollment and netns discovery enter namespaces: worker threads, as for the CNI.
        return await asyncio.get_running_loop().run_in_executor(None, fn, *args)

    async def sync(self, uid: str) -> bool:
        """Make the pod's enrollment match its labels. False: try again later."""
        pod = self.pods.cache.get(uid)
        records = self._records(uid)
        if pod is None:
            for rec in records:
                await self._release(rec, "pod deleted")
            self._identity.pop(uid, None)
            return True
        namespace, name = _meta(pod, "namespace"), _meta(pod, "name")
        ns_labels = self._ns_labels.get(namespace)
        if ns_labels is None:
            return False  # its namespace is not in the cache yet
        decision = labels.decide(pod, ns_labels, self.istio)
        if labels.is_terminal(pod):
            decision = labels.Decision(False, "pod finished")
        if not decision.capture:
            for rec in records:
                await self._release(rec, decision.reason)
            return await self._annotate(pod, None)
        if records:
            # Enrolled already (by the CNI at ADD, or by us earlier).
            state = "enabled" if all(r.state is not PodState.PENDING for r in records) \
                else "pending"
            return await self._annotate(pod, state) and state == "enabled"
        ips = labels.pod_ips(pod)
        if not ips:
            return True  # no sandbox yet: the CNI ADD, or the event that brings its IP, will
        where = await self._blocking(self.find_netns, ips)
        if where is None:
            metrics.LABEL_ACTIONS.labels("netns_not_found").inc()
            log.warning("k8s_netns_not_found", pod=f"{namespace}/{name}", ips=ips)
            await self._annotate(pod, "pending")
            return False
        req = {"container_id": f"k8s-{uid}", "netns": where, "ifname": "", "ips": ips,
               "pod": {"namespace": namespace, "name": name, "uid": uid}}
        reply = await self._blocking(self.enroller.add, req)
        if reply.ok and reply.captured:
            metrics.LABEL_ACTIONS.labels("enrolled").inc()
            log.info("k8s_pod_enrolled", pod=f"{namespace}/{name}", netns=where,
                     reason=decision.reason)
            return await self._annotate(pod, "enabled")
        if reply.ok:  # the config's `selection` excludes it: not ours to capture
            log.info("k8s_pod_not_selected", pod=f"{namespace}/{name}", detail=reply.detail)
            return await self._annotate(pod, None)
        metrics.LABEL_ACTIONS.labels("enroll_failed").inc()
        log.warning("k8s_enroll_failed", pod=f"{namespace}/{name}", detail=reply.detail)
        await self._annotate(pod, "pending")
        return False

    async def _release(self, rec: PodRecord, why: str) -> None:
        await self._blocking(self.enroller.delete, rec.container_id)
        metrics.LABEL_ACTIONS.labels("released").inc()
        log.info("k8s_pod_released", pod=f"{rec.namespace}/{rec.name}",
                 container=rec.container_id, reason=why)

    async def _annotate(self, pod: dict[str, Any], value: str | None) -> bool:
        """Set (or with None remove) `meshnode.io/redirection`; no call if it already is.
        False if the patch failed (the caller retries)."""
        current = ((pod.get("metadata") or {}).get("annotations") or {}).get(labels.ANNOTATION)
        if current == value:
            return True
        try:
            await self.api.patch_pod_annotations(_meta(pod, "namespace"), _meta(pod, "name"),
                                                 {labels.ANNOTATION: value})
        except ApiError as exc:
            if exc.status == 404:
                return True  # the pod is gone; its DELETED event follows
            log.warning("k8s_annotate_failed", pod=f"{_meta(pod, 'namespace')}/"
                        f"{_meta(pod, 'name')}", error=str(exc))
            return False
        return True

    # -- the node taint -----------------------------------------------------------------------

    async def _untaint_when_ready(self) -> None:
        backoff = Backoff(initial=0.5, cap=30.0)
        while not (self.ready() and self.synced()):
            await asyncio.sleep(0.2)
        while True:
            try:
                if await remove_not_ready_taint(self.api, self.node):
                    metrics.TAINT_REMOVED.set(1)
                    self.taint_removed.set()
                    return
            except ApiError as exc:
                log.warning("k8s_taint_removal_failed", node=self.node, error=str(exc))
            await asyncio.sleep(backoff.next())
