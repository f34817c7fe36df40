"""Reload the mesh file when it changes; a bad file is logged and the last good one kept.

The directory is watched, not the file: editors and `kubectl` (ConfigMap `..data` symlink
swaps) replace the file by rename, which a watch on the file itself would miss.

A non-atomic edit (truncate, then write) shows an empty or half-written file for a moment.
A read that would take resources away (empty, invalid, unreadable, or simply fewer
resources) is therefore held back: read again after HOLD_SECONDS, and acted on only when two
reads in a row give the same bytes. A file still changing after HOLD_TRIES re-reads is left
alone: the writer's next close (an inotify event) brings it back here.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
from dataclasses import dataclass
from pathlib import Path

import structlog

from controlplane import metrics
from controlplane.mesh import Mesh, MeshError, parse
from controlplane.store import MeshStore
from core.fswatch import HOLD_SECONDS, HOLD_TRIES, changes

log = structlog.get_logger("controlplane.watch")

# What a held-back read that stays that way is refused with: a writer that truncated the
# file and died must not empty the mesh; an empty mesh is asked for explicitly.
EMPTY_REFUSED = ("empty file: the last good mesh stays served (an empty mesh is written "
                 "explicitly, e.g. `workloads: []`)")


@dataclass(frozen=True)
class _Read:
    data: bytes | None      # None: unreadable
    error: str = ""         # the read error (unreadable) or the parse error (invalid)
    mesh: Mesh | None = None
    blank: bool = False     # nothing but whitespace, comments and document markers

    def same(self, other: _Read) -> bool:
        return self.data == other.data and self.error == other.error


class MeshWatcher:
    def __init__(self, path: Path, store: MeshStore, served: bytes) -> None:
        """`served`: the file's bytes that `store` was built from."""
        self.path = path
        self.store = store
        self._digest = hashlib.sha256(served).hexdigest()
        self.reloads = 0
        self.rejects = 0
        self.held_back = 0
        metrics.MESH_FILE_VALID.set(1)

    async def run(self) -> None:
        names = {self.path.name, "..data"}
        async with contextlib.aclosing(changes(self.path.parent, names.__contains__)) as bursts:
            async for changed_at in bursts:  # push latency counts from the first event
                await self.reload(changed_at)

    async def reload(self, changed_at: float | None = None) -> bool:
        """Re-read the file if its bytes changed; True if a new mesh is being served.
        `changed_at`: time.monotonic() of the change on disk (default: now)."""
        read = self._read()
        for attempt in range(1, HOLD_TRIES + 1):
            reason = self._suspect(read)
            if reason is None:
                return self._apply(read, changed_at)
            self.held_back += 1
            metrics.MESH_READS_HELD_BACK.labels(reason=reason).inc()
            log.warning("mesh_read_held_back", path=str(self.path), reason=reason,
                        attempt=attempt, error=read.error, recheck_s=HOLD_SECONDS)
            await asyncio.sleep(HOLD_SECONDS)
            again = self._read()
            if again.same(read):
                return self._apply(read, changed_at)  # stable: whatever it is, it is meant
            read = again
        if self._suspect(read) is None:
            return self._apply(read, changed_at)
        # Still changing: keep serving the last good mesh; the writer's close re-triggers us.
        log.warning("mesh_read_held_back", path=str(self.path), reason="unstable",
                    attempt=HOLD_TRIES + 1, error=read.error, recheck_s=0)
        return False

    def _read(self) -> _Read:
        try:
            data = self.path.read_bytes()
        except OSError as exc:
            return _Read(None, error=exc.strerror or str(exc))
        if hashlib.sha256(data).hexdigest() == self._digest:
            return _Read(data)  # what is served: nothing to parse
        text = data.decode(errors="replace")
        try:
            mesh = parse(text, str(self.path))
        except MeshError as exc:
            return _Read(data, error=str(exc))
        return _Read(data, mesh=mesh, blank=_blank(text))

    def _suspect(self, read: _Read) -> str | None:
        """Why this read may be a file caught mid-write (None: act on it now)."""
        if read.data is None:
            return metrics.HELD_UNREADABLE
        if read.mesh is None:
            return metrics.HELD_INVALID if read.error else None  # None: the served bytes
        if self.store.empty:
            return None
        if read.blank:
            return metrics.HELD_EMPTY
        if self.store.removals(read.mesh):
            return metrics.HELD_REMOVES
        return None

    def _apply(self, read: _Read, changed_at: float | None) -> bool:
        if read.data is None:
            # Re-parse whatever comes back next, even the same bytes: "valid" must return.
            self._digest = ""
            metrics.MESH_RELOADS.labels(result="error").inc()
            metrics.MESH_FILE_VALID.set(0)
            log.error("mesh_file_unreadable", path=str(self.path), error=read.error)
            return False
        digest = hashlib.sha256(read.data).hexdigest()
        if digest == self._digest:
            return False
        self._digest = digest
        error = read.error or (EMPTY_REFUSED if read.blank and not self.store.empty else "")
        if error or read.mesh is None:
            self.rejects += 1
            metrics.MESH_RELOADS.labels(result="error").inc()
            metrics.MESH_FILE_VALID.set(0)
            log.error("mesh_file_rejected", error=error)
            return False
        deltas = self.store.update(read.mesh, changed_at)
        self.reloads += 1
        metrics.MESH_RELOADS.labels(result="ok").inc()
        metrics.MESH_FILE_VALID.set(1)
        log.info("mesh_reloaded", version=self.store.version,
                 changes={t.rsplit(".", 1)[-1]: {"updated": d.updated, "removed": d.removed}
                          for t, d in deltas.items()})
        return True


def _blank(text: str) -> bool:
    return all(not line.strip() or line.lstrip().startswith("#")
               or line.strip() in ("---", "...") for line in text.splitlines())
