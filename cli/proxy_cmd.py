"""`meshnode proxy`: run the shared node proxy."""

from __future__ import annotations

import argparse

from cli import daemon


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("proxy", help="run the shared node proxy")
    p.add_argument("--config", metavar="FILE", help="proxy config (YAML)")
    daemon.add_log_flags(p)
    p.set_defaults(handler=cmd_proxy)


def cmd_proxy(a: argparse.Namespace) -> int:
    from proxy import config
    from proxy.server import ProxyServer

    return daemon.run(ProxyServer(config.load(a.config)).run(), a.log_level, a.log_format)
