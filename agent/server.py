"""`meshnode agent`: load state, reconcile, (install the plugin), serve, repair drift."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING

import structlog
from aiohttp import web

from agent.config import AgentConfig
from agent.install.config import InstallConfig, PluginEntry
from agent.install.installer import Installer
from agent.meshconfig.runtime import MeshRuntime
from agent.nodeagent import metrics
from agent.nodeagent.backend import make_capture_backend
from agent.nodeagent.cniserver import CniServer
from agent.nodeagent.driftwatch import DriftWatch
from agent.nodeagent.enroll import Enroller
from agent.nodeagent.handoff import ProxyHandoff, snapshot_of
from agent.nodeagent.http import make_app, status_routes
from agent.nodeagent.pods import PodStore
from agent.nodeagent.stats import serve as serve_stats
from agent.redirect.spec import Profile
from agent.zds.server import ZdsServer
from core import addr

if TYPE_CHECKING:
    from agent.k8s.owner import OwnerCheck
    from agent.k8s.source import KubePodSource

log = structlog.get_logger("agent")


class Agent:
    def __init__(self, cfg: AgentConfig) -> None:
        self.cfg = cfg
        self.store = PodStore(cfg.pods_dir)
        self.zds = ZdsServer(cfg.zds_socket, lambda: snapshot_of(self.store),
                             ack_timeout=cfg.proxy_ack_timeout_seconds,
                             on_count=metrics.PROXIES.set) if cfg.proxy_handoff else None
        # The backend is made and prepared (eBPF: loaded and attached) before anything
        # serves; the hand-off is given to the Enroller once the ZDS server runs.
        self.enroller = Enroller(cfg, self.store, backend=make_capture_backend(cfg))
        # Repairs a pod within ~0.1 s of a change to its rules; the drift loop stays the
        # safety net (iptables-legacy and eBPF maps send no notifications).
        self.driftwatch = DriftWatch(self.enroller.drift_pod)
        self.serving = False
        self.installer = None
        if cfg.install.enabled:
            self.installer = Installer(InstallConfig(
                cni_bin_dir=Path(cfg.install.cni_bin_dir),
                cni_net_dir=Path(cfg.install.cni_net_dir),
                entry=PluginEntry(agent_socket=cfg.cni_socket),
                state_file=Path(cfg.state_dir) / "cni-install-state.json"))
        self.cni = CniServer(cfg.cni_socket, self.enroller, self.ready)
        self.mesh = MeshRuntime(cfg) if cfg.controlplane is not None else None
        self.k8s: KubePodSource | None = None  # built in run(): connecting needs the loop
        self.owner: OwnerCheck | None = None  # with the install: uninstall or upgrade?

    def ready(self) -> bool:
        ok = self.serving and (self.installer is None or self.installer.ready()) \
            and (self.mesh is None or self.mesh.ready())
        metrics.READY.set(1 if ok else 0)
        return ok

    async def _drift_loop(self, stop: asyncio.Event) -> None:
        loop = asyncio.get_running_loop()
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), self.cfg.drift_interval_seconds)
            if stop.is_set():
                return
            try:
                n = await loop.run_in_executor(None, self.enroller.drift_once)
                if n:
                    log.warning("drift_repaired", pods=n)
                self.driftwatch.retain({r.container_id for r in self.store.all()})
            except Exception:
                log.exception("drift_check_failed")

    def _watch_known_pods(self) -> None:
        """After reconcile: watch every pod we kept; new ones are added by the Enroller."""
        self.driftwatch.start()
        self.enroller.watch = self.driftwatch
        for rec in self.store.all():
            self.driftwatch.watch(rec.container_id, rec.netns)

    async def _start_owner_check(self) -> None:
        # Imported here, not for a cycle: it pulls in kubernetes_asyncio (~0.6 s), which an
        # agent without a kubeconfig never needs.
        from agent.k8s.owner import OwnerCheck

        self.owner = await OwnerCheck.connect(self.cfg.kubernetes.kubeconfig)
        await self.owner.probe()

    async def _upgrade_or_uninstall(self) -> bool:
        """True to leave the plugin in place (upgrade/restart), False to remove it."""
        if self.owner is None:
            return True
        verdict = await self.owner.verdict()
        await self.owner.close()
        log.info("cni_install_uninstall_detected" if verdict.uninstall
                 else "cni_install_upgrade_detected",
                 reason=verdict.reason)
        return not verdict.uninstall

    async def _start_k8s(self) -> None:
        # Imported here, not for a cycle: kubernetes_asyncio takes ~0.6 s to import, and
        # only an agent with `kubernetes.enabled` needs it.
        from agent.k8s.api import KubeApi
        from agent.k8s.source import KubePodSource

        k = self.cfg.kubernetes
        api = await KubeApi.connect(k.kubeconfig)
        self.k8s = KubePodSource(api, self.enroller, k.node(),
                                 istio=self.cfg.capture.profile is Profile.ISTIO, ready=self.ready,
                                 workers=self.cfg.workers,
                                 watch_timeout_seconds=k.watch_timeout_seconds,
                                 retry_seconds=k.retry_seconds)
        self.enroller.policy = self.k8s
        await self.k8s.start()
        log.info("k8s_source_started", node=k.node(), kubeconfig=k.kubeconfig or "in-cluster")

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        loop.set_default_executor(ThreadPoolExecutor(self.cfg.workers,
                                                     thread_name_prefix="netns"))
        stop = asyncio.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        log.info("agent_starting", pods=len(self.store.all()), backend=self.enroller.impl.name)
        # Reconcile before serving: a restarted agent repairs what it knows first.
        await loop.run_in_executor(None, self.enroller.reconcile)
        await loop.run_in_executor(None, self._watch_known_pods)
        if self.mesh is not None:
            # Discovery runs in the background; readiness waits for its first sync.
            await self.mesh.start()
        if self.zds is not None:
            # Proxies (re)connect and get the snapshot of every pod with rules in place.
            await self.zds.start()
            timeout = self.cfg.proxy_ack_timeout_seconds + 1
            self.enroller.handoff = ProxyHandoff(self.zds, loop, timeout) if self.mesh is None \
                else self.mesh.handoff(self.zds, loop, timeout)
        if self.installer is not None:
            await loop.run_in_executor(None, self.installer.start)
            await self._start_owner_check()
        if self.cfg.kubernetes.enabled:
            # Before the CNI socket: from here on an ADD is decided by the pod's labels
            # (until the watch has synced, ADDs fail closed and the runtime retries).
            await self._start_k8s()
        await self.cni.start()
        host, port = addr.host_port(self.cfg.http_address)  # validated: [v6]:port too
        debug_mesh = self.mesh.debug if self.mesh else None
        runner = web.AppRunner(make_app(self.store, self.ready, debug_mesh,
                                        spec_for=self.enroller.spec_for),
                               access_log=None)
        await runner.setup()
        await web.TCPSite(runner, host, port).start()
        # Prometheus' listener (metrics_address), apart from the loopback debug HTTP.
        mesh = self.mesh
        stats = serve_stats(self.cfg.metrics_address, self.ready, None if mesh is None else (
            lambda: mesh.client is not None and mesh.client.xds.stats.connected),
            status_routes(self.store, self.ready, debug_mesh, time.time()))
        try:
            await stats.start()
        except BaseException:
            await runner.cleanup()
            raise
        self.serving = True
        log.info("agent_ready", socket=self.cfg.cni_socket, http=self.cfg.http_address,
                 ready=self.ready())
        drift = asyncio.create_task(self._drift_loop(stop))
        await stop.wait()
        log.info("agent_stopping")
        self.serving = False
        drift.cancel()
        await loop.run_in_executor(None, self.driftwatch.stop)
        await self.cni.stop()
        if self.k8s is not None:
            await self.k8s.stop()
            await self.k8s.api.close()
        if self.zds is not None:
            await self.zds.close()
        if self.mesh is not None:
            await self.mesh.stop()
        await stats.stop()
        await runner.cleanup()
        if self.installer is not None:
            # A restart or upgrade keeps the plugin (new pods wait for the next agent); an
            # uninstall (our DaemonSet gone) removes it, so new pods start without us.
            upgrade = await self._upgrade_or_uninstall()
            installer = self.installer
            await loop.run_in_executor(None, lambda: installer.stop(upgrade=upgrade))
