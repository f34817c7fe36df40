"""Atomic file replacement in the CNI directories.

A container runtime may read the conflist (or exec the plugin) at any moment, so a file is
never written in place: the bytes go to a temp file in the same directory, are fsynced and
given their final mode and owner, and the temp file is renamed over the target. rename(2)
within one filesystem is atomic, so a reader sees the old file or the new one, never half.

Temp files end in `TEMP_SUFFIX`. That suffix is not a CNI config extension (`.conf`,
`.conflist`, `.json`), so the runtime never picks one up, and the watcher ignores them.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import time
from pathlib import Path

import structlog

log = structlog.get_logger()

TEMP_SUFFIX = ".meshnode-tmp"
# A temp file younger than this may belong to a concurrent writer (e.g. the old and the
# new agent during a rolling upgrade); older ones are left-overs of a crash.
STALE_TEMP_AGE_SECONDS = 60.0


def is_temp_name(name: str) -> bool:
    return name.endswith(TEMP_SUFFIX)


def temp_path_for(target: Path) -> Path:
    return target.with_name(f".{target.name}.{secrets.token_hex(6)}{TEMP_SUFFIX}")


def atomic_write(target: Path, data: bytes, *, mode: int,
                 uid: int | None = None, gid: int | None = None) -> None:
    """Replace `target` with `data`: temp file in the same dir, fsync, chmod, rename."""
    tmp = temp_path_for(target)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    try:
        try:
            view = memoryview(data)
            while view:
                written = os.write(fd, view)
                view = view[written:]
            os.fchmod(fd, mode)
            if uid is not None or gid is not None:
                os.fchown(fd, -1 if uid is None else uid, -1 if gid is None else gid)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise
    fsync_dir(target.parent)


def fsync_dir(directory: Path) -> None:
    """Make a rename or unlink durable (best effort: some filesystems refuse)."""
    try:
        fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError:
        return
    try:
        with contextlib.suppress(OSError):
            os.fsync(fd)
    finally:
        os.close(fd)


def remove_stale_temps(directory: Path, *, max_age: float = STALE_TEMP_AGE_SECONDS,
                       now: float | None = None) -> list[Path]:
    """Delete our temp files in `directory` older than `max_age` seconds; return them."""
    removed: list[Path] = []
    current = time.time() if now is None else now
    try:
        entries = list(os.scandir(directory))
    except FileNotFoundError:
        return removed
    for entry in entries:
        if not is_temp_name(entry.name):
            continue
        try:
            if not entry.is_file(follow_symlinks=False):
                continue
            if current - entry.stat(follow_symlinks=False).st_mtime < max_age:
                continue
            os.unlink(entry.path)
        except FileNotFoundError:
            continue
        removed.append(Path(entry.path))
        log.info("cni_install_stale_temp_removed", path=entry.path)
    return removed
