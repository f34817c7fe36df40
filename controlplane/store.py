"""The served state: named, versioned resources, and who to wake when they change.

`ServedStore` is what the ADS streams and the CA read; controlplane/ambientstore.py's
`AmbientStore` fills it from Kubernetes and Istio objects (a manifests directory or the API
server), one change at a time.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from contextlib import contextmanager

from controlplane import metrics
from controlplane.resources import SERVED_TYPES, Changes, Entry, Snapshot

# The change log is trimmed (of what every feed has read) once it holds this many changes,
# then again whenever it has doubled.
LOG_TRIM = 4096


class ChangeFeed:
    """One ADS stream's view of the store's changes: `event` is set on every change, and
    `take()` returns the names changed since the last take (with the version served before
    the first of those changes), so a woken stream looks at what changed, not at the whole
    snapshot. Made by `ServedStore.feed()`."""

    def __init__(self, store: ServedStore) -> None:
        self.event = asyncio.Event()
        self.cursor = store.log_end  # the position in the store's log read up to
        self._store = store

    def take(self) -> Changes:
        """Not to be changed: feeds that read from the same position share it."""
        return self._store.changes_since(self)


class ServedStore:
    def __init__(self, snapshot: Snapshot, trust_domain: str) -> None:
        self.trust_domain = trust_domain
        self.snapshot: Snapshot = snapshot
        # Starts at 1 so that every response carries a non-empty system_version_info.
        self.version = 1
        # time.monotonic() of the change behind the served version (push latency is measured
        # from it); None until a change after start.
        self.changed_at: float | None = None
        # Every change while a feed is open: (type URL, name, version served before or None).
        # _log[0] is change number _log_start; what every feed has read is dropped (_trim).
        self._log: list[tuple[str, str, str | None]] = []
        self._log_start = 0
        self._trim_at = LOG_TRIM
        self._feeds: set[ChangeFeed] = set()
        # What changes_since gave, by start position, while the log ends at _shared_end:
        # the streams woken by one change mostly read from the same position.
        self._shared: dict[int, Changes] = {}
        self._shared_end = 0
        self.closed = False  # set by close(): every ADS stream ends
        metrics.MESH_LOADED.set(time.time())
        self._export()

    def has_identity_on_node(self, namespace: str, service_account: str, node: str) -> bool:
        """Whether a workload of that identity runs on `node` (the CA signs only those)."""
        raise NotImplementedError

    def publish(self, updated: Snapshot, removed: dict[str, set[str]],
                changed_at: float | None = None) -> bool:
        """Apply one change in place (O(size of the change), not of the mesh); wake every
        stream if anything changed. The ADS streams read the snapshot only between awaits, so
        an in-place change is never seen half-done."""
        changed = False
        for type_url, entries in updated.items():
            served = self.snapshot.setdefault(type_url, {})
            for name, entry in entries.items():
                old = served.get(name)
                if old is None or old.version != entry.version or old.aliases != entry.aliases:
                    served[name] = entry
                    self._record(type_url, name, old)
                    changed = True
        for type_url, names in removed.items():
            served = self.snapshot.setdefault(type_url, {})
            for name in names:
                if (gone := served.pop(name, None)) is not None:
                    self._record(type_url, name, gone)
                    changed = True
        metrics.MESH_LOADED.set(time.time())
        if changed:
            self._changed(changed_at)
        return changed

    def _changed(self, changed_at: float | None) -> None:
        self.version += 1
        self.changed_at = time.monotonic() if changed_at is None else changed_at
        self._export()
        self._trim()
        for f in self._feeds:
            f.event.set()

    # -- the change log ----------------------------------------------------------------------

    @property
    def log_end(self) -> int:
        """The position after the last change logged."""
        return self._log_start + len(self._log)

    def _record(self, type_url: str, name: str, old: Entry | None) -> None:
        if self._feeds:  # a feed opened later starts from the snapshot as it is then
            self._log.append((type_url, name, None if old is None else old.version))

    def changes_since(self, feed: ChangeFeed) -> Changes:
        """What changed since `feed` last read (ChangeFeed.take)."""
        end = self.log_end
        if self._shared_end != end:
            self._shared, self._shared_end = {}, end
        out = self._shared.get(feed.cursor)
        if out is None:
            out = self._shared[feed.cursor] = {}
            for type_url, name, old in self._log[feed.cursor - self._log_start:]:
                out.setdefault(type_url, {}).setdefault(name, old)
        feed.cursor = end
        return out

    def _trim(self) -> None:
        if len(self._log) < self._trim_at:
            return
        low = min((f.cursor for f in self._feeds), default=self.log_end)
        del self._log[:low - self._log_start]
        self._log_start = low
        self._trim_at = max(LOG_TRIM, 2 * len(self._log))

    def _export(self) -> None:
        metrics.MESH_VERSION.set(self.version)
        for type_url in SERVED_TYPES:
            metrics.RESOURCES.labels(type_url=type_url).set(len(self.snapshot.get(type_url, {})))

    def close(self) -> None:
        """The process is stopping: wake every ADS stream, which sees `closed` and ends
        cleanly (its client gets status OK and reconnects) instead of being cut."""
        self.closed = True
        for f in self._feeds:
            f.event.set()

    @contextmanager
    def feed(self) -> Iterator[ChangeFeed]:
        """A ChangeFeed for one ADS stream, from the snapshot as it is now."""
        f = ChangeFeed(self)
        if self.closed:
            f.event.set()
        self._feeds.add(f)
        try:
            yield f
        finally:
            self._feeds.discard(f)
            if not self._feeds:  # nobody reads the log: it starts again empty
                self._log_start = self.log_end
                self._log.clear()
                self._trim_at = LOG_TRIM
