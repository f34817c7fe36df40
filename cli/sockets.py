"""Unix sockets a daemon leaves behind: removed on every exit, unless a live process serves
them (two agents given one path: the other one's socket must stay)."""

from __future__ import annotations

import contextlib
import errno
import os
import socket
import stat


def remove_unserved(paths: list[str]) -> list[str]:
    """Unlink each path that is a unix socket nobody listens on; returns the removed ones."""
    removed = []
    for path in paths:
        try:
            if not stat.S_ISSOCK(os.lstat(path).st_mode):
                continue  # never remove something that is not a socket
        except OSError:
            continue
        if _nobody_listens(path):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)
            removed.append(path)
    return removed


def _nobody_listens(path: str) -> bool:
    # A bound socket of another type answers EPROTOTYPE (the ZDS socket is SOCK_SEQPACKET);
    # a socket file whose listener is closed answers ECONNREFUSED: only that is ours to remove.
    for kind in (socket.SOCK_STREAM, socket.SOCK_SEQPACKET):
        with socket.socket(socket.AF_UNIX, kind) as s:
            s.settimeout(0.5)
            try:
                s.connect(path)
            except OSError as exc:
                if exc.errno == errno.EPROTOTYPE:
                    continue
                return exc.errno == errno.ECONNREFUSED
            return False
    return False
