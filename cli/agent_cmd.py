"""`meshnode agent` (the daemon) and `meshnode pods` (what it has enrolled)."""

from __future__ import annotations

import argparse
import errno
import os
import time
from typing import TYPE_CHECKING, Any

import structlog

from cli import daemon
from cli.nodeapi import add_node_flags
from cli.output import add_output_flag, emit, table_text

if TYPE_CHECKING:
    from agent.server import Agent

log = structlog.get_logger("agent")


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("agent", help="run the node agent")
    p.add_argument("--config", metavar="FILE", help="agent config (YAML)")
    daemon.add_log_flags(p)
    p.set_defaults(handler=cmd_agent)

    p = sub.add_parser("pods", help="pods known to the agent: state, backend, IPs, netns; "
                                    "exit 2 when the agent does not answer")
    add_node_flags(p)
    p.add_argument("--offline", action="store_true",
                   help="read what the agent left in its state dir instead of asking it "
                        "(the agent stopped); an error if there is no state dir")
    add_output_flag(p)
    p.set_defaults(handler=cmd_pods)


def cmd_agent(a: argparse.Namespace) -> int:
    from agent import config
    from agent.server import Agent
    from cli import sockets

    cfg = config.load(a.config)  # every address and path checked: no socket made yet
    agent = Agent(cfg)
    try:
        return daemon.run(_run_agent(agent), a.log_level, a.log_format)
    finally:
        # Whatever the exit (SIGTERM, a start-up failure, a bug), no socket stays behind for
        # the plugin or the proxy to find and wait on.
        sockets.remove_unserved([cfg.cni_socket, cfg.zds_socket, cfg.mesh_socket])


async def _run_agent(agent: Agent) -> None:
    try:
        await agent.run()
    except BaseException as exc:
        # A start-up failure (the HTTP port in use...) leaves the servers started so far
        # listening: close them, which also removes their sockets.
        await _close_servers(agent)
        if isinstance(exc, OSError) and exc.errno in (errno.EADDRINUSE, errno.EADDRNOTAVAIL) \
                and str(agent.cfg.http_address.rpartition(":")[2]) in str(exc):
            # The agent's only TCP listener: name its key, as for a bad value.
            from cli.errors import UserError

            raise UserError(f"config: http_address: cannot listen on "
                            f"{agent.cfg.http_address}: {os.strerror(exc.errno)}") from None
        raise


async def _close_servers(agent: Agent) -> None:
    closers = [agent.cni.stop()]
    if agent.zds is not None:
        closers.append(agent.zds.close())
    if agent.mesh is not None:
        closers.append(agent.mesh.stop())
    for closer in closers:
        try:
            await closer
        except Exception as exc:  # the original failure is the one to report
            log.warning("agent_close_failed", error=repr(exc))


def cmd_pods(a: argparse.Namespace) -> int:
    from cli import nodeapi

    proxy = nodeapi.proxy_of(a)  # the flag checked before anything is asked
    # The agent's live view: an agent that is down is an error, not an empty table.
    records = _offline_pods(a) if a.offline else nodeapi.agent_of(a).json("/debug/pods")
    pods = sorted(records, key=lambda p: (p["namespace"], p["name"], p["container_id"]))
    served = _proxy_view(proxy.address)
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


def _offline_pods(a: argparse.Namespace) -> list[dict[str, Any]]:
    """The records a stopped agent left on disk (read-only: the store is not opened, so
    nothing is created)."""
    import json

    from cli.errors import UserError
    from cli.nodeapi import load_agent_config

    pods_dir = load_agent_config(a).pods_dir
    if not pods_dir.is_dir():
        raise UserError(f"no agent state at {pods_dir}: the agent has never run with this "
                        "config (--config FILE names the agent's)")
    out = []
    for f in sorted(pods_dir.glob("*.json")):
        try:
            out.append(json.loads(f.read_text()))
        except (OSError, ValueError):
            continue  # a torn or foreign file, as the agent's own store skips it
    return out


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
