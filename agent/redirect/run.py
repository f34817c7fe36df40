"""Run a netfilter tool and turn every way it can fail into one RedirectError line."""

from __future__ import annotations

import subprocess
from collections.abc import Mapping, Sequence

from agent.redirect.errors import RedirectError

_PACKAGE = {"iptables": "iptables", "ip6tables": "iptables", "nft": "nftables",
            "ipset": "ipset"}


def run(netns: str, step: str, argv: Sequence[str], stdin: str | None = None,
        env: Mapping[str, str] | None = None, timeout: float = 30.0) -> str:
    try:
        proc = subprocess.run(list(argv), input=stdin, capture_output=True, text=True,
                              timeout=timeout, env=dict(env) if env is not None else None,
                              check=False)
    except FileNotFoundError:
        tool = argv[0]
        pkg = next((v for k, v in _PACKAGE.items() if tool.startswith(k)), None)
        hint = f" (install the {pkg} package)" if pkg else ""
        raise RedirectError(netns, step, f"{tool} not found{hint}") from None
    except subprocess.TimeoutExpired:
        raise RedirectError(netns, step, f"{argv[0]} timed out after {timeout:.0f}s") from None
    if proc.returncode != 0:
        msg = (proc.stderr or proc.stdout).strip() or "no output"
        raise RedirectError(netns, step, f"{argv[0]} exited {proc.returncode}: {msg}")
    return proc.stdout
