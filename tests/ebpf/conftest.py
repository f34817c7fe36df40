"""Fixtures for the eBPF tests: a private bpffs and one loader per module."""

from __future__ import annotations

import contextlib
import os
import subprocess
import tempfile
from collections.abc import Iterator

import pytest

from agent.ebpf.loader import Loader

BPFFS_PREFIX = "meshnode-test-bpffs-"


def _sweep_stale_mounts() -> None:
    """A run that was SIGKILLed leaves its bpffs mounted with links pinned (so still
    attached): detach and unmount those of dead test processes."""
    tmp = tempfile.gettempdir()
    for name in os.listdir(tmp):
        if not name.startswith(BPFFS_PREFIX):
            continue
        pid = int(name[len(BPFFS_PREFIX):].split("-", 1)[0] or 0)
        if pid and os.path.exists(f"/proc/{pid}"):
            continue
        mnt = os.path.join(tmp, name)
        if os.path.ismount(mnt):
            for sub in os.listdir(mnt):
                with contextlib.suppress(OSError):
                    Loader(pin_dir=os.path.join(mnt, sub)).destroy()
            subprocess.run(["umount", "-l", mnt], check=False)
        with contextlib.suppress(OSError):
            os.rmdir(mnt)


@pytest.fixture(scope="module")
def bpffs() -> Iterator[str]:
    """A private bpffs mount, so nothing is pinned in the host's /sys/fs/bpf."""
    _sweep_stale_mounts()
    mnt = tempfile.mkdtemp(prefix=f"{BPFFS_PREFIX}{os.getpid()}-")
    subprocess.run(["mount", "-t", "bpf", "bpf", mnt], check=True)
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", mnt], check=False)
        with contextlib.suppress(OSError):
            os.rmdir(mnt)


@pytest.fixture(scope="module")
def loader(bpffs: str) -> Iterator[Loader]:
    ld = Loader(pin_dir=os.path.join(bpffs, f"meshnode-test-{os.getpid()}"))
    try:
        ld.load()
        yield ld
    finally:
        ld.destroy()
