"""Enrollment: what the agent does for each plugin request, and its repair loops.

Everything here blocks (it enters netns and runs netfilter tools), so the asyncio side calls
it on worker threads. Operations on one container are serialised by a per-container lock.

The Enroller is given what touches the kernel or the proxy (agent/nodeagent/deps.py): the
backend, the redirect engine, the netns lookups, the hand-off; the agent passes the real
ones, tests/unit/test_enroller.py fakes. Requests arrive typed (agent/nodeagent/request.py)
and refusals are typed errors with their CNI code (agent/nodeagent/errors.py), answered
as a Reply.
"""

from __future__ import annotations

import threading
from collections import defaultdict
from collections.abc import Iterable, Mapping
from typing import Any, Protocol

import structlog

from agent.config import AgentConfig
from agent.nodeagent import ipfamily, metrics
from agent.nodeagent.backend import make_capture_backend
from agent.nodeagent.deadline import Deadline
from agent.nodeagent.deps import Handoff, HostNetns, NetnsLookup, RedirectEngine
from agent.nodeagent.errors import (
    CniError,
    InvalidConfig,
    InvalidEnvironment,
    Reply,
    TryAgain,
    fail,
)
from agent.nodeagent.pods import PodRecord, PodState, PodStore
from agent.nodeagent.request import Attachment, CniRequest, Command
from agent.redirect import backend as engine
from agent.redirect.errors import RedirectError
from agent.redirect.spec import RedirectSpec, SpecError, with_overrides
from agent.zds.server import ZdsError

log = structlog.get_logger("enroll")

__all__ = ["Enroller", "PodEnrollment", "PodWatch", "Reply", "SelectionPolicy", "fail"]


class PodEnrollment(Protocol):
    """What every pod source drives, in the plugin's request form (docs/cni-protocol.md):
    the CNI server (runtime-driven) and the Kubernetes watch (label-driven, agent/k8s).
    One implementation, `Enroller`, so both sources share every rule about enrollment."""

    store: PodStore

    def add(self, req: Mapping[str, Any]) -> Reply: ...

    def delete(self, cid: str) -> Reply: ...


class PodWatch(Protocol):
    """Told which pods to watch for drift (agent/nodeagent/driftwatch.py)."""

    def watch(self, cid: str, netns: str) -> bool: ...

    def unwatch(self, cid: str) -> None: ...


class SelectionPolicy(Protocol):
    """A second say on which pods are captured, beyond `selection` in the config (which
    stays an outer filter): the Kubernetes labels. None = cannot tell yet."""

    def selects(self, namespace: str, name: str) -> bool | None: ...


class Enroller:
    """`backend`: the capture backend, prepared (default: the config's, made and prepared
    here); `redirect`: applies a backend's rules in a netns (default: the redirect engine);
    `netns`: finds and vets netns (default: this host's); `handoff`: the node proxy (set by
    the agent once its ZDS server runs; None: rules only)."""

    def __init__(self, cfg: AgentConfig, store: PodStore, handoff: Handoff | None = None, *,
                 backend: engine.RuleBackend | None = None,
                 redirect: RedirectEngine = engine,
                 netns: NetnsLookup | None = None) -> None:
        self.cfg = cfg
        self.store = store
        self.handoff = handoff
        self.policy: SelectionPolicy | None = None  # set by the Kubernetes pod source
        self.watch: PodWatch | None = None  # the drift watch (driftwatch.py), set by server.py
        self.impl = backend if backend is not None else make_capture_backend(cfg)
        self.redirect = redirect
        self.netns = netns if netns is not None else HostNetns()
        self._locks: defaultdict[str, threading.Lock] = defaultdict(threading.Lock)
        self._locks_guard = threading.Lock()
        for state in PodState:  # counted when scraped, not on every change
            metrics.PODS.labels(state.value).set_function(
                lambda s=state: self.store.count(s))  # type: ignore[misc]

    def _lock(self, cid: str) -> threading.Lock:
        with self._locks_guard:
            return self._locks[cid]

    def spec_for(self, capture: Mapping[str, Any]) -> RedirectSpec:
        """The config's spec with a pod's capture overrides (SpecError, TypeError if bad)."""
        return with_overrides(self.cfg.capture.spec(), capture)

    # -- plugin commands ------------------------------------------------------------------

    def add(self, req: CniRequest | Mapping[str, Any],
            deadline: Deadline | None = None) -> Reply:
        """Enroll a pod. With a `deadline` (the plugin's), an ADD that cannot commit in
        time is refused, or rolled back whole, so the runtime is never told "failed" about
        a pod that stays captured. Without one (the Kubernetes source), it takes its time.
        A request in its wire form (the Kubernetes source's) is parsed first."""
        try:
            if not isinstance(req, CniRequest):
                req = CniRequest.parse(req, Command.ADD)
            return self._add(req, deadline)
        except CniError as err:
            return Reply.failed(err)

    def _add(self, req: CniRequest, deadline: Deadline | None) -> Reply:
        namespace, name = req.pod.namespace, req.pod.name
        cid, netns = req.container_id, req.netns
        if not cid or not netns:
            raise InvalidConfig("ADD needs container_id and netns")
        if not self.cfg.selection.captures(namespace):
            return Reply(ok=True, captured=False, detail=f"namespace {namespace!r} not selected")
        verdict = self.policy.selects(namespace, name) if self.policy is not None else True
        if verdict is None:
            # Fail closed: the runtime retries, and by then the watch has seen the pod.
            raise TryAgain(f"pod {namespace}/{name} not yet seen by the Kubernetes watch")
        if not verdict:
            return Reply(ok=True, captured=False, detail=f"pod {namespace}/{name} not selected "
                         "by its dataplane-mode labels")
        # `ipv6: auto` becomes true/false here, from the pod's addresses, and is recorded.
        capture = ipfamily.resolve(dict(req.capture), self.cfg.capture.ipv6, list(req.ips),
                                   netns, self.netns.has_ipv6)
        try:
            spec = self.spec_for(capture)
        except (SpecError, TypeError) as exc:
            raise InvalidConfig(f"invalid capture options: {exc}") from None
        inode = self.netns.inode_of(netns)
        if inode is None:
            raise TryAgain(f"netns {netns} does not exist")
        if whose := self.netns.forbidden(netns):
            log.warning("enroll_refused", pod=f"{namespace}/{name}", container=cid,
                        netns=netns, reason=f"{whose} network namespace")
            raise InvalidEnvironment(f"netns {netns} is {whose} network namespace: refusing "
                                     "to capture the node's own traffic")
        with self._lock(cid):
            if deadline is not None and deadline.passed():
                # Waiting for the lock or a worker thread used the plugin's whole budget.
                metrics.DEADLINE_EXCEEDED.labels("before_start").inc()
                raise TryAgain(f"the plugin's deadline ({deadline.budget_ms:.0f} ms) passed "
                               "before the agent could start; nothing was changed")
            rec = PodRecord(container_id=cid, netns=netns, netns_inode=inode,
                            ifname=req.ifname, ips=list(req.ips), name=name,
                            namespace=namespace, uid=req.pod.uid, backend=self.impl.name,
                            capture=capture)
            self.store.put(rec)  # pending: a crash from here on is finished by reconcile
            try:
                self.redirect.apply(netns, spec, self.impl)
            except RedirectError as exc:
                self.store.drop(cid)
                log.warning("enroll_failed", pod=f"{namespace}/{name}", container=cid,
                            error=str(exc))
                raise TryAgain(f"redirection failed: {exc}") from None
            rec.state = PodState.REDIRECTED
            rec.detail = ""
            self.store.put(rec)
            if self.handoff is not None:
                try:
                    self.handoff.add(rec, None if deadline is None else deadline.remaining())
                except ZdsError as exc:
                    # Captured but unserved would blackhole the pod: take the rules back
                    # out and fail the ADD, so the runtime retries. The proxy may have
                    # half-taken it (an ack that came too late): it is told to let go.
                    self.handoff.delete(rec)
                    self._undo_rules(rec, spec)
                    self.store.drop(cid)
                    log.warning("enroll_failed", pod=f"{namespace}/{name}", container=cid,
                                error=f"node proxy: {exc}")
                    raise TryAgain(f"the node proxy did not take the pod: {exc}") from None
            # The commit point: past it the plugin has given up, and the runtime believes the
            # ADD failed. Undo everything (proxy, rules, record) rather than leave the pod
            # captured behind the runtime's back.
            if deadline is not None and deadline.passed():
                self._roll_back(rec, spec)
                metrics.DEADLINE_EXCEEDED.labels("rolled_back").inc()
                log.warning("enroll_rolled_back", pod=f"{namespace}/{name}", container=cid,
                            reason="plugin deadline passed", budget_ms=deadline.budget_ms)
                raise TryAgain(f"the plugin's deadline ({deadline.budget_ms:.0f} ms) passed "
                               "before the pod was enrolled; rolled back")
            if self.handoff is not None:
                rec.state = PodState.ENROLLED
                self.store.put(rec)
            if self.watch is not None:
                self.watch.watch(cid, netns)
        metrics.ENROLLMENTS.labels(self.impl.name).inc()
        log.info("pod_enrolled", pod=f"{namespace}/{name}", container=cid, netns=netns,
                 backend=self.impl.name, state=rec.state.value)
        return Reply(ok=True, captured=True, detail=rec.state.value)

    def delete(self, cid: str) -> Reply:
        with self._lock(cid):
            rec = self.store.get(cid)
            if rec is None:
                return Reply(ok=True, detail="unknown container")
            self._release(rec)
        return Reply(ok=True, detail="released")

    def _roll_back(self, rec: PodRecord, spec: RedirectSpec) -> None:
        """Undo a whole ADD, in _release's order: the proxy lets go before the rules do."""
        if self.handoff is not None:
            self.handoff.delete(rec)
        self._undo_rules(rec, spec)
        self.store.drop(rec.container_id)

    def _unwatch(self, cid: str) -> None:
        if self.watch is not None:
            self.watch.unwatch(cid)

    def _undo_rules(self, rec: PodRecord, spec: RedirectSpec) -> None:
        try:
            self.redirect.remove(rec.netns, spec, self.impl)
        except RedirectError as exc:
            log.error("undo_failed", container=rec.container_id, error=str(exc))

    def _release(self, rec: PodRecord) -> None:
        """Tell the proxies, then remove our rules if the netns still exists (a deleted
        netns took them along). istio-cni's order: the proxy lets go before the rules do."""
        if self.handoff is not None:
            self.handoff.delete(rec)
        if self.netns.inode_of(rec.netns) == rec.netns_inode:
            try:
                self.redirect.remove(rec.netns, self.spec_for(rec.capture), self.impl)
            except (RedirectError, SpecError) as exc:
                log.warning("release_failed", container=rec.container_id, error=str(exc))
        self.store.drop(rec.container_id)
        self._unwatch(rec.container_id)
        log.info("pod_released", pod=f"{rec.namespace}/{rec.name}", container=rec.container_id)

    def check(self, req: CniRequest | Mapping[str, Any]) -> Reply:
        try:
            if not isinstance(req, CniRequest):
                req = CniRequest.parse(req, Command.CHECK)
            return self._check(req)
        except CniError as err:
            return Reply.failed(err)

    def _check(self, req: CniRequest) -> Reply:
        cid, namespace, name = req.container_id, req.pod.namespace, req.pod.name
        rec = self.store.get(cid)
        if rec is None:
            if self.cfg.selection.captures(namespace) and (
                    self.policy is None or self.policy.selects(namespace, name)):
                raise TryAgain(f"container {cid} should be captured but is not enrolled")
            return Reply(ok=True, detail="not selected")
        with self._lock(cid):
            try:
                drift = self.redirect.diff(rec.netns, self.spec_for(rec.capture), self.impl)
            except (RedirectError, SpecError) as exc:
                raise TryAgain(f"cannot verify redirection: {exc}") from None
        if not drift.in_sync:
            what = "; ".join((drift.missing + drift.unexpected)[:5])
            raise TryAgain(f"redirection drifted ({len(drift.missing)} missing, "
                           f"{len(drift.unexpected)} unexpected): {what}")
        return Reply(ok=True, captured=True, detail="in sync")

    def gc(self, attachments: Iterable[Attachment]) -> Reply:
        """Release every pod that is not among the runtime's valid attachments."""
        valid = {a.container_id for a in attachments}
        dropped = 0
        for rec in self.store.all():
            if rec.container_id not in valid:
                with self._lock(rec.container_id):
                    self._release(rec)
                dropped += 1
        metrics.RECONCILE_EVENTS.labels("gc").inc(dropped)
        return Reply(ok=True, detail=f"released {dropped}")

    # -- repair loops ---------------------------------------------------------------------

    def reconcile(self) -> None:
        """On start: trust a known pod's netns only after verifying it, then repair it."""
        for rec in self.store.all():
            with self._lock(rec.container_id):
                where = self.netns.locate(rec.netns, rec.netns_inode, rec.ips)
                if where is None:
                    self.store.drop(rec.container_id)
                    metrics.RECONCILE_EVENTS.labels("forgotten").inc()
                    log.info("pod_forgotten", container=rec.container_id, netns=rec.netns,
                             reason="netns gone or no longer holds the pod's IP")
                    continue
                if where != rec.netns:
                    rec.netns = where
                self._repair(rec, "reconcile")

    def drift_once(self) -> int:
        return sum(self.drift_pod(rec.container_id) for rec in self.store.all())

    def drift_pod(self, cid: str) -> int:
        """Check one pod and repair it if it drifted (1 if it did). The periodic loop runs
        it for every pod; the drift watch (driftwatch.py) for a pod whose netns changed."""
        rec = self.store.get(cid)
        if rec is None or rec.state is PodState.PENDING:
            return 0
        with self._lock(cid):
            rec = self.store.get(cid)
            if rec is None:
                return 0
            if self.netns.inode_of(rec.netns) != rec.netns_inode:
                self.store.drop(cid)
                self._unwatch(cid)
                metrics.RECONCILE_EVENTS.labels("forgotten").inc()
                return 0
            return self._repair(rec, "drift")

    def _repair(self, rec: PodRecord, why: str) -> int:
        try:
            spec = self.spec_for(rec.capture)
            drift = self.redirect.diff(rec.netns, spec, self.impl)
            if drift.in_sync and rec.state is not PodState.PENDING:
                return 0
            self.redirect.apply(rec.netns, spec, self.impl)
        except (RedirectError, SpecError) as exc:
            rec.detail = f"repair failed: {exc}"
            self.store.put(rec)
            log.warning("repair_failed", container=rec.container_id, why=why, error=str(exc))
            return 0
        log.warning("redirection_repaired", container=rec.container_id, why=why,
                    missing=drift.missing, unexpected=drift.unexpected)
        if rec.state is PodState.PENDING:
            rec.state = PodState.REDIRECTED
        rec.detail = f"repaired ({why})"
        self.store.put(rec)
        metrics.RECONCILE_EVENTS.labels(why).inc()
        if why == "drift":
            metrics.DRIFT_REPAIRS.inc()
        return 1

