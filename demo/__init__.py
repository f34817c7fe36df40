"""`meshnode demo`: the whole product on one machine (see run.py), or `--quick`: one node,
no control plane, no containerd (quick.py).

Beside `cli/` in the checkout, not in the wheel or the image. Uses `testing/` (the lab, a
private bpffs); never imports `tests/`.
"""

from demo.run import run_demo

__all__ = ["run_demo"]
