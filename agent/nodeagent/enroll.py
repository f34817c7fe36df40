"""Enrollment: what the agent does for each plugin request, and its repair loops.

Everything here blocks (it enters netns and runs netfilter tools), so the asyncio side calls
it on worker threads. Operations on one container are serialised by a per-container lock.
"""

from __future__ import annotations

import dataclasses
import threading
from collections import defaultdict
from dataclasses import dataclass
from typing import Any, Protocol

import structlog

from agent.config import AgentConfig
from agent.nodeagent import hostns, ipfamily, metrics, netnsfind
from agent.nodeagent.deadline import Deadline
from agent.nodeagent.handoff import ProxyHandoff
from agent.nodeagent.pods import PodRecord, PodState, PodStore
from agent.redirect import backend as engine
from agent.redirect.ebpf.backend import EbpfBackend
from agent.redirect.ebpf.loader import LoadError
from agent.redirect.errors import RedirectError
from agent.redirect.spec import RedirectSpec, SpecError
from agent.zds.server import ZdsError
from core.config import ConfigError

log = structlog.get_logger("enroll")

TRY_AGAIN = 11  # CNI: "try again later"
INVALID_CONFIG = 7  # CNI: invalid network config
INVALID_ENVIRONMENT = 4  # CNI: invalid environment variables (here: CNI_NETNS)


@dataclass(frozen=True)
class Reply:
    ok: bool
    captured: bool = False
    detail: str = ""
    code: int = 0

    def to_json(self) -> dict[str, Any]:
        if self.ok:
            return {"ok": True, "captured": self.captured, "detail": self.detail}
        return {"ok": False, "code": self.code or TRY_AGAIN, "msg": self.detail,
                "details": ""}


def fail(msg: str, code: int = TRY_AGAIN) -> Reply:
    return Reply(ok=False, detail=msg, code=code)


class PodEnrollment(Protocol):
    """What every pod source drives, in the plugin's request form (docs/cni-protocol.md):
    the CNI server (runtime-driven) and the Kubernetes watch (label-driven, agent/k8s).
    One implementation, `Enroller`, so both sources share every rule about enrollment."""

    store: PodStore

    def add(self, req: dict[str, Any]) -> Reply: ...

    def delete(self, cid: str) -> Reply: ...


class PodWatch(Protocol):
    """Told which pods to watch for drift (agent/nodeagent/driftwatch.py)."""

    def watch(self, cid: str, netns: str) -> bool: ...

    def unwatch(self, cid: str) -> None: ...


class SelectionPolicy(Protocol):
    """A second say on which pods are captured, beyond `selection` in the config (which
    stays an outer filter): the Kubernetes labels. None = cannot tell yet."""

    def selects(self, namespace: str, name: str) -> bool | None: ...


_OVERRIDABLE = {"dns_capture", "inbound_capture", "ipv6", "virtual_interfaces",
                "exclude_outbound_cidrs", "exclude_inbound_ports", "exclude_outbound_ports"}


def make_capture_backend(cfg: AgentConfig) -> engine.RuleBackend:
    """The configured backend, ready to use. Flavour detection runs here, in the host netns,
    once; the eBPF programs are loaded here, so a kernel that cannot run them is found at
    start-up (and, with `capture.fallback`, replaced by a netfilter backend) rather than at
    the first pod."""
    impl = engine.make_backend(cfg.capture.backend, cfg.capture.iptables_flavour)
    if impl.name != "ebpf":
        return impl
    assert isinstance(impl, EbpfBackend)
    try:
        impl.loader.load()
        dead = impl.loader.prune()
    except LoadError as exc:
        if not cfg.capture.fallback:
            raise ConfigError(f"capture.backend ebpf: {exc} (set capture.fallback: iptables "
                              "to fall back)") from None
        log.warning("ebpf_unavailable_falling_back", reason=str(exc),
                    fallback=cfg.capture.fallback)
        metrics.BACKEND_FALLBACK.inc()
        return engine.make_backend(cfg.capture.fallback, cfg.capture.iptables_flavour)
    log.info("ebpf_loaded", pin_dir=impl.loader.pin_dir, cgroup=impl.loader.cgroup,
             pruned_dead_pods=len(dead))
    return impl


class Enroller:
    def __init__(self, cfg: AgentConfig, store: PodStore,
                 handoff: ProxyHandoff | None = None) -> None:
        self.cfg = cfg
        self.store = store
        self.handoff = handoff
        self.policy: SelectionPolicy | None = None  # set by the Kubernetes pod source
        self.watch: PodWatch | None = None  # the drift watch (driftwatch.py), set by server.py
        self.impl = make_capture_backend(cfg)
        self._locks: defaultdict[str, threading.Lock] = defaultdict(threading.Lock)
        self._locks_guard = threading.Lock()
        for state in PodState:  # counted when scraped, not on every change
            metrics.PODS.labels(state.value).set_function(
                lambda s=state: self.store.count(s))  # type: ignore[misc]

    def _lock(self, cid: str) -> threading.Lock:
        with self._locks_guard:
            return self._locks[cid]

    def spec_for(self, capture: dict[str, Any]) -> RedirectSpec:
        base = self.cfg.capture.spec()
        unknown = set(capture) - _OVERRIDABLE
        if unknown:
            raise SpecError(f"capture: unknown option(s) {sorted(unknown)}")
        changes: dict[str, Any] = {k: tuple(v) if isinstance(v, list) else v
                                   for k, v in capture.items()}
        return dataclasses.replace(base, **changes)

    # -- plugin commands ------------------------------------------------------------------

    def add(self, req: dict[str, Any], deadline: Deadline | None = None) -> Reply:
        """Enroll a pod. With a `deadline` (the plugin's), an ADD that cannot commit in
        time is refused, or rolled back whole, so the runtime is never told "failed" about
        a pod that stays captured. Without one (the Kubernetes source), it takes its time."""
        pod = req.get("pod") or {}
        namespace, name = str(pod.get("namespace", "")), str(pod.get("name", ""))
        cid, netns = str(req.get("container_id", "")), str(req.get("netns", ""))
        if not cid or not netns:
            return fail("ADD needs container_id and netns", INVALID_CONFIG)
        if not self.cfg.selection.captures(namespace):
            return Reply(ok=True, captured=False, detail=f"namespace {namespace!r} not selected")
        verdict = self.policy.selects(namespace, name) if self.policy is not None else True
        if verdict is None:
            # Fail closed: the runtime retries, and by then the watch has seen the pod.
            return fail(f"pod {namespace}/{name} not yet seen by the Kubernetes watch")
        if not verdict:
            return Reply(ok=True, captured=False, detail=f"pod {namespace}/{name} not selected "
                         "by its dataplane-mode labels")
        capture = dict((req.get("config") or {}).get("capture") or {})
        # `ipv6: auto` becomes true/false here, from the pod's addresses, and is recorded.
        capture = ipfamily.resolve(capture, self.cfg.capture.ipv6,
                                   [str(ip) for ip in req.get("ips") or []], netns)
        try:
            spec = self.spec_for(capture)
        except (SpecError, TypeError) as exc:
            return fail(f"invalid capture options: {exc}", INVALID_CONFIG)
        inode = netnsfind.inode_of(netns)
        if inode is None:
            return fail(f"netns {netns} does not exist")
        if whose := hostns.forbidden(netns):
            log.warning("enroll_refused", pod=f"{namespace}/{name}", container=cid,
                        netns=netns, reason=f"{whose} network namespace")
            return fail(f"netns {netns} is {whose} network namespace: refusing to capture "
                        "the node's own traffic", INVALID_ENVIRONMENT)
        with self._lock(cid):
            if deadline is not None and deadline.passed():
                # Waiting for the lock or a worker thread used the plugin's whole budget.
                metrics.DEADLINE_EXCEEDED.labels("before_start").inc()
                return fail(f"the plugin's deadline ({deadline.budget_ms:.0f} ms) passed "
                            "before the agent could start; nothing was changed")
            rec = PodRecord(container_id=cid, netns=netns, netns_inode=inode,
                            ifname=str(req.get("ifname", "")), ips=list(req.get("ips") or []),
                            name=name, namespace=namespace, uid=str(pod.get("uid", "")),
                            backend=self.impl.name, capture=capture)
            self.store.put(rec)  # pending: a crash from here on is finished by reconcile
            try:
                engine.apply(netns, spec, self.impl)
            except RedirectError as exc:
                self.store.drop(cid)
                log.warning("enroll_failed", pod=f"{namespace}/{name}", container=cid,
                            error=str(exc))
                return fail(f"redirection failed: {exc}")
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
                    return fail(f"the node proxy did not take the pod: {exc}")
            # The commit point: past it the plugin has given up, and the runtime believes the
            # ADD failed. Undo everything (proxy, rules, record) rather than leave the pod
            # captured behind the runtime's back.
            if deadline is not None and deadline.passed():
                self._roll_back(rec, spec)
                metrics.DEADLINE_EXCEEDED.labels("rolled_back").inc()
                log.warning("enroll_rolled_back", pod=f"{namespace}/{name}", container=cid,
                            reason="plugin deadline passed", budget_ms=deadline.budget_ms)
                return fail(f"the plugin's deadline ({deadline.budget_ms:.0f} ms) passed "
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
            engine.remove(rec.netns, spec, self.impl)
        except RedirectError as exc:
            log.error("undo_failed", container=rec.container_id, error=str(exc))

    def _release(self, rec: PodRecord) -> None:
        """Tell the proxies, then remove our rules if the netns still exists (a deleted
        netns took them along). istio-cni's order: the proxy lets go before the rules do."""
        if self.handoff is not None:
            self.handoff.delete(rec)
        if netnsfind.inode_of(rec.netns) == rec.netns_inode:
            try:
                engine.remove(rec.netns, self.spec_for(rec.capture), self.impl)
            except (RedirectError, SpecError) as exc:
                log.warning("release_failed", container=rec.container_id, error=str(exc))
        self.store.drop(rec.container_id)
        self._unwatch(rec.container_id)
        log.info("pod_released", pod=f"{rec.namespace}/{rec.name}", container=rec.container_id)

    def check(self, req: dict[str, Any]) -> Reply:
        cid = str(req.get("container_id", ""))
        namespace = str((req.get("pod") or {}).get("namespace", ""))
        rec = self.store.get(cid)
        if rec is None:
            name = str((req.get("pod") or {}).get("name", ""))
            if self.cfg.selection.captures(namespace) and (
                    self.policy is None or self.policy.selects(namespace, name)):
                return fail(f"container {cid} should be captured but is not enrolled")
            return Reply(ok=True, detail="not selected")
        with self._lock(cid):
            try:
                drift = engine.diff(rec.netns, self.spec_for(rec.capture), self.impl)
            except (RedirectError, SpecError) as exc:
                return fail(f"cannot verify redirection: {exc}")
        if not drift.in_sync:
            what = "; ".join((drift.missing + drift.unexpected)[:5])
            return fail(f"redirection drifted ({len(drift.missing)} missing, "
                        f"{len(drift.unexpected)} unexpected): {what}")
        return Reply(ok=True, captured=True, detail="in sync")

    def gc(self, attachments: list[dict[str, Any]]) -> Reply:
        valid = {str(a.get("container_id", a.get("containerID", ""))) for a in attachments}
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
                where = netnsfind.locate(rec.netns, rec.netns_inode, rec.ips)
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
            if netnsfind.inode_of(rec.netns) != rec.netns_inode:
                self.store.drop(cid)
                self._unwatch(cid)
                metrics.RECONCILE_EVENTS.labels("forgotten").inc()
                return 0
            return self._repair(rec, "drift")

    def _repair(self, rec: PodRecord, why: str) -> int:
        try:
            spec = self.spec_for(rec.capture)
            drift = engine.diff(rec.netns, spec, self.impl)
            if drift.in_sync and rec.state is not PodState.PENDING:
                return 0
            engine.apply(rec.netns, spec, self.impl)
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

