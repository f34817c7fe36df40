"""A private bpffs for a demo or benchmark run, so nothing is pinned in the host's
/sys/fs/bpf (which on a dev machine may not even be a bpffs mount)."""

from __future__ import annotations

import contextlib
import os
import subprocess
import tempfile
from collections.abc import Iterator

from agent.redirect.ebpf.loader import Loader
from core.bpf import PIN_DIR_ENV


@contextlib.contextmanager
def private_pins() -> Iterator[str]:
    """Mount a bpffs, point MESHNODE_BPF_PIN_DIR (and so every agent, proxy and backend
    started from here) at it; detach and unmount everything on the way out."""
    mnt = tempfile.mkdtemp(prefix="meshnode-bench-bpffs-")
    subprocess.run(["mount", "-t", "bpf", "bpf", mnt], check=True)
    pins = os.path.join(mnt, "meshnode")
    old = os.environ.get(PIN_DIR_ENV)
    os.environ[PIN_DIR_ENV] = pins
    try:
        yield pins
    finally:
        if old is None:
            os.environ.pop(PIN_DIR_ENV, None)
        else:
            os.environ[PIN_DIR_ENV] = old
        with contextlib.suppress(OSError):
            Loader(pin_dir=pins).destroy()
        subprocess.run(["umount", "-l", mnt], check=False)
        with contextlib.suppress(OSError):
            os.rmdir(mnt)
