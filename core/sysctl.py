"""Per-netns sysctls, written from a thread that has entered the pod's netns.

A `net.*` sysctl file applies to the network namespace of the process that opens it, not to
the procfs mount it is opened through. That matters in a container: the runtime mounts
/proc/sys read-only, so the DaemonSet mounts the host's procfs elsewhere (MESHNODE_PROC,
e.g. /host/proc) and the agent and proxy write through it.
"""

from __future__ import annotations

import os


def proc_root() -> str:
    return os.environ.get("MESHNODE_PROC", "/proc")


def path(name: str) -> str:
    """"net.ipv4.tcp_fwmark_accept" -> "<proc>/sys/net/ipv4/tcp_fwmark_accept"."""
    return os.path.join(proc_root(), "sys", *name.split("."))


def write(name: str, value: str) -> None:
    with open(path(name), "w") as f:
        f.write(value)


def read(name: str) -> str:
    with open(path(name)) as f:
        return f.read().strip()
