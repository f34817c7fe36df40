"""The control plane's monitoring port (istiod's 15014), plain HTTP:

- GET /metrics   Prometheus text from the default registry (controlplane/metrics.py)
- GET /healthz   200 "ok" while the event loop runs (liveness)
- GET /readyz    200 "ready" while ADS and the CA are served, else 503

Nothing secret is served here, but node names are; it binds loopback by default.
"""

from __future__ import annotations

from collections.abc import Callable

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, generate_latest

DEFAULT_METRICS_PORT = 15014  # istiod's "HTTP monitoring" port


def split_address(address: str) -> tuple[str, int]:
    """`HOST:PORT` (`[v6]:PORT` too) -> (host, port); ValueError names the bad address."""
    host, sep, port = address.rpartition(":")
    host = host.removeprefix("[").removesuffix("]")
    if not sep or not host or not port.isdigit() or int(port) > 65535:
        raise ValueError(f"metrics address {address!r} is not HOST:PORT")
    return host, int(port)


def make_app(ready: Callable[[], bool]) -> web.Application:
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

    app = web.Application()
    app.add_routes([web.get("/metrics", metrics), web.get("/healthz", healthz),
                    web.get("/readyz", readyz)])
    return app


async def start(ready: Callable[[], bool], host: str, port: int) -> tuple[web.AppRunner, int]:
    """Serve on host:port (0: any free port); returns the runner (`await runner.cleanup()`
    stops it) and the bound port."""
    runner = web.AppRunner(make_app(ready), access_log=None)
    await runner.setup()
    try:
        site = web.TCPSite(runner, host, port)
        await site.start()
    except BaseException:
        await runner.cleanup()
        raise
    return runner, int(runner.addresses[0][1])
