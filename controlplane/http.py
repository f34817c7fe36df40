"""The control plane's monitoring port (istiod's 15014), plain HTTP:

- GET /metrics   Prometheus text from the default registry (controlplane/metrics.py)
- GET /healthz   200 "ok" while the event loop runs (liveness)
- GET /readyz    200 "ready" while ADS and the CA are served, else 503

Nothing secret is served here, but node names are; it binds loopback by default.
"""

from __future__ import annotations

from collections.abc import Callable

from aiohttp import web

from core import monitoring

DEFAULT_METRICS_PORT = 15014  # istiod's "HTTP monitoring" port


def split_address(address: str) -> tuple[str, int]:
    """`HOST:PORT` (`[v6]:PORT` too) -> (host, port); ValueError names the bad address."""
    host, sep, port = address.rpartition(":")
    host = host.removeprefix("[").removesuffix("]")
    if not sep or not host or not port.isdigit() or int(port) > 65535:
        raise ValueError(f"metrics address {address!r} is not HOST:PORT")
    return host, int(port)


def make_app(ready: Callable[[], bool]) -> web.Application:
    app = web.Application()
    app.add_routes(monitoring.routes(ready))
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
