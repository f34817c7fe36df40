"""`meshnode agent` (the daemon) and `meshnode pods` (what it has enrolled)."""

from __future__ import annotations

import argparse
import time
from typing import Any

from agent.cli.output import add_output_flag, emit, table_text


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("agent", help="run the node agent")
    p.add_argument("--config", metavar="FILE", help="agent config (YAML)")
    p.add_argument("--log-level", default="info",
                   choices=["debug", "info", "warning", "error"])
    p.set_defaults(handler=cmd_agent)

    p = sub.add_parser("pods", help="pods known to the agent: state, backend, IPs, netns")
    p.add_argument("--config", metavar="FILE", help="agent config (YAML), for its state dir")
    p.add_argument("--proxy-admin", default="127.0.0.1:15000", metavar="HOST:PORT",
                   help="the node proxy's admin address, for its view of each pod")
    add_output_flag(p)
    p.set_defaults(handler=cmd_pods)


def cmd_agent(a: argparse.Namespace) -> int:
    from agent import config
    from agent.cli import daemon
    from agent.nodeagent.server import Agent

    return daemon.run(Agent(config.load(a.config)).run(), a.log_level)


def cmd_pods(a: argparse.Namespace) -> int:
    from agent import config
    from agent.nodeagent.pods import PodStore

    cfg = config.load(a.config)
    # Read from the agent's state on disk, so this works while the agent is down too.
    store = PodStore(cfg.pods_dir) if cfg.pods_dir.is_dir() else None
    pods = sorted((p.to_json() for p in store.all()) if store else [],
                  key=lambda p: (p["namespace"], p["name"], p["container_id"]))
    served = _proxy_view(a.proxy_admin)
    for p in pods:
        view = served.get(p["uid"] or p["container_id"]) if served is not None else None
        p["proxy"] = view if served is not None else "unreachable"
    rows = [{"namespace": p["namespace"], "name": p["name"], "state": p["state"],
             "proxy": _proxy_cell(p["proxy"]),
             "backend": p["backend"], "ips": ",".join(p["ips"]), "netns": p["netns"],
             "container": p["container_id"][:12],
             "last_change": time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(p["last_change"])),
             "detail": p.get("detail", "")} for p in pods]
    emit(pods, a.output, table=table_text(
        rows, ["namespace", "name", "state", "proxy", "backend", "ips", "netns", "container",
               "last_change", "detail"]))
    return 0


def _proxy_view(address: str) -> dict[str, Any] | None:
    """uid -> the proxy's view of that pod (listeners, live connections); None if the proxy
    does not answer (this command also works with the proxy down)."""
    import json
    import urllib.request

    try:
        with urllib.request.urlopen(f"http://{address}/config_dump", timeout=1) as r:
            dump = json.load(r)
    except (OSError, ValueError):
        return None
    return {w["uid"]: {"listeners": w["listeners"], "connections": len(w["connections"])}
            for w in dump.get("workloads", [])}


def _proxy_cell(view: Any) -> str:
    if view == "unreachable":
        return "?"
    if not view:
        return "not served"
    return f"serving, {view['connections']} conns"
