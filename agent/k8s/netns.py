"""Find a running pod's network namespace from its IPs, for label-driven enrollment.

A pod that was not captured at CNI ADD has no netns path we know. Every candidate is looked
at once per namespace (by inode): the runtime's bind mounts (/var/run/netns, stable paths
that live as long as the sandbox), then every process's /proc/<pid>/ns/net. A namespace is
trusted only if it holds one of the pod's IPs (istio-cni makes the same check): a path or a
pid can be reused, an IP on a live interface cannot be in two pod netns at once. The node's
own netns is never a candidate (a hostNetwork pod shares it).
"""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Sequence

import structlog

from agent.nodeagent import netnsfind
from core.netns import addresses

log = structlog.get_logger("k8s.netns")
NETNS_DIRS = ("/var/run/netns", "/run/netns")


def _start_time(proc: str, pid: str) -> int:
    try:
        with open(f"{proc}/{pid}/stat") as f:
            # Field 22 (starttime), counted after the ")" that ends the command name.
            return int(f.read().rsplit(")", 1)[1].split()[19])
    except (OSError, ValueError, IndexError):
        return 1 << 62


def candidates(netns_dirs: Sequence[str] = NETNS_DIRS,
               proc: str = "/proc") -> dict[int, list[str]]:
    """netns inode -> the paths that open it, bind mounts first, then pids oldest first (a
    sandbox's first process, the pause container, lives as long as the pod)."""
    found: dict[int, list[str]] = {}
    for d in netns_dirs:
        try:
            names = sorted(os.listdir(d))
        except OSError:
            continue
        for name in names:
            path = os.path.join(d, name)
            ino = netnsfind.inode_of(path)
            if ino is not None and path not in found.get(ino, []):
                found.setdefault(ino, []).append(path)
    pids: dict[int, list[str]] = {}
    try:
        entries = os.listdir(proc)
    except OSError:
        entries = []
    for pid in entries:
        if pid.isdigit():
            ino = netnsfind.inode_of(f"{proc}/{pid}/ns/net")
            if ino is not None:
                pids.setdefault(ino, []).append(pid)
    for ino, group in pids.items():
        group.sort(key=lambda p: _start_time(proc, p))
        found.setdefault(ino, []).extend(f"{proc}/{p}/ns/net" for p in group)
    return found


def find_by_ips(ips: list[str], netns_dirs: Sequence[str] = NETNS_DIRS,
                proc: str = "/proc") -> str | None:
    """A path to the netns holding one of `ips`, or None."""
    want = {str(ipaddress.ip_address(ip)) for ip in ips}
    if not want:
        return None
    host = {netnsfind.inode_of(p) for p in ("/proc/1/ns/net", "/proc/self/ns/net")}
    for ino, paths in candidates(netns_dirs, proc).items():
        if ino in host:
            continue
        for path in paths:  # the first that still opens; a pid may have exited meanwhile
            try:
                held = addresses(path)
            except Exception:  # gone, or not a netns we may enter: try the next path
                continue
            if held & want:
                log.info("k8s_netns_found", ips=sorted(want), netns=path, inode=ino)
                return path
            break  # the same netns through another path holds the same addresses
    return None
