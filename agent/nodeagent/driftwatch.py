"""Event-driven drift repair: react to a pod's netfilter and ip rule changes within ~0.1 s.

The periodic drift loop (server.py, `drift_interval_seconds`) finds a deleted rule only when
it comes round, so a pod could run uncaptured for up to that long. Instead, each enrolled
pod's netns gets two netlink sockets, opened inside it (a socket stays bound to the netns it
was created in):

- NETLINK_NETFILTER bound to NFNLGRP_NFTABLES: every nftables change (ruleset generation),
  which includes the iptables-nft flavour (it writes through nf_tables);
- NETLINK_ROUTE bound to the IPv4/IPv6 rule and route groups: our `ip rule fwmark ...` and
  the `local default dev lo table 100` route.

One thread waits on all of them with a selector; a pod with an event is checked after a
short debounce (a burst of changes, e.g. `nft flush ruleset`, costs one check), by the same
per-pod check the periodic loop runs (`Enroller.drift_pod`). That check diffs before it
writes, so the events our own repair causes end in an in-sync diff, not a loop. Idle pods
cost nothing: no timer, no polling.

Not covered by events: iptables-legacy (x_tables sends no notifications) and the eBPF maps
and links (pinned; only the ip rule is watched there). The periodic loop stays the safety
net for those and for anything missed (a socket buffer overflow is treated as an event).
"""

from __future__ import annotations

import contextlib
import errno
import os
import selectors
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import structlog

from core.netns import entered

log = structlog.get_logger("driftwatch")

NETLINK_NETFILTER = 12
NFNLGRP_NFTABLES = 7
RTNLGRP_IPV4_ROUTE = 7
RTNLGRP_IPV4_RULE = 8
RTNLGRP_IPV6_ROUTE = 11
RTNLGRP_IPV6_RULE = 19


def _groups(*nums: int) -> int:
    """bind(2)'s group bitmask: group n is bit n-1 (all ours are below 32)."""
    mask = 0
    for n in nums:
        mask |= 1 << (n - 1)
    return mask


@dataclass
class _Pod:
    cid: str
    socks: list[socket.socket] = field(default_factory=list)
    due: float | None = None  # monotonic time of the pending check, None = nothing pending


def open_sockets(netns: str) -> list[socket.socket]:
    """The two notification sockets of one pod, created inside its netns."""
    socks: list[socket.socket] = []
    try:
        with entered(netns):
            nf = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_NONBLOCK
                               | socket.SOCK_CLOEXEC, NETLINK_NETFILTER)
            socks.append(nf)
            nf.bind((0, _groups(NFNLGRP_NFTABLES)))
            rt = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_NONBLOCK
                               | socket.SOCK_CLOEXEC, socket.NETLINK_ROUTE)
            socks.append(rt)
            rt.bind((0, _groups(RTNLGRP_IPV4_RULE, RTNLGRP_IPV6_RULE, RTNLGRP_IPV4_ROUTE,
                                RTNLGRP_IPV6_ROUTE)))
    except OSError:
        for s in socks:
            s.close()
        raise
    return socks


class DriftWatch:
    """Watches enrolled pods' netns for changes; `check(cid)` repairs one pod, returns 1
    when it had drifted."""

    def __init__(self, check: Callable[[str], int], debounce_seconds: float = 0.05) -> None:
        self._check = check
        self._debounce = debounce_seconds
        self._sel = selectors.DefaultSelector()
        self._pods: dict[str, _Pod] = {}
        self._lock = threading.Lock()
        self._wake_r, self._wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self._sel.register(self._wake_r, selectors.EVENT_READ, None)
        self._stop = False
        self._thread = threading.Thread(target=self._run, name="driftwatch", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop = True
        self._wake()
        if self._thread.is_alive():
            self._thread.join(timeout=5)
        with self._lock:
            for pod in self._pods.values():
                self._close(pod)
            self._pods.clear()
        self._sel.close()
        for fd in (self._wake_r, self._wake_w):
            with contextlib.suppress(OSError):
                os.close(fd)

    @property
    def watched(self) -> set[str]:
        with self._lock:
            return set(self._pods)

    def watch(self, cid: str, netns: str) -> bool:
        """Start watching one pod (idempotent; a new netns for the same container replaces
        the old). False, logged, when its sockets cannot be opened: the loop still covers
        it."""
        try:
            socks = open_sockets(netns)
        except OSError as exc:
            log.warning("drift_watch_failed", container=cid, netns=netns,
                        error=exc.strerror or str(exc))
            return False
        with self._lock:
            old = self._pods.pop(cid, None)
            if old is not None:
                self._close(old)
            pod = _Pod(cid, socks)
            self._pods[cid] = pod
            for s in socks:
                self._sel.register(s, selectors.EVENT_READ, pod)
        self._wake()
        return True

    def unwatch(self, cid: str) -> None:
        """Stop watching; closing the sockets also lets a deleted netns be freed (an open
        socket holds a reference to its netns)."""
        with self._lock:
            pod = self._pods.pop(cid, None)
            if pod is not None:
                self._close(pod)
        self._wake()

    def retain(self, cids: set[str]) -> None:
        """Drop every watch whose pod is no longer known (the safety net for records that
        were dropped without an unwatch, e.g. a netns found gone)."""
        for cid in self.watched - cids:
            self.unwatch(cid)

    # -- the thread ---------------------------------------------------------------------

    def _close(self, pod: _Pod) -> None:
        for s in pod.socks:
            with contextlib.suppress(KeyError, ValueError):
                self._sel.unregister(s)
            s.close()
        pod.socks = []

    def _wake(self) -> None:
        with contextlib.suppress(OSError):  # pipe full: a wake-up is pending anyway
            os.write(self._wake_w, b"x")

    def _timeout(self) -> float | None:
        with self._lock:
            dues = [p.due for p in self._pods.values() if p.due is not None]
        return None if not dues else max(0.0, min(dues) - time.monotonic())

    def _run(self) -> None:
        while not self._stop:
            try:
                ready = self._sel.select(self._timeout())
            except (OSError, ValueError):
                # A socket closed by unwatch() between two selects: go round again.
                continue
            for key, _ in ready:
                if key.data is None:
                    with contextlib.suppress(OSError):
                        os.read(self._wake_r, 4096)
                    continue
                self._drain(key.fileobj, key.data)  # type: ignore[arg-type]
            self._run_due()

    def _drain(self, sock: socket.socket, pod: _Pod) -> None:
        """Read every pending notification; their content does not matter, only that the
        pod's netfilter or routing changed."""
        while True:
            try:
                if not sock.recv(65536):
                    break
            except BlockingIOError:
                break
            except OSError as exc:
                if exc.errno != errno.ENOBUFS:  # overflow: events were lost, check anyway
                    return
            with self._lock:
                if pod.due is None:
                    pod.due = time.monotonic() + self._debounce

    def _run_due(self) -> None:
        now = time.monotonic()
        with self._lock:
            due = [p for p in self._pods.values() if p.due is not None and p.due <= now]
            for p in due:
                p.due = None
        for p in due:
            try:
                if self._check(p.cid):
                    log.warning("drift_repaired_on_event", container=p.cid)
            except Exception:
                log.exception("drift_check_failed", container=p.cid)
