"""The plugin binary in the CNI bin dir: atomic copy, hash, removal.

The copy goes through `atomic.atomic_write` (temp file in the bin dir, fsync, chmod 0755,
rename), so a runtime exec'ing the plugin at that moment runs the old or the new file,
never a truncated one (and a running old plugin keeps its inode). The plugin is opaque
here: any executable file.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import stat
import threading
from dataclasses import dataclass
from pathlib import Path

import structlog

from agent.install.atomic import atomic_write, fsync_dir

log = structlog.get_logger()

BINARY_MODE = 0o755

# sha256 by (path, dev, ino, size, mtime_ns, ctime_ns): readiness probes re-check often.
_hash_cache: dict[tuple[str, int, int, int, int, int], str] = {}
_hash_lock = threading.Lock()


@dataclass(frozen=True)
class BinaryInfo:
    path: Path
    present: bool
    sha256: str | None = None
    mode: int | None = None

    @property
    def executable(self) -> bool:
        return self.mode is not None and bool(self.mode & 0o111)

    def to_dict(self) -> dict[str, object]:
        return {"path": str(self.path), "present": self.present, "sha256": self.sha256,
                "mode": None if self.mode is None else f"{self.mode:04o}"}


def sha256_file(path: Path) -> str:
    st = os.stat(path)
    key = (str(path), st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)
    with _hash_lock:
        cached = _hash_cache.get(key)
    if cached is not None:
        return cached
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    value = digest.hexdigest()
    with _hash_lock:
        if len(_hash_cache) > 64:
            _hash_cache.clear()
        _hash_cache[key] = value
    return value


def binary_info(path: Path) -> BinaryInfo:
    """What is at `path` now (a regular file or nothing)."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return BinaryInfo(path=path, present=False)
    if not stat.S_ISREG(st.st_mode):
        return BinaryInfo(path=path, present=False)
    try:
        digest: str | None = sha256_file(path)
    except FileNotFoundError:
        return BinaryInfo(path=path, present=False)
    return BinaryInfo(path=path, present=True, sha256=digest, mode=stat.S_IMODE(st.st_mode))


def install_binary(source: Path, dest: Path) -> bool:
    """Make `dest` a 0755 copy of `source`; return True if anything changed."""
    src_sha = sha256_file(source)
    current = binary_info(dest)
    if current.present and current.sha256 == src_sha:
        if current.mode != BINARY_MODE:
            os.chmod(dest, BINARY_MODE)
            log.info("cni_install_binary_mode_fixed", path=str(dest))
            return True
        return False
    atomic_write(dest, source.read_bytes(), mode=BINARY_MODE)
    log.info("cni_install_binary_installed", path=str(dest), sha256=src_sha,
             replaced=current.present)
    return True


def remove_binary(dest: Path) -> bool:
    """Remove `dest` if it is there; return True if it was."""
    try:
        os.unlink(dest)
    except FileNotFoundError:
        return False
    with contextlib.suppress(OSError):
        fsync_dir(dest.parent)
    log.info("cni_install_binary_removed", path=str(dest))
    return True
