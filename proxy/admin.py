"""The proxy's admin HTTP endpoints, like ztunnel's admin port (15000, localhost only).

- GET  /config_dump    the proxy's state as JSON (what it serves, per pod, with counters)
- GET  /healthz/ready  200 "ready" once the proxy can serve, else 503
- GET  /metrics        Prometheus text from the default registry
- POST /quitquitquit   start a graceful shutdown (POST only, so a stray GET or a crawler
                       cannot stop the node's proxy)

It exposes internals and a shutdown switch, so it is only ever bound to loopback.

Two proxies run on one node during a rolling upgrade (the proxy DaemonSet surges: the new
one is up before the old one drains), both on the host network, so the admin port is bound
with SO_REUSEPORT: both listen, and the kernel spreads new connections between them. Every
answer says which instance gave it (`X-Meshnode-Proxy-Pod`: $POD_NAME from the downward API,
when set; `X-Meshnode-Proxy-Pid`), so a readiness probe can tell its own proxy's answer from
the other one's (deploy/proxy-daemonset.yaml).
"""

from __future__ import annotations

import asyncio
import inspect
import json
import os
from typing import Any, Protocol

import structlog
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, generate_latest

from core.ports import ADMIN_PORT

log = structlog.get_logger(__name__)

POD_HEADER = "X-Meshnode-Proxy-Pod"
PID_HEADER = "X-Meshnode-Proxy-Pid"


class AdminState(Protocol):
    """What the admin endpoints read. A `shutdown()` method (sync or async) is optional:
    /quitquitquit calls it if present."""

    def config_dump(self) -> dict[str, Any]: ...

    def ready(self) -> bool: ...


STATE_KEY: web.AppKey[AdminState] = web.AppKey("state", AdminState)
# Keeps an async shutdown() task referenced until it finishes (the loop holds only weak refs).
_TASKS_KEY: web.AppKey[set[asyncio.Task[Any]]] = web.AppKey("shutdown_tasks", set)


async def _config_dump(request: web.Request) -> web.Response:
    dump = request.app[STATE_KEY].config_dump()
    # default=str: addresses, enums and paths in the dump should print, not fail the call.
    return web.Response(text=json.dumps(dump, indent=2, sort_keys=True, default=str),
                        content_type="application/json")


async def _ready(request: web.Request) -> web.Response:
    if request.app[STATE_KEY].ready():
        return web.Response(text="ready\n")
    return web.Response(status=503, text="not ready\n")


async def _metrics(_request: web.Request) -> web.Response:
    # CONTENT_TYPE_LATEST carries a version and charset, which aiohttp's content_type
    # argument refuses, so it goes in as a raw header.
    return web.Response(body=generate_latest(REGISTRY),
                        headers={"Content-Type": CONTENT_TYPE_LATEST})


async def _quit(request: web.Request) -> web.Response:
    shutdown = getattr(request.app[STATE_KEY], "shutdown", None)
    if shutdown is None or not callable(shutdown):
        return web.Response(status=501, text="shutdown not supported\n")
    log.info("admin_quitquitquit", peer=request.remote)
    result = shutdown()
    if inspect.isawaitable(result):
        # Do not await it here: a graceful shutdown may stop this very server, and the
        # caller should still get its answer.
        tasks = request.app[_TASKS_KEY]
        task = asyncio.ensure_future(result)
        tasks.add(task)
        task.add_done_callback(tasks.discard)
    return web.Response(text="shutdown now\n")


async def _tag(_request: web.Request, response: web.StreamResponse) -> None:
    """Name the instance on every answer: with SO_REUSEPORT, which of the node's proxies
    answers a connection is the kernel's choice."""
    pod = os.environ.get("POD_NAME", "")
    if pod:
        response.headers[POD_HEADER] = pod
    response.headers[PID_HEADER] = str(os.getpid())


def make_admin_app(state: AdminState) -> web.Application:
    app = web.Application()
    app.on_response_prepare.append(_tag)
    app[STATE_KEY] = state
    app[_TASKS_KEY] = set()
    app.router.add_get("/config_dump", _config_dump)
    app.router.add_get("/healthz/ready", _ready)
    app.router.add_get("/metrics", _metrics)
    app.router.add_post("/quitquitquit", _quit)
    return app


async def start_admin(state: AdminState, port: int = ADMIN_PORT,
                      host: str = "127.0.0.1") -> web.AppRunner:
    """Serve the admin app on host:port (loopback by default); `await runner.cleanup()`
    stops it. SO_REUSEPORT: another proxy on the node (the old one, draining, or the new
    one, starting) may hold the same address."""
    runner = web.AppRunner(make_admin_app(state), access_log=None)
    await runner.setup()
    try:
        await web.TCPSite(runner, host, port, reuse_port=True).start()
    except BaseException:
        await runner.cleanup()
        raise
    log.info("admin_listening", host=host, port=port)
    return runner
