"""Health, readiness, Prometheus metrics and a debug view of the pods, over HTTP."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, generate_latest

from agent.nodeagent.pods import PodStore


def make_app(store: PodStore, ready: Callable[[], bool],
             mesh: Callable[[], dict[str, Any]] | None = None) -> web.Application:
    async def healthz(_: web.Request) -> web.Response:
        return web.Response(text="ok\n")

    async def readyz(_: web.Request) -> web.Response:
        ok = ready()
        return web.Response(status=200 if ok else 503, text="ready\n" if ok else "not ready\n")

    async def metrics(_: web.Request) -> web.Response:
        return web.Response(body=generate_latest(REGISTRY),
                            headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def pods(_: web.Request) -> web.Response:
        return web.json_response([p.to_json() for p in store.all()])

    async def mesh_view(_: web.Request) -> web.Response:
        return web.json_response(mesh() if mesh is not None else {"controlplane": None})

    app = web.Application()
    app.add_routes([web.get("/healthz", healthz), web.get("/readyz", readyz),
                    web.get("/metrics", metrics), web.get("/debug/pods", pods),
                    web.get("/debug/mesh", mesh_view)])
    return app
