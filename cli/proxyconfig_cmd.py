"""`meshnode proxy-config workloads|services|policies|certificates|connections|traffic|egress`:
what the
node proxy holds, from its admin port (proxy/admin.py `/debug/<view>`), as `istioctl
ztunnel-config` shows ztunnel's."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any

from cli import nodeapi
from cli.errors import UserError
from cli.output import add_output_flag, emit, table_text

Rows = list[dict[str, Any]]


def _join(v: Any) -> str:
    return ",".join(str(x) for x in v) if v else "-"


def _short_time(iso: str) -> str:
    return iso.replace("+00:00", "Z")[:20] if iso else "-"


def _workloads(rows: Rows) -> str:
    return table_text([{**w, "addresses": _join(w["addresses"]), "node": w["node"] or "-",
                        "local": "yes" if w["local"] else ""} for w in rows],
                      ["namespace", "name", "addresses", "node", "protocol", "identity",
                       "local"],
                      ["NAMESPACE", "NAME", "ADDRESS", "NODE", "PROTOCOL", "IDENTITY",
                       "SERVED HERE"])


def _services(rows: Rows) -> str:
    return table_text([{
        "namespace": s["namespace"], "name": s["hostname"], "vips": _join(s["vips"]),
        "ports": _join(f"{p['port']}->{p['target_port']}" for p in s["ports"]),
        "endpoints": f"{s['healthy_endpoints']}/{len(s['endpoints'])}",
        "lb": s["load_balancing"]["mode"]} for s in rows],
        ["namespace", "name", "vips", "ports", "endpoints", "lb"],
        ["NAMESPACE", "SERVICE", "VIP", "PORTS", "ENDPOINTS (HEALTHY/ALL)", "LB MODE"])


def _policies(rows: Rows) -> str:
    return table_text([{
        "namespace": p["namespace"], "name": p["name"], "scope": p["scope"],
        "action": p["action"], "rules": sum(len(g["rules"]) for g in p["groups"]),
        "dry_run": "yes" if p.get("dry_run") else ""} for p in rows],
        ["namespace", "name", "scope", "action", "rules", "dry_run"],
        ["NAMESPACE", "POLICY", "SCOPE", "ACTION", "RULES", "DRY RUN"])


def _certificates(rows: Rows) -> str:
    out = []
    for c in rows:
        chain = " <- ".join(x["subject"] or x["issuer"] for x in c["chain"][1:]) or "-"
        out.append({"identity": c["identity"], "state": c["state"], "serial": c["serial"],
                    "not_before": _short_time(c["not_before"]),
                    "not_after": _short_time(c["not_after"]),
                    "expires": f"{c['expires_in_seconds'] // 3600}h"
                               f"{c['expires_in_seconds'] % 3600 // 60:02d}m"
                    if c["expires_in_seconds"] > 0 else "expired",
                    "chain": chain, "roots": _join(r["subject"] for r in c["roots"])})
    return table_text(out, ["identity", "state", "serial", "not_before", "not_after",
                            "expires", "chain", "roots"],
                      ["IDENTITY", "STATE", "SERIAL", "NOT BEFORE", "NOT AFTER", "EXPIRES IN",
                       "CHAIN", "ROOTS"])


def _connections(rows: Rows) -> str:
    return table_text([{**c, "src_id": c["source_identity"] or "-",
                        "dst_id": c["destination_identity"] or "-"} for c in rows],
                      ["pod", "direction", "src", "src_id", "dst", "dst_id", "protocol",
                       "sent", "received", "age_s"],
                      ["POD", "DIRECTION", "SOURCE", "SOURCE IDENTITY", "DESTINATION",
                       "DESTINATION IDENTITY", "PROTOCOL", "SENT", "RECEIVED", "AGE (S)"])


def _traffic(rows: Rows) -> str:
    """One line per route destination (service, route, subset, weight), then per cluster
    (policy, pool usage, ejections): what `-o yaml` shows in full."""
    out = []
    for t in rows:
        for r in t["routes"]:
            for d in r["destinations"]:
                out.append({"service": t["service"], "what": f"route {r['name'] or '-'} "
                            f"({r['kind']})", "to": f"{d['service']}"
                            + (f" subset {d['subset']}" if d["subset"] else "")
                            + (f" port {d['port']}" if d["port"] else ""),
                            "detail": f"{d['percent']:g}%"})
        for c in t["clusters"]:
            ejected = c["ejected"]
            out.append({"service": t["service"], "what": "cluster", "to": c["name"],
                        "detail": f"lb {c['lb']}, open {c['open']}/"
                                  f"{_limit(c['max_connections'])}, overflows {c['overflows']}"
                                  + (f", ejected {len(ejected)}: {_join(ejected)}"
                                     if ejected else "")})
        if not t["routes"] and not t["clusters"]:
            out.append({"service": t["service"], "what": "rules", "to": "-",
                        "detail": f"{len(t['subsets'])} subset(s), no connection yet"})
    return table_text(out, ["service", "what", "to", "detail"],
                      ["SERVICE", "ROUTE/CLUSTER", "DESTINATION", "WEIGHT/STATE"])


def _limit(n: int) -> str:
    return "unlimited" if n >= 2**32 - 1 else str(n)


def _egress(rows: Rows) -> str:
    return table_text([{**e, "name": e["name"] or "(mesh default)",
                        "hosts": _join(f"{ln['port'] or '*'}: {h}" for ln in e["listeners"]
                                       for h in ln["hosts"]) if e["listeners"] else "*/*",
                        "selector": _join(f"{k}={v}" for k, v in e["selector"].items())}
                       for e in rows],
                      ["namespace", "name", "mode", "selector", "hosts"],
                      ["NAMESPACE", "SIDECAR", "OUTBOUND POLICY", "SELECTOR", "EGRESS HOSTS"])


VIEWS: dict[str, tuple[str, Callable[[Rows], str]]] = {
    "workloads": ("every workload the proxy knows (the mesh's, and the pods it serves)",
                  _workloads),
    "services": ("services with their VIPs, ports and endpoints", _services),
    "policies": ("authorization policies, with their rules", _policies),
    "certificates": ("per identity: serial, validity, trust chain and roots",
                     _certificates),
    "connections": ("live relayed connections: source, destination, identities, bytes",
                    _connections),
    "traffic": ("traffic rules per service: routes and weights, subsets, policies, pool "
                "usage and ejections", _traffic),
    "egress": ("Sidecar egress: imported hosts and outboundTrafficPolicy", _egress),
}


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("proxy-config", aliases=["pc"],
                       help="what the node proxy holds: workloads, services, policies, "
                            "certificates, connections, traffic, egress (as istioctl "
                            "ztunnel-config)")
    vsub = p.add_subparsers(dest="view", metavar="VIEW", required=True)
    for view, (helptext, _) in VIEWS.items():
        q = vsub.add_parser(view, help=helptext)
        nodeapi.add_node_flags(q, agent=False)
        q.add_argument("-n", "--namespace", metavar="NS", help="only this namespace's")
        if view in ("workloads", "connections"):
            q.add_argument("--pod", metavar="NS/NAME",
                           help="only this pod's (an error if the proxy does not serve it)")
        add_output_flag(q)
        q.set_defaults(handler=cmd_view)


def _pod_filter(a: argparse.Namespace, rows: Rows, proxy: nodeapi.Daemon) -> Rows:
    ns, sep, name = a.pod.partition("/")
    if not sep or not ns or not name:
        raise UserError(f"--pod: {a.pod!r} is not NAMESPACE/NAME")
    served = proxy.json("/debug/workloads")
    if not any(w["local"] and (w["namespace"], w["name"]) == (ns, name) for w in served):
        here = sorted(f"{w['namespace']}/{w['name']}" for w in served if w["local"])
        raise UserError(f"pod {ns}/{name} is not served by the node proxy at "
                        f"{proxy.address} (it serves {len(here)} pod(s)"
                        + (f": {', '.join(here[:10])}" if here else "") + ")")
    if a.view == "connections":
        return [c for c in rows if c["pod"] == f"{ns}/{name}"]
    return [w for w in rows if (w["namespace"], w["name"]) == (ns, name)]


def _namespace_of(view: str, row: dict[str, Any]) -> str:
    if view == "connections":
        return str(row["pod"]).split("/")[0]
    if view == "certificates":  # spiffe://TD/ns/NS/sa/SA
        parts = str(row["identity"]).split("/")
        return parts[parts.index("ns") + 1] if "ns" in parts[3:-1] else ""
    return str(row.get("namespace", ""))


def cmd_view(a: argparse.Namespace) -> int:
    proxy = nodeapi.proxy_of(a)
    rows: Rows = proxy.json(f"/debug/{a.view}")
    if a.namespace:
        rows = [r for r in rows if _namespace_of(a.view, r) == a.namespace]
    if getattr(a, "pod", None):
        rows = _pod_filter(a, rows, proxy)
    emit(rows, a.output, table=VIEWS[a.view][1](rows))
    return 0
