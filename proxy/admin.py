"""The proxy's admin HTTP endpoints, like ztunnel's admin port (15000, localhost only).

- GET  /config_dump    the proxy's state as JSON (what it serves, per pod, with counters)
- GET  /healthz/ready  200 "ready" once the proxy can serve, else 503
- GET  /metrics        Prometheus text from the default registry
- POST /quitquitquit   start a graceful shutdown (POST only, so a stray GET or a crawler
                       cannot stop the node's proxy)
- GET  /server_info    version, pid, pod, uptime, readiness (`meshnode version`, `status`)
- GET  /debug/workloads|services|policies|certificates|connections|traffic|egress
                       the views of `meshnode proxy-config` (as `istioctl ztunnel-config`):
                       the mesh table's records, the certificates with their chains (never
                       a key), every live relayed connection, the traffic rules with the
                       router's state (pool usage, ejections) and the Sidecar egress
                       policies; VIEWS below

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
import dataclasses
import datetime as dt
import enum
import inspect
import json
import os
import time
from typing import Any, Protocol

import structlog
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, generate_latest

from core.ports import ADMIN_PORT
from core.version import info

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
_STARTED_KEY: web.AppKey[float] = web.AppKey("started", float)


async def _config_dump(request: web.Request) -> web.Response:
    dump = request.app[STATE_KEY].config_dump()
    # default=str: addresses, enums and paths in the dump should print, not fail the call.
    return web.Response(text=json.dumps(dump, indent=2, sort_keys=True, default=str),
                        content_type="application/json")


# -- the views of `meshnode proxy-config` ---------------------------------------------------
#
# They read the proxy's own objects (ProxyServer: `mesh`, the table and certificate store it
# shares with the pod proxies, and `manager`, the pods it serves), duck-typed: an admin state
# without them (a test's) answers empty views.

def _plain(v: Any) -> Any:
    """A record of the mesh model as JSON data: enums by name, tuples as lists, networks
    and addresses as strings."""
    if isinstance(v, enum.Enum):
        return v.name.lower()
    if dataclasses.is_dataclass(v) and not isinstance(v, type):
        return {f.name: _plain(getattr(v, f.name)) for f in dataclasses.fields(v)}
    if isinstance(v, list | tuple):
        return [_plain(x) for x in v]
    if isinstance(v, dict):
        return {str(k): _plain(x) for k, x in v.items()}
    if isinstance(v, str | int | float | bool) or v is None:
        return v
    return str(v)


def _table(state: Any) -> Any:
    mesh = getattr(state, "mesh", None)
    return getattr(mesh, "table", None)


def _served(state: Any) -> list[Any]:
    manager = getattr(state, "manager", None)
    return list(getattr(manager, "pods", {}).values())


def _identity_of(pod: Any) -> str:
    meshpath = getattr(pod, "meshpath", None)
    if meshpath is None:
        return ""
    try:
        return str(meshpath.identity())
    except Exception:  # a view never fails the admin call
        return ""


def workloads_view(state: Any) -> list[dict[str, Any]]:
    """Every workload the proxy knows: the mesh table's (from the control plane, through
    the agent), marked `local` when this proxy serves it, then the served pods the table
    does not name (no control plane, or a pod outside the mesh)."""
    served = _served(state)
    served_ips = {ip for p in served for ip in getattr(p, "ips", ())}
    out: list[dict[str, Any]] = []
    named: set[tuple[str, str]] = set()
    table = _table(state)
    for w in (table.workloads.values() if table is not None else ()):
        local = bool(served_ips & set(w.addresses))
        if local:
            named.add((w.namespace, w.name))
        out.append({"uid": w.uid, "name": w.name, "namespace": w.namespace,
                    "addresses": list(w.addresses), "node": w.node,
                    "protocol": "HBONE" if w.uses_hbone else "TCP",
                    "identity": w.spiffe_id, "service_account": w.service_account or "default",
                    "services": [key for key, _ in w.services],
                    "status": "healthy" if w.healthy else "unhealthy",
                    "waypoint": _plain(w.waypoint), "cluster": w.cluster,
                    "locality": "/".join(x for x in w.locality if x),
                    "canonical_name": w.canonical_name, "local": local, "in_mesh": True})
    for p in served:
        if (p.namespace, p.name) in named:
            continue
        out.append({"uid": getattr(p, "uid", ""), "name": p.name, "namespace": p.namespace,
                    "addresses": sorted(getattr(p, "ips", ())), "node": "",
                    "protocol": "TCP", "identity": _identity_of(p),
                    "service_account": getattr(p, "service_account", ""), "services": [],
                    "status": "", "waypoint": None, "cluster": "", "locality": "",
                    "canonical_name": "", "local": True, "in_mesh": False})
    return sorted(out, key=lambda w: (w["namespace"], w["name"], w["uid"]))


def services_view(state: Any) -> list[dict[str, Any]]:
    table = _table(state)
    if table is None:
        return []
    out = []
    for key, s in table.services.items():
        eps = [table.workloads[uid] for uid in table._endpoints.get(key, ())
               if uid in table.workloads]
        out.append({"key": key, "name": s.name, "namespace": s.namespace,
                    "hostname": s.hostname, "vips": [v.address for v in s.vips],
                    "ports": [{"port": p.service_port, "target_port": p.target_port or
                               p.service_port} for p in s.ports],
                    "endpoints": [{"uid": w.uid, "name": w.name, "namespace": w.namespace,
                                   "addresses": list(w.addresses),
                                   "healthy": w.healthy} for w in eps],
                    "healthy_endpoints": sum(w.healthy for w in eps),
                    "subject_alt_names": list(s.subject_alt_names),
                    "waypoint": _plain(s.waypoint),
                    "load_balancing": {"mode": _plain(s.lb_mode),
                                       "routing_preference": _plain(s.lb_routing_preference),
                                       "health_policy": _plain(s.lb_health_policy)}})
    return sorted(out, key=lambda s: s["key"])


def policies_view(state: Any) -> list[dict[str, Any]]:
    table = _table(state)
    if table is None:
        return []
    out = []
    for key, pol in table.policies.items():
        d = _plain(pol)
        d["key"] = key
        out.append(d)
    return sorted(out, key=lambda p: p["key"])


def _cert_json(cert: Any, now: dt.datetime) -> dict[str, Any]:
    from cryptography import x509

    try:
        ca = cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    except x509.ExtensionNotFound:
        ca = False
    try:
        sans = [str(u) for u in cert.extensions.get_extension_for_class(
            x509.SubjectAlternativeName).value.get_values_for_type(
            x509.UniformResourceIdentifier)]
    except x509.ExtensionNotFound:
        sans = []
    return {"subject": cert.subject.rfc4514_string(), "issuer": cert.issuer.rfc4514_string(),
            "serial": f"{cert.serial_number:x}", "ca": ca, "uri_sans": sans,
            "not_before": cert.not_valid_before_utc.isoformat(),
            "not_after": cert.not_valid_after_utc.isoformat(),
            "expires_in_seconds": int((cert.not_valid_after_utc - now).total_seconds())}


def certificates_view(state: Any) -> list[dict[str, Any]]:
    """Per identity: the leaf's serial and validity, its chain and the trust roots (the
    certificates only: the key never leaves the store)."""
    from cryptography import x509

    from core.spiffe import parse

    certs = getattr(getattr(state, "mesh", None), "certs", None)
    if certs is None:
        return []
    now = dt.datetime.now(dt.UTC)
    out = []
    for entry in certs.dump():
        item: dict[str, Any] = {**entry, "state": "valid", "chain": [], "roots": []}
        try:
            bundle = certs.bundle(parse(entry["identity"]))
        except LookupError as exc:  # NoCertificate: expired (kept until replaced)
            item["state"] = "expired" if "expired" in str(exc) else "missing"
        else:
            if bundle.not_before > now:
                item["state"] = "not yet valid"
            item["chain"] = [_cert_json(c, now)
                             for c in x509.load_pem_x509_certificates(bundle.chain_pem)]
            item["roots"] = [_cert_json(c, now)
                             for c in x509.load_pem_x509_certificates(bundle.roots_pem)]
        item["expires_in_seconds"] = int(
            (dt.datetime.fromisoformat(entry["not_after"]) - now).total_seconds())
        out.append(item)
    return out


def connections_view(state: Any) -> list[dict[str, Any]]:
    """Every live connection the proxy relays, per pod: source and destination addresses,
    their identities (the pod's own; the peer's as the mesh table names its address, ""
    outside the mesh), the transport to the peer and the bytes so far."""
    table = _table(state)
    out = []
    for pod in _served(state):
        mine = _identity_of(pod)
        for c in list(getattr(pod, "conns", {}).values()):
            d = c.dump()
            peer_ip = (c.dst if d["direction"] == "outbound" else c.src)[0]
            peer = table.workload_by_ip(peer_ip) if table is not None else None
            peer_id = peer.spiffe_id if peer is not None else ""
            src_id, dst_id = (mine, peer_id) if d["direction"] == "outbound" \
                else (peer_id, mine)
            out.append({"pod": f"{pod.namespace}/{pod.name}", **d,
                        "source_identity": src_id, "destination_identity": dst_id,
                        "peer_workload": f"{peer.namespace}/{peer.name}" if peer else "",
                        "protocol": "HBONE" if peer is not None and peer.uses_hbone
                        and mine else "TCP"})
    return sorted(out, key=lambda c: (c["pod"], c["id"]))


def _percent(weight: int, total: int, n: int) -> float:
    if n == 1:
        return 100.0
    return round(100.0 * weight / total, 2) if total else 0.0


def traffic_view(state: Any) -> list[dict[str, Any]]:
    """Per service with traffic rules: its VirtualService routes (matches, destinations with
    their weights as shares), its DestinationRule (policy, subsets and how many endpoints
    each selects), and the router's clusters for it: effective policy, connections open
    against maxConnections, overflows, outlier detection per endpoint (ejected or not)."""
    table = _table(state)
    if table is None or not hasattr(table, "service_traffic"):
        return []
    from proxy.traffic.subsets import members

    clusters: dict[str, list[dict[str, Any]]] = {}
    for key, c in table.router.clusters():
        od = c.get("outlier_detection") or {}
        clusters.setdefault(key.service, []).append({
            "name": str(key), "port": key.port, "subset": key.subset, "lb": c["lb"],
            "max_connections": c["max_connections"], "connect_timeout": c["connect_timeout"],
            "open": c["open"], "overflows": c["overflows"],
            "ejected": sorted(uid for uid, h in od.items() if h["ejected"]),
            "outlier_detection": od or None})
    out = []
    keys = sorted(set(table.service_traffic) | set(clusters))
    for key in keys:
        t = table.service_traffic.get(key)
        svc = table.services.get(key)
        eps = table.endpoints(svc) if svc is not None else ()
        routes = []
        for r in (t.routes if t is not None else ()):
            total, n = r.total_weight, len(r.destinations)
            routes.append({"name": r.name, "kind": _plain(r.kind),
                           "matches": [{k: v for k, v in _plain(m).items() if v}
                                       for m in r.matches],
                           "destinations": [{"service": d.service, "subset": d.subset,
                                             "port": d.port, "weight": d.weight,
                                             "percent": _percent(d.weight, total, n)}
                                            for d in r.destinations]})
        subsets = [{"name": s.name, "labels": dict(s.labels),
                    "endpoints": len(members(eps, s, table.labels)),
                    "traffic_policy": _plain(s.traffic_policy)}
                   for s in (t.subsets if t is not None else ())]
        out.append({"service": key, "namespace": key.split("/", 1)[0],
                    "virtual_service": t.virtual_service if t is not None else "",
                    "destination_rule": t.destination_rule if t is not None else "",
                    "routes": routes, "subsets": subsets,
                    "traffic_policy": _plain(t.traffic_policy) if t is not None else None,
                    "clusters": clusters.get(key, [])})
    return out


def egress_view(state: Any) -> list[dict[str, Any]]:
    """The Sidecar egress policies: imported hosts per port, and outboundTrafficPolicy."""
    table = _table(state)
    if table is None or not hasattr(table, "egress"):
        return []
    return [{"key": key, "namespace": e.namespace, "name": e.name,
             "mode": _plain(e.mode).upper(), "selector": dict(e.selector),
             "listeners": [{"port": ln.port, "hosts": [str(h) for h in ln.hosts]}
                           for ln in e.listeners]}
            for key, e in sorted(table.egress.items())]


VIEWS = {"workloads": workloads_view, "services": services_view,
         "policies": policies_view, "certificates": certificates_view,
         "connections": connections_view, "traffic": traffic_view, "egress": egress_view}


async def _view(request: web.Request) -> web.Response:
    view = VIEWS[request.match_info["view"]]
    return web.Response(text=json.dumps(view(request.app[STATE_KEY]), indent=2, default=str),
                        content_type="application/json")


async def _server_info(request: web.Request) -> web.Response:
    state = request.app[STATE_KEY]
    return web.json_response({**info("proxy"), "pid": os.getpid(),
                              "pod": os.environ.get("POD_NAME", ""),
                              "uptime_seconds": round(time.time() - request.app[_STARTED_KEY],
                                                      1),
                              "ready": state.ready()})


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
    app[_STARTED_KEY] = time.time()
    app.router.add_get("/config_dump", _config_dump)
    app.router.add_get("/server_info", _server_info)
    app.router.add_get("/debug/{view:" + "|".join(VIEWS) + "}", _view)
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
