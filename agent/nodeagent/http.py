"""Health, readiness, Prometheus metrics and a debug view of the pods, over HTTP.

- GET /healthz /readyz /metrics      core/monitoring.py
- GET /debug/pods                    every pod record (agent/nodeagent/pods.py)
- GET /debug/pods/{namespace}/{name} one pod's records, with the capture the agent used
                                     (`meshnode redirect show|diff --pod`); 404 if unknown
- GET /debug/mesh                    the control-plane connection (xDS) and what it holds
- GET /debug/status                  one answer for `meshnode status`: readiness, pods by
                                     state, drift and reconcile counters, the proxies, xDS
- GET /debug/version                 the agent's version (`meshnode version`)
"""

from __future__ import annotations

import dataclasses
import os
import socket
import time
from collections.abc import Callable, Mapping
from typing import Any

from aiohttp import web
from prometheus_client import REGISTRY

from agent.nodeagent.pods import PodRecord, PodState, PodStore
from agent.redirect.spec import RedirectSpec
from core import monitoring
from core.version import info

# A pod's capture overrides -> the spec the agent applies (Enroller.spec_for).
SpecFor = Callable[[Mapping[str, Any]], RedirectSpec]


def spec_json(spec: RedirectSpec) -> dict[str, Any]:
    """A RedirectSpec as plain data (tuples as lists, the profile as its name)."""
    out: dict[str, Any] = {}
    for f in dataclasses.fields(spec):
        v = getattr(spec, f.name)
        out[f.name] = list(v) if isinstance(v, tuple) else \
            (v.value if hasattr(v, "value") else v)
    return out


def _sample(name: str, labels: dict[str, str] | None = None) -> float:
    return REGISTRY.get_sample_value(name, labels or {}) or 0.0


def _samples(name: str, label: str) -> dict[str, float]:
    """label value -> value, of every sample of `name` (a labelled counter)."""
    out: dict[str, float] = {}
    for metric in REGISTRY.collect():
        for s in metric.samples:
            if s.name == name and label in s.labels:
                out[s.labels[label]] = s.value
    return out


def make_app(store: PodStore, ready: Callable[[], bool],
             mesh: Callable[[], dict[str, Any]] | None = None, *,
             spec_for: SpecFor | None = None) -> web.Application:
    """`spec_for` (the Enroller's) lets /debug/pods/{ns}/{name} say the exact spec of a pod;
    without it the answer has the pod's recorded capture overrides only, and the reader
    completes them from the agent's config (cli/redirect_cmd.py)."""
    started = time.time()

    async def pods(_: web.Request) -> web.Response:
        return web.json_response([p.to_json() for p in store.all()])

    async def pod(request: web.Request) -> web.Response:
        ns, name = request.match_info["namespace"], request.match_info["name"]
        recs: list[PodRecord] = [p for p in store.all() if (p.namespace, p.name) == (ns, name)]
        if not recs:
            known = sorted(f"{p.namespace}/{p.name}" for p in store.all())
            return web.json_response({"error": f"pod {ns}/{name} is not known to this agent",
                                      "known": known}, status=404)
        out = []
        for rec in recs:
            d = rec.to_json()
            if spec_for is not None:
                try:
                    d["spec"] = spec_json(spec_for(rec.capture))
                except (ValueError, TypeError) as exc:  # a record of an older agent
                    d["spec_error"] = str(exc)
            out.append(d)
        return web.json_response(out)

    async def mesh_view(_: web.Request) -> web.Response:
        return web.json_response(mesh() if mesh is not None else {"controlplane": None})

    app = web.Application()
    app.add_routes([*monitoring.routes(ready), web.get("/debug/pods", pods),
                    web.get("/debug/pods/{namespace}/{name}", pod),
                    web.get("/debug/mesh", mesh_view),
                    *status_routes(store, ready, mesh, started)])
    return app


def status_routes(store: PodStore, ready: Callable[[], bool],
                  mesh: Callable[[], dict[str, Any]] | None,
                  started: float) -> list[web.RouteDef]:
    """/debug/status and /debug/version: a summary with no secrets and no pod's capture
    details, served on the loopback debug port and on the metrics listener too (which the
    API server's pod proxy reaches: `meshnode status --kubeconfig`)."""
    async def status(_: web.Request) -> web.Response:
        recs = store.all()
        by_state = {s.value: sum(p.state is s for p in recs) for s in PodState}
        return web.json_response({
            **info("agent"),
            "node": os.environ.get("NODE_NAME") or socket.gethostname(),
            "pod": os.environ.get("POD_NAME", ""),
            "pid": os.getpid(),
            "uptime_seconds": round(time.time() - started, 1),
            "ready": ready(),
            "pods": {"total": len(recs), **by_state},
            "backends": sorted({p.backend for p in recs if p.backend}),
            "drift": {
                "repairs": _sample("meshnode_drift_repairs_total"),
                "reconcile_events": _samples("meshnode_reconcile_events_total", "type"),
                "pods_with_detail": sorted(f"{p.namespace}/{p.name}: {p.detail}"
                                           for p in recs if p.detail),
            },
            "proxies_connected": _sample("meshnode_proxies_connected"),
            "cni_install_ready": REGISTRY.get_sample_value("meshnode_cni_install_ready"),
            "controlplane": mesh() if mesh is not None else None,
        })

    async def version(_: web.Request) -> web.Response:
        return web.json_response(info("agent"))

    return [web.get("/debug/status", status), web.get("/debug/version", version)]

