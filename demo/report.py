"""What the demo prints after the traffic: each section read from the product's own
surfaces (the `meshnode pods` and `meshnode redirect show` commands, the proxies' access
logs and metrics), so an operator can run the same things on a real node."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

from core.netns import inside
from demo.mesh import PROXY_ADMIN
from demo.procs import REPO, Daemon


def meshnode(args: list[str], netns: str, env: dict[str, str] | None = None) -> str:
    """`meshnode <args>` run inside `netns` (where the agent's and proxy's ports are)."""
    with inside(netns):
        p = subprocess.run([sys.executable, "-m", "cli.main", *args], cwd=REPO,
                           capture_output=True, text=True, timeout=30, env=env, check=False)
    return p.stdout if p.returncode == 0 else f"(meshnode {args[0]} failed: {p.stderr.strip()})"


def access_log(log: Path) -> list[dict[str, Any]]:
    out = []
    for line in log.read_text(errors="replace").splitlines():
        if '"event": "connection"' in line:
            out.append(json.loads(line))
    return out


def metric(proxy: Daemon, name: str, **labels: str) -> float:
    """Sum of a proxy metric's samples whose labels include `labels`."""
    total = 0.0
    for line in proxy.get(f"http://{PROXY_ADMIN}/metrics")[1].splitlines():
        if not line.startswith((name + "{", name + " ")):
            continue
        got = dict(re.findall(r'(\w+)="([^"]*)"', line.split(" ", 1)[0]))
        if all(got.get(k) == v for k, v in labels.items()):
            total += float(line.rsplit(" ", 1)[1])
    return total


def connection_line(node: str, c: dict[str, Any], names: dict[str, str]) -> str:
    """One access-log entry in three lines: who to whom, identities, bytes."""
    def name(addr: str, workload: str | None) -> str:
        # By IP ("ip:port", "[v6]:port", IPv4-mapped), else by the proxy's workload name:
        # with eBPF the app's connect() is rewritten to 127.0.0.1:15001, so the outbound
        # log's src is loopback; ctr pods are named after their container.
        host = addr.rsplit(":", 1)[0].strip("[]").removeprefix("::ffff:")
        return names.get(host) or names.get(workload or "") or "outside"

    via = f" via {c['original_dst']}" if c.get("original_dst") not in (None, c["dst"]) else ""
    transport = c.get("transport") or "plain"
    who = (f"{c.get('source_principal') or '-'} -> {c.get('destination_principal') or '-'}"
           if transport == "hbone" else "no identities: plain TCP passthrough")
    status = f", status {c['status']}" if c.get("status") not in (None, 200) else ""
    status += f", error: {c['error']}" if c.get("error") else ""
    return (f"{node} {c['direction']:<8} {transport:<5} {name(c['src'], c.get('src_workload'))} -> "
            f"{name(c['dst'], c.get('dst_workload'))}"
            f" ({c['dst']}{via})\n"
            f"        {who}\n"
            f"        {c['bytes_sent']} B sent, {c['bytes_received']} B received{status}")


def env_with(extra: dict[str, str]) -> dict[str, str]:
    import os

    return {**os.environ, **extra}


def json_list(text: str) -> list[dict[str, Any]]:
    try:
        got = json.loads(text)
    except ValueError:
        return []
    return [r for r in got if isinstance(r, dict)] if isinstance(got, list) else []
