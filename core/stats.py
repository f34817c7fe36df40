"""The metrics listener Prometheus scrapes, apart from the daemons' admin and debug ports.

The proxy's admin port and the agent's debug HTTP expose internals (config dumps, pod
records, `/quitquitquit`) and stay on 127.0.0.1; this listener serves only

- GET /metrics   Prometheus text from the default registry
- GET <ready>    200 "ready" / 503 "not ready" (`/healthz/ready` on the proxy, `/readyz` on
                 the agent: the same paths as their admin ports)
- the daemon's own summary routes, if it gives any (the agent's /debug/status and
  /debug/version: no secrets, no pod's capture details; `meshnode status --kubeconfig` reads
  them through the API server's pod proxy, which dials the pod's address, not loopback)

and 404 for anything else, so it may bind where Prometheus reaches it (`0.0.0.0:15020` for
the proxy, as ztunnel's stats port; `0.0.0.0:15022` for the agent: core/ports.py).

One port, one process: during a proxy upgrade the new proxy starts beside the old one on the
host network, and a shared (SO_REUSEPORT) port would spread scrapes over both, each switch
read by Prometheus as a counter reset. So the port is not shared: a daemon that finds it
taken logs `stats_port_busy` once and retries every second (the old proxy releases it when
it exits), then logs `stats_listening`. Any other bind error (an address the node does not
have) stops start-up with a one-line error naming `metrics_address`.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
from collections.abc import Callable, Iterable

import structlog
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, generate_latest

from core import addr
from core.config import ConfigError

log = structlog.get_logger("stats")


def make_stats_app(ready: Callable[[], bool], ready_path: str,
                   routes: Iterable[web.RouteDef] = ()) -> web.Application:
    async def metrics(_: web.Request) -> web.Response:
        # CONTENT_TYPE_LATEST carries a version and charset, which aiohttp's content_type
        # argument refuses, so it goes in as a raw header.
        return web.Response(body=generate_latest(REGISTRY),
                            headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def readiness(_: web.Request) -> web.Response:
        ok = ready()
        return web.Response(status=200 if ok else 503, text="ready\n" if ok else "not ready\n")

    app = web.Application()
    app.router.add_get("/metrics", metrics)
    app.router.add_get(ready_path, readiness)
    app.add_routes(list(routes))
    return app


class StatsServer:
    """Serves `make_stats_app` on `address` (HOST:PORT, validated by the config; "" = off)."""

    def __init__(self, address: str, ready: Callable[[], bool], *,
                 ready_path: str = "/healthz/ready", retry_seconds: float = 1.0,
                 routes: Iterable[web.RouteDef] = ()) -> None:
        self.address = address
        self.retry_seconds = retry_seconds
        self._runner = web.AppRunner(make_stats_app(ready, ready_path, routes),
                                     access_log=None)
        self._retry: asyncio.Task[None] | None = None
        self.port = 0  # the bound port, once bound

    async def start(self) -> None:
        """Bind now, or (port taken) keep trying in the background. Raises ConfigError
        (naming `metrics_address`) for any other bind error."""
        if not self.address:
            return
        await self._runner.setup()
        try:
            busy = not await self._bind()
        except BaseException:
            await self._runner.cleanup()
            raise
        if busy:
            log.warning("stats_port_busy", address=self.address,
                        retry_s=self.retry_seconds)
            self._retry = asyncio.create_task(self._keep_trying())

    async def _bind(self) -> bool:
        """True once bound; False while the port is in use."""
        host, port = addr.host_port(self.address, port_zero=True)
        site = web.TCPSite(self._runner, host, port)
        try:
            await site.start()
        except OSError as exc:
            await site.stop()  # unregistered from the runner; nothing was bound
            if exc.errno == errno.EADDRINUSE:
                return False
            raise ConfigError(f"config: metrics_address: cannot listen on {self.address}: "
                              f"{os.strerror(exc.errno) if exc.errno else exc}") from None
        for a in self._runner.addresses:
            self.port = int(a[1])
        log.info("stats_listening", host=host, port=self.port)
        return True

    async def _keep_trying(self) -> None:
        said = ""
        while True:
            await asyncio.sleep(self.retry_seconds)
            try:
                if await self._bind():
                    return
            except ConfigError as exc:  # the address went away: say so (once), keep trying
                if str(exc) != said:
                    said = str(exc)
                    log.warning("stats_bind_failed", address=self.address, error=said)

    async def stop(self) -> None:
        if self._retry is not None:
            self._retry.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._retry
            self._retry = None
        if self.address:
            await self._runner.cleanup()
