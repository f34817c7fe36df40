"""`meshnode demo`: the whole path on one machine, then cleaned up."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from cli.errors import UserError


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("demo", help="a control plane, two nodes and containerd pods on this "
                                    "machine: traffic, a report, a verdict; then clean up")
    p.add_argument("--backend", choices=["iptables", "nftables", "ebpf"], default="nftables")
    p.add_argument("--iptables-flavour", choices=["auto", "nft", "legacy"], default="auto")
    p.add_argument("--quick", action="store_true",
                   help="one node, lab netns pods, no control plane or containerd (~3 s)")
    p.set_defaults(handler=cmd_demo)


def _checkout_demo() -> None:
    """Make the `demo` and `testing` packages importable. They live in the source checkout
    beside `cli/` and are not in the wheel, so an editable install (`make setup`) finds them
    only through the checkout; an installed wheel has no demo at all."""
    try:
        import demo  # noqa: F401
    except ImportError:
        checkout = Path(__file__).resolve().parents[1]
        if not (checkout / "demo" / "__init__.py").is_file():
            raise UserError("meshnode demo runs from a source checkout (make demo); this "
                            "installation has no demo") from None
        sys.path.insert(0, str(checkout))


def cmd_demo(a: argparse.Namespace) -> int:
    _checkout_demo()
    # Imported here: the demo and the lab helpers are not part of the installed product.
    if a.quick:
        from demo.quick import run_quick

        return run_quick(a.backend, a.iptables_flavour)
    from demo import run_demo

    return run_demo(a.backend, a.iptables_flavour)
