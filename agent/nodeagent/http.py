"""Health, readiness, Prometheus metrics and a debug view of the pods, over HTTP."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from aiohttp import web

from agent.nodeagent.pods import PodStore
from core import monitoring


def make_app(store: PodStore, ready: Callable[[], bool],
             mesh: Callable[[], dict[str, Any]] | None = None) -> web.Application:
    async def pods(_: web.Request) -> web.Response:
        return web.json_response([p.to_json() for p in store.all()])

    async def mesh_view(_: web.Request) -> web.Response:
        return web.json_response(mesh() if mesh is not None else {"controlplane": None})

    app = web.Application()
    app.add_routes([*monitoring.routes(ready), web.get("/debug/pods", pods),
                    web.get("/debug/mesh", mesh_view)])
    return app
