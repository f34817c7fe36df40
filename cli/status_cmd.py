"""`meshnode status`: is this node's mesh working? And with `--kubeconfig`: every node's.

On the node it reads the agent's /debug/status and the proxy's /config_dump and
/server_info (their local HTTP endpoints); across the cluster it reads each agent's
/debug/status through the API server's pod proxy (cli/kube.py, which lists the RBAC).

Exit 0: everything is up and in sync; 1: something is not (each problem is listed, with
what to look at); 2: the agent does not answer (or the cluster cannot be read).
"""

from __future__ import annotations

import argparse
import asyncio
from typing import Any

from cli import kube, nodeapi
from cli.errors import UserError
from cli.output import add_output_flag, emit, table_text


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("status", help="agent, proxy, control-plane connection, pods, drift: "
                                      "this node, or every node with --kubeconfig")
    nodeapi.add_node_flags(p)
    kube.add_cluster_flags(p, "read every node's agent through this cluster's API server",
                           in_cluster=True)
    add_output_flag(p)
    p.set_defaults(handler=cmd_status)


def cmd_status(a: argparse.Namespace) -> int:
    if a.kubeconfig or a.in_cluster:
        return _cluster(a)
    return _node(a)


# -- this node --------------------------------------------------------------------------------

def node_status(agent: nodeapi.Daemon, proxy: nodeapi.Daemon) -> dict[str, Any]:
    """The node's status as data, with `problems`: what is wrong and where to look."""
    a = agent.json("/debug/status")  # NotRunning: the agent is the node's core
    problems: list[str] = []
    out: dict[str, Any] = {"node": a.get("node", ""), "agent": {"address": agent.address,
                                                                "running": True, **a}}
    if not a.get("ready"):
        # Ready = CNI socket served, the CNI install valid (when the agent installs it),
        # the first xDS response (with a control plane).
        problems.append("agent not ready: `curl " + agent.url + "/readyz`; the agent log "
                        "says what it waits for (CNI install: `meshnode install status`; "
                        "the first xDS response)")
    pods = a.get("pods") or {}
    if pods.get("pending"):
        problems.append(f"{pods['pending']} pod(s) pending: `meshnode pods` shows each "
                        "one's detail (enroll_failed/repair_failed in the agent log)")
    for line in (a.get("drift") or {}).get("pods_with_detail") or []:
        problems.append(f"pod {line}")
    try:
        info = proxy.json("/server_info")
        dump = proxy.json("/config_dump")
    except UserError as exc:
        out["proxy"] = {"address": proxy.address, "running": False, "error": str(exc)}
        problems.append(f"node proxy: {exc}")
    else:
        served = dump.get("workloads") or []
        mesh = dump.get("mesh")
        out["proxy"] = {"address": proxy.address, "running": True, **info,
                        "agent_connected": (dump.get("agent") or {}).get("connected"),
                        "snapshot_received": (dump.get("agent") or {}).get(
                            "snapshot_received"),
                        "pods_served": len(served),
                        "connections": sum(len(w.get("connections") or []) for w in served),
                        "mesh": None if mesh is None else {
                            k: mesh.get(k) for k in ("connected", "synced", "messages",
                                                     "errors")},
                        "certificates": [] if mesh is None else mesh.get("certificates")}
        if not info.get("ready"):
            problems.append("node proxy not ready: is it connected to the agent (ZDS) and, "
                            "with a control plane, to mesh.sock? `curl " + proxy.url +
                            "/config_dump`")
        unserved = pods.get("enrolled", 0) + pods.get("redirected", 0) - len(served)
        if unserved > 0:
            problems.append(f"{unserved} captured pod(s) not served by this proxy: "
                            "`meshnode pods` (PROXY column)")
    cp = a.get("controlplane")
    out["controlplane"] = cp
    if cp is not None and cp.get("controlplane"):
        if not cp.get("connected"):
            problems.append(f"control plane {cp['controlplane']} not connected: "
                            f"{cp.get('last_error') or 'no error recorded yet'}")
        elif not cp.get("ready"):
            problems.append(f"control plane {cp['controlplane']}: connected, first sync "
                            "not complete")
        if cp.get("last_nack"):
            problems.append(f"last NACK of a control-plane push: {cp['last_nack']}")
        for ident, st in (cp.get("identities") or {}).items():
            # ztunnel's states (agent/identity/manager.py): Available, Initializing,
            # Unavailable: <why>
            if str(st).startswith("Unavailable") and "no longer needed" not in str(st):
                problems.append(f"certificate for {ident}: {st}")
    out["problems"] = problems
    return out


def _yes(v: Any) -> str:
    return "yes" if v else "no"


def node_table(st: dict[str, Any]) -> str:
    ag, px, cp = st["agent"], st.get("proxy") or {}, st.get("controlplane")
    pods = ag.get("pods") or {}
    drift = ag.get("drift") or {}
    rows = [
        {"what": "Node", "state": "", "detail": st.get("node", "")},
        {"what": "Agent", "state": "OK" if ag.get("ready") else "NOT READY",
         "detail": f"{ag.get('version', '?')}, up {ag.get('uptime_seconds', 0):.0f}s, "
                   f"{ag['address']}"},
    ]
    if px.get("running"):
        mesh = px.get("mesh")
        rows.append({"what": "Proxy", "state": "OK" if px.get("ready") else "NOT READY",
                     "detail": f"{px.get('version', '?')}, {px['address']}, agent (ZDS) "
                               f"connected: {_yes(px.get('agent_connected'))}, mesh.sock "
                               + ("-" if mesh is None else
                                  f"synced: {_yes(mesh.get('synced'))}")})
    else:
        rows.append({"what": "Proxy", "state": "DOWN", "detail": px.get("error", "")})
    if cp is None or not cp.get("controlplane"):
        rows.append({"what": "Control plane", "state": "-",
                     "detail": "none configured (capture only, no mesh)"})
    else:
        state = "OK" if cp.get("connected") and cp.get("ready") else \
            ("SYNCING" if cp.get("connected") else "DISCONNECTED")
        rows.append({"what": "Control plane", "state": state,
                     "detail": f"{cp['controlplane']}: xDS connected {_yes(cp.get('connected'))}"
                               f", synced {_yes(cp.get('ready'))}, {cp.get('responses', 0)} "
                               f"pushes, {cp.get('acks', 0)} ACK, {cp.get('nacks', 0)} NACK"
                               + (f" (last: {cp['last_nack']})" if cp.get("last_nack")
                                  else "")})
        rows.append({"what": "Mesh", "state": "",
                     "detail": f"{cp.get('workloads', 0)} workloads, {cp.get('services', 0)} "
                               f"services, {cp.get('policies', 0)} policies"})
    rows.append({"what": "Pods", "state": "",
                 "detail": f"{pods.get('enrolled', 0)} enrolled, {pods.get('redirected', 0)} "
                           f"redirected, {pods.get('pending', 0)} pending; backend "
                           f"{', '.join(ag.get('backends') or []) or '-'}; served by the "
                           f"proxy: {px.get('pods_served', '-')}, live connections: "
                           f"{px.get('connections', '-')}"})
    events = drift.get("reconcile_events") or {}
    rows.append({"what": "Drift", "state": "",
                 "detail": f"{drift.get('repairs', 0):.0f} repairs; reconcile: "
                           + (", ".join(f"{k} {v:.0f}" for k, v in sorted(events.items()))
                              or "-")})
    certs = px.get("certificates") or []
    if certs:
        rows.append({"what": "Certificates", "state": "",
                     "detail": ", ".join(f"{c['identity']} (until {c['not_after']})"
                                         for c in certs)})
    text = table_text(rows, ["what", "state", "detail"], ["", "", ""]).lstrip("\n")
    if st["problems"]:
        text += "\nProblems:\n" + "".join(f"  ! {p}\n" for p in st["problems"])
    else:
        text += "\nNo problems found.\n"
    return text


def _node(a: argparse.Namespace) -> int:
    st = node_status(nodeapi.agent_of(a), nodeapi.proxy_of(a))
    emit(st, a.output, table=node_table(st))
    return 1 if st["problems"] else 0


# -- the cluster --------------------------------------------------------------------------------

async def cluster_status(cluster: kube.Cluster, namespace: str,
                         port: int) -> dict[str, Any]:
    pods = await cluster.pods(namespace, kube.AGENT_SELECTOR)
    if not pods:
        raise UserError(f"no meshnode agent pods ({kube.AGENT_SELECTOR}) in namespace "
                        f"{namespace}: is meshnode installed there? (docs/install.md; "
                        "-n NAMESPACE for another)")

    async def one(pod: dict[str, Any]) -> dict[str, Any]:
        meta = pod["metadata"]
        row: dict[str, Any] = {"node": (pod.get("spec") or {}).get("nodeName", ""),
                               "pod": meta["name"], "pod_ready": kube.pod_ready(pod),
                               "phase": (pod.get("status") or {}).get("phase", "")}
        r = await cluster.pod_proxy(namespace, meta["name"], port, "/debug/status")
        if r.status == 200 and isinstance(r.json(), dict):
            row["agent"] = r.json()
        else:
            row["error"] = (f"HTTP {r.status}: {r.message()}" if r.status
                            else r.message())
            if r.status == 403:
                row["error"] += " (RBAC: `get pods/proxy` in " + namespace + ")"
        return row

    rows = list(await asyncio.gather(*(one(p) for p in pods)))
    problems = []
    for row in rows:
        ag = row.get("agent")
        where = f"node {row['node']} ({row['pod']})"
        if ag is None:
            problems.append(f"{where}: agent not reachable: {row['error']}")
            continue
        if not ag.get("ready"):
            problems.append(f"{where}: agent not ready")
        cp = ag.get("controlplane") or {}
        if cp.get("controlplane") and not (cp.get("connected") and cp.get("ready")):
            problems.append(f"{where}: control plane "
                            + ("not synced" if cp.get("connected") else
                               f"disconnected ({cp.get('last_error') or '-'})"))
        if cp.get("last_nack"):
            problems.append(f"{where}: last NACK: {cp['last_nack']}")
        if (ag.get("pods") or {}).get("pending"):
            problems.append(f"{where}: {ag['pods']['pending']} pod(s) pending")
        if not ag.get("proxies_connected"):
            problems.append(f"{where}: no node proxy connected to the agent (ZDS)")
    return {"namespace": namespace, "nodes": rows, "problems": problems}


def cluster_table(st: dict[str, Any]) -> str:
    rows = []
    for r in st["nodes"]:
        ag = r.get("agent")
        if ag is None:
            rows.append({"node": r["node"], "agent": r["pod"], "ready": "?", "version": "?",
                         "xds": "unreachable", "pods": "?", "drift": "?", "proxy": "?"})
            continue
        cp = ag.get("controlplane") or {}
        pods = ag.get("pods") or {}
        xds = "-" if not cp.get("controlplane") else (
            ("synced" if cp.get("ready") else "syncing") if cp.get("connected")
            else "disconnected")
        if cp.get("controlplane"):
            xds += f" ({cp.get('acks', 0)} ACK, {cp.get('nacks', 0)} NACK)"
        rows.append({"node": r["node"], "agent": r["pod"], "ready": _yes(ag.get("ready")),
                     "version": ag.get("version", "?"), "xds": xds,
                     "pods": f"{pods.get('enrolled', 0)}/{pods.get('total', 0)}",
                     "drift": f"{(ag.get('drift') or {}).get('repairs', 0):.0f}",
                     "proxy": "connected" if ag.get("proxies_connected") else "none"})
    text = table_text(rows, ["node", "agent", "ready", "version", "xds", "pods", "drift",
                             "proxy"],
                      ["NODE", "AGENT POD", "READY", "VERSION", "XDS", "PODS ENROLLED",
                       "DRIFT REPAIRS", "PROXY"])
    if st["problems"]:
        text += "\nProblems:\n" + "".join(f"  ! {p}\n" for p in st["problems"])
    else:
        text += f"\nAll {len(rows)} node(s) connected and in sync.\n"
    return text


def _cluster(a: argparse.Namespace) -> int:
    st = kube.run(a.kubeconfig or "",
                  lambda c: cluster_status(c, a.namespace, a.agent_port))
    emit(st, a.output, table=cluster_table(st))
    return 1 if st["problems"] else 0
