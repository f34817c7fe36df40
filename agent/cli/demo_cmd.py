"""`meshnode demo`: the whole path on one machine, as far as it exists today."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("demo", help="show the whole path on this machine and clean up")
    p.add_argument("--backend", choices=["iptables", "nftables", "ebpf"], default="nftables")
    p.add_argument("--iptables-flavour", choices=["auto", "nft", "legacy"], default="auto")
    p.set_defaults(handler=cmd_demo)


def cmd_demo(a: argparse.Namespace) -> int:
    from agent.demo import run_demo

    return run_demo(a.backend, a.iptables_flavour)
