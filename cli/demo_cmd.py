"""`meshnode demo`: the whole path on one machine, then cleaned up."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("demo", help="a control plane, two nodes and containerd pods on this "
                                    "machine: traffic, a report, a verdict; then clean up")
    p.add_argument("--backend", choices=["iptables", "nftables", "ebpf"], default="nftables")
    p.add_argument("--iptables-flavour", choices=["auto", "nft", "legacy"], default="auto")
    p.add_argument("--quick", action="store_true",
                   help="one node, lab netns pods, no control plane or containerd (~3 s)")
    p.set_defaults(handler=cmd_demo)


def cmd_demo(a: argparse.Namespace) -> int:
    if a.quick:
        from demo.quick import run_quick

        return run_quick(a.backend, a.iptables_flavour)
    from demo import run_demo

    return run_demo(a.backend, a.iptables_flavour)
