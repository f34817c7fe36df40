"""The agent's metrics listener (core/stats.py: /metrics and /readyz on `metrics_address`,
0.0.0.0:15022 by default, apart from the loopback debug HTTP on `http_address`), and the one
metric only the running agent can give it: whether its discovery stream is up."""

from __future__ import annotations

from collections.abc import Callable, Iterable

from aiohttp import web
from prometheus_client import REGISTRY, Gauge

from core.stats import StatsServer

# Registered only by an agent with a control plane (`serve(..., connected=...)`): an agent
# without one has no stream to lose, and no series that an alert would read as "down".
XDS_CONNECTED = Gauge(
    "meshnode_agent_xds_connected", "1 while the agent's Delta ADS stream to the control "
    "plane is up (0 while it reconnects; meshnode_agent_xds_ready stays 1 meanwhile)",
    registry=None)
_registered = False


def serve(address: str, ready: Callable[[], bool],
          connected: Callable[[], bool] | None = None,
          routes: Iterable[web.RouteDef] = ()) -> StatsServer:
    """The listener, not started yet; `connected`: the agent's discovery stream state;
    `routes`: its summary routes (agent/nodeagent/http.py status_routes)."""
    global _registered
    if connected is not None:
        XDS_CONNECTED.set_function(lambda: 1.0 if connected() else 0.0)
        if not _registered:
            REGISTRY.register(XDS_CONNECTED)
            _registered = True
    return StatsServer(address, ready, ready_path="/readyz", routes=routes)
