"""Certificates for every identity with a pod on this node: fetch, renew, retry, drop.

One task per identity. It fetches, sleeps until the certificate's half-life, and fetches
again. On failure it backs off (500 ms doubling to 150 s, ztunnel's values) and the old
certificate stays in use while it is still valid. Pods are reference-counted per identity:
when the last pod of an identity leaves, its task stops and its key is forgotten.
Keys live only in this process's memory.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import grpc
import structlog

from agent.identity.bundle import CertBundle
from agent.identity.caclient import CertificateSource
from agent.xds.state import Change, XdsState
from core.aio import cancel_and_wait
from core.backoff import Backoff
from core.mesh.model import Workload

log = structlog.get_logger("identity")

# identity, bundle: a new/renewed certificate; identity, None: the identity was dropped,
# or its certificate expired with no replacement.
BundleSubscriber = Callable[[str, CertBundle | None], None]


@dataclass
class IdentityConfig:
    initial_backoff: float = 0.5
    max_backoff: float = 150.0
    concurrency: int = 8            # fetches in flight at once (ztunnel: 8)
    min_refresh_seconds: float = 5.0  # floor between renewals (a backdated cert never spins)


@dataclass
class _Entry:
    pods: set[str] = field(default_factory=set)
    bundle: CertBundle | None = None
    error: str = ""
    task: asyncio.Task[None] | None = None
    fetched: asyncio.Event = field(default_factory=asyncio.Event)


class IdentityManager:
    def __init__(self, source: CertificateSource, cfg: IdentityConfig | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        self.source = source
        self.cfg = cfg or IdentityConfig()
        self.clock = clock
        self._entries: dict[str, _Entry] = {}
        self._pod_identity: dict[str, str] = {}
        self._subscribers: list[BundleSubscriber] = []
        self._sem = asyncio.Semaphore(self.cfg.concurrency)

    # ---- which identities are wanted ----

    def add_pod(self, uid: str, identity: str) -> None:
        """A pod of `identity` runs on this node; starts fetching if it is the first one."""
        if self._pod_identity.get(uid) == identity:
            return
        self.remove_pod(uid)
        self._pod_identity[uid] = identity
        e = self._entries.get(identity)
        if e is None:
            e = self._entries[identity] = _Entry()
            e.task = asyncio.get_running_loop().create_task(self._keep_fresh(identity, e),
                                                            name=f"cert:{identity}")
            log.info("identity_added", identity=identity)
        e.pods.add(uid)

    def remove_pod(self, uid: str) -> None:
        identity = self._pod_identity.pop(uid, None)
        if identity is None:
            return
        e = self._entries[identity]
        e.pods.discard(uid)
        if not e.pods:
            del self._entries[identity]
            if e.task is not None:
                e.task.cancel()
            log.info("identity_dropped", identity=identity)
            self._notify(identity, None)

    def follow(self, state: XdsState,
               wants: Callable[[Workload], bool] = lambda w: True) -> Callable[[], None]:
        """Track the local workloads of a discovery state (node == the state's local node).

        `wants` narrows them (ztunnel prefetches only HBONE workloads; meshnode's proxy
        terminates mTLS for every captured pod, so by default all of them).
        """
        for w in list(state.local.values()):
            if wants(w):
                self.add_pod(w.uid, w.spiffe_id)

        def on_changes(changes: Sequence[Change]) -> None:
            for c in changes:
                if c.kind != "workload":
                    continue
                new = c.new
                if isinstance(new, Workload) and new.node == state.local_node and wants(new):
                    self.add_pod(new.uid, new.spiffe_id)
                else:
                    self.remove_pod(c.key)
        return state.subscribe(on_changes)

    # ---- what the proxy uses ----

    def get(self, identity: str) -> CertBundle | None:
        e = self._entries.get(identity)
        if e is None or e.bundle is None or not e.bundle.valid(self.clock()):
            return None
        return e.bundle

    def identities(self) -> list[str]:
        return sorted(self._entries)

    def status(self, identity: str) -> str:
        """ztunnel's certificate states, for the debug API."""
        e = self._entries.get(identity)
        if e is None:
            return "Unavailable: the identity is no longer needed"
        if self.get(identity) is not None:
            return "Available"
        return f"Unavailable: {e.error}" if e.error else "Initializing"

    async def wait_for(self, identity: str, timeout: float | None = None) -> CertBundle | None:
        e = self._entries.get(identity)
        if e is None:
            return None
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                await e.fetched.wait()
        return self.get(identity)

    def subscribe(self, fn: BundleSubscriber) -> Callable[[], None]:
        """`fn(identity, bundle)` on every new certificate, `fn(identity, None)` when dropped.

        A new subscriber first gets every certificate currently held.
        """
        self._subscribers.append(fn)
        for ident in list(self._entries):
            b = self.get(ident)
            if b is not None:
                fn(ident, b)
        return lambda: self._subscribers.remove(fn) if fn in self._subscribers else None

    async def close(self) -> None:
        tasks = [e.task for e in self._entries.values() if e.task is not None]
        self._entries.clear()
        self._pod_identity.clear()
        await cancel_and_wait(tasks)

    # ---- per identity ----

    async def _keep_fresh(self, identity: str, e: _Entry) -> None:
        backoff = Backoff(self.cfg.initial_backoff, self.cfg.max_backoff)
        while True:
            try:
                async with self._sem:
                    bundle = await self.source.fetch(identity)
            except asyncio.CancelledError:
                raise
            except Exception as ex:
                e.error = _describe(ex)
                delay = backoff.next()
                now = self.clock()
                if e.bundle is not None and e.bundle.valid(now):
                    log.warning("cert_refresh_failed", identity=identity, error=e.error,
                                retry_s=round(delay, 3), keeping_until=e.bundle.not_after)
                    # Wake no later than its expiry, to retry and, failing, say it is gone.
                    delay = min(delay, e.bundle.not_after - now + 0.01)
                else:
                    log.warning("cert_fetch_failed", identity=identity, error=e.error,
                                retry_s=round(delay, 3))
                    if e.bundle is not None:  # expired, nothing to replace it
                        e.bundle = None
                        self._notify(identity, None)
                e.fetched.set()  # waiters learn it is unavailable rather than hang
                await asyncio.sleep(delay)
                continue
            backoff.reset()
            e.bundle, e.error = bundle, ""
            e.fetched.set()
            log.info("cert_issued", identity=identity, serial=f"{bundle.serial:x}",
                     not_after=bundle.not_after, refresh_at=bundle.refresh_at)
            self._notify(identity, bundle)
            wait = max(bundle.refresh_at - self.clock(), self.cfg.min_refresh_seconds)
            await asyncio.sleep(wait)

    def _notify(self, identity: str, bundle: CertBundle | None) -> None:
        for fn in list(self._subscribers):
            try:
                fn(identity, bundle)
            except Exception:
                log.exception("identity_subscriber_failed", identity=identity)


def _describe(ex: Exception) -> str:
    if isinstance(ex, grpc.aio.AioRpcError):
        return f"{ex.code().name}: {ex.details()}"
    return str(ex) or repr(ex)
