"""`meshnode agent` (the daemon) and `meshnode pods` (what it has enrolled)."""

from __future__ import annotations

import argparse
import time

from agent.cli.output import add_output_flag, emit, table_text


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("agent", help="run the node agent")
    p.add_argument("--config", metavar="FILE", help="agent config (YAML)")
    p.add_argument("--log-level", default="info",
                   choices=["debug", "info", "warning", "error"])
    p.set_defaults(handler=cmd_agent)

    p = sub.add_parser("pods", help="pods known to the agent: state, backend, IPs, netns")
    p.add_argument("--config", metavar="FILE", help="agent config (YAML), for its state dir")
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
    rows = [{"namespace": p["namespace"], "name": p["name"], "state": p["state"],
             "backend": p["backend"], "ips": ",".join(p["ips"]), "netns": p["netns"],
             "container": p["container_id"][:12],
             "last_change": time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(p["last_change"])),
             "detail": p.get("detail", "")} for p in pods]
    emit(pods, a.output, table=table_text(
        rows, ["namespace", "name", "state", "backend", "ips", "netns", "container",
               "last_change", "detail"]))
    return 0
