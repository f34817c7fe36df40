"""Reload the mesh file when it changes; a bad file is logged and the last good one kept.

The directory is watched, not the file: editors and `kubectl` (ConfigMap `..data` symlink
swaps) replace the file by rename, which a watch on the file itself would miss.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from pathlib import Path

import structlog
from asyncinotify import Inotify, Mask

from controlplane import metrics
from controlplane.mesh import MeshError, parse
from controlplane.store import MeshStore

log = structlog.get_logger("controlplane.watch")

DIR_MASK = Mask.CLOSE_WRITE | Mask.MOVED_TO | Mask.CREATE | Mask.DELETE | Mask.ATTRIB
# Editors write in bursts (truncate, write, rename); one reload after the burst settles.
DEBOUNCE_SECONDS = 0.05


class MeshWatcher:
    def __init__(self, path: Path, store: MeshStore, served: bytes) -> None:
        """`served`: the file's bytes that `store` was built from."""
        self.path = path
        self.store = store
        self._digest = hashlib.sha256(served).hexdigest()
        self.reloads = 0
        self.rejects = 0
        metrics.MESH_FILE_VALID.set(1)

    async def run(self) -> None:
        names = {self.path.name, "..data"}
        with Inotify() as ino:
            ino.add_watch(self.path.parent, DIR_MASK)
            events = aiter(ino)
            while True:
                event = await anext(events)
                if event.name is not None and str(event.name) not in names:
                    continue
                changed_at = time.monotonic()  # push latency counts from here (debounce too)
                while True:
                    try:
                        await asyncio.wait_for(anext(events), DEBOUNCE_SECONDS)
                    except TimeoutError:
                        break
                self.reload(changed_at)

    def reload(self, changed_at: float | None = None) -> bool:
        """Re-read the file if its bytes changed; True if a new mesh is being served.
        `changed_at`: time.monotonic() of the change on disk (default: now)."""
        try:
            data = self.path.read_bytes()
        except OSError as exc:
            # Re-parse whatever comes back next, even the same bytes: "valid" must return.
            self._digest = ""
            metrics.MESH_RELOADS.labels(result="error").inc()
            metrics.MESH_FILE_VALID.set(0)
            log.error("mesh_file_unreadable", path=str(self.path), error=exc.strerror)
            return False
        digest = hashlib.sha256(data).hexdigest()
        if digest == self._digest:
            return False
        self._digest = digest
        try:
            mesh = parse(data.decode(errors="replace"), str(self.path))
        except MeshError as exc:
            self.rejects += 1
            metrics.MESH_RELOADS.labels(result="error").inc()
            metrics.MESH_FILE_VALID.set(0)
            log.error("mesh_file_rejected", error=str(exc))
            return False
        deltas = self.store.update(mesh, changed_at)
        self.reloads += 1
        metrics.MESH_RELOADS.labels(result="ok").inc()
        metrics.MESH_FILE_VALID.set(1)
        log.info("mesh_reloaded", version=self.store.version,
                 changes={t.rsplit(".", 1)[-1]: {"updated": d.updated, "removed": d.removed}
                          for t, d in deltas.items()})
        return True

