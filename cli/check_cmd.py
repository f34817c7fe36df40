"""`meshnode check`: the node precheck (cli/precheck.py). Read-only; exit 1 when a check
fails, 0 otherwise (warnings included)."""

from __future__ import annotations

import argparse
from pathlib import Path

from cli import precheck
from cli.output import add_output_flag, emit, table_text

MARKS = {precheck.PASS: "✔", precheck.WARN: "!", precheck.FAIL: "✘", precheck.INFO: "-"}


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("check", help="precheck this node: kernel, iptables flavour, nftables, "
                                     "cgroup v2, bpffs, BTF/headers, the primary CNI, "
                                     "conflicts (Cilium socket LB); read-only")
    p.add_argument("--config", metavar="FILE",
                   help="the agent's config: check for its capture backend (default: "
                        "$MESHNODE_AGENT_CONFIG, /etc/meshnode/agent.yaml if present, else "
                        "the default backend)")
    p.add_argument("--backend", choices=["iptables", "nftables", "ebpf"],
                   help="check for this capture backend instead of the config's")
    p.add_argument("--cni-net-dir", default="/etc/cni/net.d", metavar="DIR",
                   help="the runtime's CNI config dir (default: %(default)s; in the agent's "
                        "container: /host/etc/cni/net.d)")
    p.add_argument("--bpffs", default="/sys/fs/bpf", metavar="DIR",
                   help="where bpffs should be mounted (default: %(default)s)")
    p.add_argument("--cilium-config", default="", metavar="PATH",
                   help="Cilium's settings: the cilium-config ConfigMap as YAML/JSON "
                        "(kubectl -n kube-system get cm cilium-config -o yaml), or a dir of "
                        "its keys")
    p.add_argument("--root", default="/", metavar="DIR",
                   help="read the node's files under DIR (a copy of a node's /proc, /sys, "
                        "/etc...); no command is run then")
    add_output_flag(p)
    p.set_defaults(handler=cmd_check)


def cmd_check(a: argparse.Namespace) -> int:
    from cli.nodeapi import default_agent_config

    backend, fallback, flavour = "iptables", "", "auto"
    path = a.config or default_agent_config()
    if path or not a.backend:
        from agent import config

        cfg = config.load(path).capture
        backend, fallback, flavour = (str(cfg.backend), str(cfg.fallback),
                                      str(cfg.iptables_flavour))
    if a.backend:
        backend = a.backend
    host = precheck.Host(root=Path(a.root), cni_net_dir=a.cni_net_dir, bpffs=a.bpffs,
                         cilium_config=a.cilium_config)
    checks = precheck.run_all(host, backend, fallback, flavour)
    failed = [c for c in checks if c.status == precheck.FAIL]
    rows = []
    for c in checks:
        rows.append({"mark": MARKS[c.status], "check": c.name, "status": c.status.upper(),
                     "detail": c.detail})
        if c.fix and c.status in (precheck.FAIL, precheck.WARN):
            rows.append({"mark": "", "check": "", "status": "",
                         "detail": f"-> {c.fix}"})
    text = f"meshnode check (capture backend: {backend}"
    text += f", fallback {fallback})\n" if fallback else ")\n"
    text += table_text(rows, ["mark", "check", "status", "detail"],
                       ["", "CHECK", "RESULT", "DETAIL"])
    text += (f"\n{len(failed)} check(s) failed: meshnode cannot capture pods correctly on "
             "this node until they are fixed.\n" if failed else
             "\nThis node can run meshnode" + (" (see the warnings)" if any(
                 c.status == precheck.WARN for c in checks) else "") + ".\n")
    emit({"backend": backend, "fallback": fallback, "ok": not failed,
          "checks": precheck.as_json(checks)}, a.output, table=text)
    return 1 if failed else 0
