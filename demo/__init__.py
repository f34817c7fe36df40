"""`meshnode demo`: the whole product on one machine (see run.py), or `--quick`: one node,
no control plane, no containerd (quick.py)."""

from demo.run import run_demo

__all__ = ["run_demo"]
