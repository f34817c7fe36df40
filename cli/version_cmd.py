"""`meshnode version`: this command's version and, when they answer, the node's agent and
proxy's (their /debug/version and /server_info), the control plane the agent is connected
to, and with `--kubeconfig` every agent's and the control plane's across the cluster (as
`istioctl version`). A daemon that does not answer is reported as such, not an error:
the client's version is always printed."""

from __future__ import annotations

import argparse
import asyncio
from typing import Any

from cli import kube, nodeapi
from cli.errors import UserError
from cli.output import add_output_flag, emit, table_text
from core.version import info


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("version", help="client version, and the running agent's, proxy's "
                                       "and control plane's")
    p.add_argument("--client", action="store_true", help="the client's version only")
    p.add_argument("--short", action="store_true", help="versions only, one per line")
    nodeapi.add_node_flags(p)
    kube.add_cluster_flags(p, "also every agent's and the control plane's in this cluster")
    add_output_flag(p)
    p.set_defaults(handler=cmd_version)


def _remote(daemon: nodeapi.Daemon, path: str) -> dict[str, Any]:
    try:
        got = daemon.json(path, timeout=2.0)
    except UserError as exc:
        return {"address": daemon.address, "running": False, "error": str(exc)}
    return {"address": daemon.address, "running": True, **got}


async def _cluster(c: kube.Cluster, namespace: str, port: int) -> dict[str, Any]:
    agents = await c.pods(namespace, kube.AGENT_SELECTOR)
    cps = await c.pods(namespace, kube.CONTROLPLANE_SELECTOR)
    proxies = await c.pods(namespace, kube.PROXY_SELECTOR)

    async def agent(pod: dict[str, Any]) -> dict[str, Any]:
        r = await c.pod_proxy(namespace, pod["metadata"]["name"], port, "/debug/version")
        got = r.json() if r.status == 200 else None
        return {"pod": pod["metadata"]["name"],
                "node": (pod.get("spec") or {}).get("nodeName", ""),
                "version": got.get("version") if isinstance(got, dict) else None,
                "image": kube.image_tag(pod, "agent"),
                **({} if isinstance(got, dict) else
                   {"error": f"HTTP {r.status}: {r.message()}" if r.status else r.message()})}

    return {"agents": list(await asyncio.gather(*(agent(p) for p in agents))),
            # Each replica's image tag, as istioctl reads istiod's off its Deployment (the
            # replica an agent follows says its version over xDS: the local view).
            "controlplane": [{"pod": p["metadata"]["name"], "image": kube.image_tag(p)}
                             for p in cps],
            "proxies": [{"pod": p["metadata"]["name"],
                         "node": (p.get("spec") or {}).get("nodeName", ""),
                         "image": kube.image_tag(p)} for p in proxies]}


def cmd_version(a: argparse.Namespace) -> int:
    data: dict[str, Any] = {"client": info("cli")}
    if not a.client:
        agent = _remote(nodeapi.agent_of(a), "/debug/version")
        data["agent"] = agent
        data["proxy"] = _remote(nodeapi.proxy_of(a), "/server_info")
        cp: dict[str, Any] | None = None
        if agent["running"]:
            try:
                mesh = nodeapi.agent_of(a).json("/debug/mesh", timeout=2.0)
            except UserError:
                mesh = {}
            if mesh.get("controlplane"):
                ident = mesh.get("controlplane_identity") or {}
                cp = {"address": mesh["controlplane"], "connected": bool(mesh.get("connected")),
                      "version": ident.get("version"), "id": ident.get("id")}
        data["controlplane"] = cp
        if a.kubeconfig:
            data["cluster"] = kube.run(a.kubeconfig,
                                       lambda c: _cluster(c, a.namespace, a.agent_port))
    if a.short and a.output == "table":
        print(data["client"]["version"])
        for k in ("agent", "proxy"):
            if (data.get(k) or {}).get("running"):
                print(f"{k}: {data[k]['version']}")
        return 0
    emit(data, a.output, table=_table(data))
    return 0


def _table(d: dict[str, Any]) -> str:
    rows = [{"what": "client", "version": d["client"]["version"],
             "detail": f"python {d['client']['python']}"}]
    for k, name in (("agent", "agent"), ("proxy", "node proxy")):
        r = d.get(k)
        if r is None:
            continue
        rows.append({"what": name, "version": r.get("version", "-") if r["running"] else "-",
                     "detail": f"{r['address']}" + ("" if r["running"] else
                                                    " (not running or not reachable)")})
    cp = d.get("controlplane")
    if "agent" in d:
        rows.append({"what": "control plane",
                     "version": (cp or {}).get("version") or "-",
                     "detail": "none configured for the agent" if cp is None else
                     f"{cp['address']} ({'connected' if cp['connected'] else 'not connected'}"
                     + (f", replica {cp['id']}" if cp.get("id") else "") + ")"})
    for ag in (d.get("cluster") or {}).get("agents", []):
        rows.append({"what": f"agent {ag['pod']}", "version": ag.get("version") or "-",
                     "detail": f"node {ag['node']}, image {ag['image']}"
                               + (f", {ag['error']}" if ag.get("error") else "")})
    for p in (d.get("cluster") or {}).get("proxies", []):
        rows.append({"what": f"proxy {p['pod']}", "version": p["image"],
                     "detail": f"node {p['node']} (image tag)"})
    for cp_pod in (d.get("cluster") or {}).get("controlplane", []):
        rows.append({"what": f"control plane {cp_pod['pod']}", "version": cp_pod["image"],
                     "detail": "image tag"})
    return table_text(rows, ["what", "version", "detail"], ["COMPONENT", "VERSION", "DETAIL"])
