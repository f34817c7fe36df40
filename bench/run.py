"""`make bench`: run every benchmark and rewrite docs/benchmarks.md's results section."""

from __future__ import annotations

import datetime
import json
import os
import platform
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench import (
    cni_add,
    controlplane_scale,
    mesh_path,
    plots,
    proxy_path,
    redirect_apply,
    redirect_cost,
    traffic_path,
)
from testing.pins import private_pins

DOC = Path(__file__).resolve().parents[1] / "docs" / "benchmarks.md"
BEGIN, END = "<!-- bench:begin -->", "<!-- bench:end -->"


def main() -> int:
    pods = int(os.environ.get("MESHNODE_BENCH_PODS", "200"))
    seconds = int(os.environ.get("MESHNODE_BENCH_SECONDS", "5"))
    with private_pins():  # the eBPF rows pin into a private bpffs
        results = {"redirect": redirect_apply.measure(pods), "cni": cni_add.measure(pods),
                   "redirect_cost": redirect_cost.measure(),
                   "proxy": proxy_path.measure(seconds),
                   "mesh": mesh_path.measure(seconds),
                   "traffic": traffic_path.measure(seconds)}
    # No root, no lab: the control plane and its streams on this machine (about 6 min at
    # the scale; MESHNODE_BENCH_CP_* scale it down).
    results["controlplane"] = controlplane_scale.measure()
    out = Path(__file__).resolve().parent / "results"
    out.mkdir(exist_ok=True)
    (out / "latest.json").write_text(json.dumps(results, indent=2))
    plots.render(results, DOC.parent / "img")  # embedded in the doc's "Plots" section
    body = (f"Measured {datetime.date.today()} on {platform.node()}: {os.cpu_count()} cores, "
            f"kernel {platform.release()}.\n\n" + redirect_apply.report(results["redirect"])
            + "\n" + cni_add.report(results["cni"]) + "\n"
            + redirect_cost.report(results["redirect_cost"]) + "\n"
            + proxy_path.report(results["proxy"]) + "\n"
            + mesh_path.report(results["mesh"], results["proxy"]) + "\n"
            + traffic_path.report(results["traffic"]) + "\n"
            + controlplane_scale.report(results["controlplane"]))
    doc = DOC.read_text()
    head, _, rest = doc.partition(BEGIN)
    _, _, tail = rest.partition(END)
    DOC.write_text(f"{head}{BEGIN}\n{body}{END}{tail}")
    print(body)
    return 0


if __name__ == "__main__":
    sys.exit(main())
