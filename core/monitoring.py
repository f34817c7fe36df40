"""The three monitoring endpoints the agent and the control plane both serve, over HTTP:

- GET /healthz   200 "ok" while the event loop runs (liveness)
- GET /readyz    200 "ready" when `ready()` says so, else 503 (readiness)
- GET /metrics   Prometheus text from the default registry

(The proxy's admin port answers Envoy-style paths instead: proxy/admin.py.)
"""

from __future__ import annotations

from collections.abc import Callable

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, generate_latest


def routes(ready: Callable[[], bool]) -> list[web.RouteDef]:
    async def healthz(_: web.Request) -> web.Response:
        return web.Response(text="ok\n")

    async def readyz(_: web.Request) -> web.Response:
        ok = ready()
        return web.Response(status=200 if ok else 503, text="ready\n" if ok else "not ready\n")

    async def metrics(_: web.Request) -> web.Response:
        # CONTENT_TYPE_LATEST carries a version and charset, which aiohttp's content_type
        # argument refuses, so it goes in as a raw header.
        return web.Response(body=generate_latest(REGISTRY),
                            headers={"Content-Type": CONTENT_TYPE_LATEST})

    return [web.get("/healthz", healthz), web.get("/readyz", readyz),
            web.get("/metrics", metrics)]
