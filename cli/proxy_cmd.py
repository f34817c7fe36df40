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
    from cli import daemon
    from proxy import config
    from proxy.server import ProxyServer

    return daemon.run(ProxyServer(config.load(a.config)).run(), a.log_level)
