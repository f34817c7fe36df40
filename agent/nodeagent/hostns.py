"""Is a netns path the agent's own or the host's network namespace?

A request naming either (`/proc/self/ns/net`, `/proc/1/ns/net`, or any bind mount of them)
would have the agent redirect the node's own traffic to the proxy: the node loses its
network, the kubelet and the agent included. Network namespaces are told apart by the
(device, inode) of their nsfs file, whatever path reaches them.
"""

from __future__ import annotations

import os

OWN = "/proc/self/ns/net"
HOST = "/proc/1/ns/net"


def _ns_id(path: str) -> tuple[int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_dev, st.st_ino


def forbidden(netns: str) -> str | None:
    """Why `netns` must not be captured ("the agent's own" / "the host's"), or None."""
    target = _ns_id(netns)
    if target is None:
        return None  # does not exist: the caller reports that
    if target == _ns_id(OWN):
        return "the agent's own"
    if target == _ns_id(HOST):
        return "the host's"
    return None
