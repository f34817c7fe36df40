"""`meshnode proxy`: run the shared node proxy."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("proxy", help="run the shared node proxy")
    p.add_argument("--config", metavar="FILE", help="proxy config (YAML)")
    p.add_argument("--log-level", default="info",
                   choices=["debug", "info", "warning", "error"])
    p.set_defaults(handler=cmd_proxy)


def cmd_proxy(a: argparse.Namespace) -> int:
    import asyncio

    import uvloop

    from agent import logs
    from proxy import config
    from proxy.server import ProxyServer

    logs.configure(a.log_level)
    cfg = config.load(a.config)
    # uvloop for the proxy's loop only (pyroute2 runs its own loop on worker threads).
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(ProxyServer(cfg).run())
    return 0
