"""Find and verify a pod's network namespace (after an agent restart, or on CHECK)."""

from __future__ import annotations

import ipaddress
import os

from core.netns import addresses


def inode_of(path: str) -> int | None:
    try:
        return os.stat(path).st_ino
    except OSError:
        return None


def holds_ips(netns: str, ips: list[str]) -> bool:
    """True if the netns carries one of the pod's IPs (or the pod has none recorded).

    A netns path can be reused, and a foreign process can sit in a pod's netns: the IP is
    what ties a netns to a pod (istio-cni makes the same check before trusting a netns).
    """
    if not ips:
        return True
    want = {str(ipaddress.ip_address(ip)) for ip in ips}
    try:
        return bool(addresses(netns) & want)
    except OSError:
        return False


def locate(path: str, inode: int, ips: list[str]) -> str | None:
    """The pod's netns: its recorded path if still the same netns, else any process in it."""
    if inode_of(path) == inode and holds_ips(path, ips):
        return path
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        candidate = f"/proc/{pid}/ns/net"
        if inode_of(candidate) == inode and holds_ips(candidate, ips):
            return candidate
    return None
