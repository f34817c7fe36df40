"""Run code inside a network namespace on the calling thread.

setns(2) with CLONE_NEWNET moves only the calling thread, and children forked from that
thread (iptables-restore, nft) start in the same netns, as do netlink sockets it opens. So
one thread can visit a pod's netns, do the work and come back, with no helper process and no
`ip netns exec`. The agent calls this from worker threads, never the event loop's thread.
`addresses()` lists a netns's IPs (the proxy's pod IPs; the agent's netns verification).
"""

from __future__ import annotations

import contextlib
import ctypes
import ipaddress
import os
import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager

from pyroute2 import IPRoute

CLONE_NEWNET = 0x40000000
_libc = ctypes.CDLL(None, use_errno=True)


def _check(ret: int, what: str) -> None:
    if ret != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")


def _setns(fd: int) -> None:
    _check(_libc.setns(fd, CLONE_NEWNET), "setns")


def netns_label(netns: str | int) -> str:
    return netns if isinstance(netns, str) else f"fd:{netns}"


def netns_inode(netns: str | int) -> int:
    return os.stat(netns).st_ino if isinstance(netns, str) else os.fstat(netns).st_ino


class _HomeFd:
    """A thread's own netns fd, closed when the thread ends (its thread-local goes away);
    an int alone would leak one descriptor per finished thread (executor churn)."""

    def __init__(self) -> None:
        self.fd = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)

    def __del__(self) -> None:
        with contextlib.suppress(OSError, TypeError):  # TypeError: interpreter shutdown
            os.close(self.fd)


_home = threading.local()


def _home_fd() -> int:
    """This thread's own netns, opened once per thread: the proxy enters a pod's netns for
    every upstream socket it makes, and re-opening it each time is measurable there."""
    home: _HomeFd | None = getattr(_home, "fd", None)
    if home is None:
        home = _home.fd = _HomeFd()
    return home.fd


@contextmanager
def entered(netns: str | int) -> Iterator[None]:
    """Move this thread into `netns` (a path or an open fd) and back on exit."""
    home = _home_fd()
    target = os.open(netns, os.O_RDONLY | os.O_CLOEXEC) if isinstance(netns, str) else netns
    try:
        _setns(target)
        try:
            yield
        finally:
            try:
                _setns(home)
            except OSError as exc:  # pragma: no cover - the kernel never refuses our own ns
                # A thread stranded in a pod's netns would do the next pod's work in the
                # wrong place; dying is safer than that.
                os.write(2, f"fatal: cannot return to own netns: {exc}\n".encode())
                os._exit(70)
    finally:
        if target is not netns:
            os.close(target)


@contextmanager
def inside(netns: str) -> Iterator[None]:
    """`entered`, but a no-op when this thread is already in `netns`: `entered()` returns to
    the thread's home netns on exit, so nesting it would leave an outer block early."""
    if os.stat("/proc/thread-self/ns/net").st_ino == os.stat(netns).st_ino:
        yield
        return
    with entered(netns):
        yield


@contextmanager
def scratch() -> Iterator[None]:
    """Move this thread into a fresh, anonymous netns, freed when we leave it.

    Used to let the kernel canonicalise a rule set (apply it, read it back) without a name
    in /var/run/netns and without touching anything real.
    """
    home = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    try:
        _check(_libc.unshare(CLONE_NEWNET), "unshare")
        try:
            yield
        finally:
            _setns(home)
    finally:
        os.close(home)


def addresses(netns: str | int) -> set[str]:
    """Every IPv4 and IPv6 address configured in `netns` (a path or an open fd)."""
    with entered(netns), IPRoute() as ipr:
        return {str(ipaddress.ip_address(a.get_attr("IFA_ADDRESS")))
                for fam in (socket.AF_INET, socket.AF_INET6)
                for a in ipr.get_addr(family=fam)}
