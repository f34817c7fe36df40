"""Watch net.d and the CNI bin dir with inotify and repair the install when it breaks.

Library: `asyncinotify` (PyPI, maintained, no dependencies, ships type hints so it checks
under `mypy --strict`). It wraps inotify(7) directly via ctypes and offers a synchronous
`sync_get()` with a timeout next to its asyncio API, so this watcher runs in a plain thread
(usable from the asyncio agent and from the CLI alike) and stops within one poll interval.
Polling or mtime scans would miss a rewrite-and-restore in between and cost CPU;
`inotify_simple` has no type hints; `watchdog` adds a thread pool and non-Linux backends we
do not need.

What triggers a check:
- in net.d: any create/write/rename/delete/chmod of a `.conf`/`.conflist`/`.json` file
  (another CNI rewriting in place, replacing by rename, or deleting the file);
- in the bin dir: the same for our binary (deleted or replaced);
- the directories themselves going away, inotify queue overflow, and a periodic resync.

Events are debounced: the check runs once the directory has been quiet for
`debounce_seconds` and no file is mid-write (a create/modify without its close), but at
most `max_delay_seconds` after the first event, so a repair lands well within 1 s. Our own
writes also raise events; the check then finds everything in place and does nothing, so
there is no self-inflicted loop. A loop with another agent is bounded by `RepairThrottle`.
"""

from __future__ import annotations

import contextlib
import threading
import time
from pathlib import Path
from typing import Protocol

import structlog
from asyncinotify import Event, Inotify, Mask

from agent.install import conflist
from agent.install.atomic import is_temp_name
from agent.install.config import InstallConfig
from agent.install.outcome import CheckResult, RepairOutcome
from agent.install.throttle import RepairThrottle
from core.backoff import Backoff

log = structlog.get_logger()

POLL_SECONDS = 0.1
RETRY_SECONDS = 1.0  # after a failed repair; doubles up to RETRY_MAX_SECONDS
RETRY_MAX_SECONDS = 30.0
DIR_MASK = (Mask.CREATE | Mask.MODIFY | Mask.CLOSE_WRITE | Mask.MOVED_FROM | Mask.MOVED_TO
            | Mask.DELETE | Mask.ATTRIB | Mask.DELETE_SELF | Mask.MOVE_SELF | Mask.ONLYDIR)
_WRITE_START = Mask.CREATE | Mask.MODIFY
_WRITE_END = Mask.CLOSE_WRITE | Mask.DELETE | Mask.MOVED_FROM | Mask.MOVED_TO
_DIR_GONE = Mask.DELETE_SELF | Mask.MOVE_SELF | Mask.IGNORED | Mask.UNMOUNT


class Repairer(Protocol):
    """What the watcher calls: agent/install/installer.py's Installer (which starts it)."""

    def check(self) -> CheckResult: ...
    def repair(self, trigger: str = ...) -> RepairOutcome: ...


class InstallWatcher:
    """A daemon thread: inotify on both dirs, debounce, throttle, `installer.repair()`."""

    def __init__(self, installer: Repairer, config: InstallConfig) -> None:
        self._installer = installer
        self._cfg = config
        self._dirs = (config.cni_net_dir, config.cni_bin_dir)
        self._throttle = RepairThrottle(config.throttle_burst, config.throttle_rate)
        self._stop = threading.Event()
        self._started = threading.Event()
        self._thread: threading.Thread | None = None
        self._start_error: BaseException | None = None
        # debounce state
        self._first_event: float | None = None
        self._last_event = 0.0
        self._writing: set[tuple[Path, str]] = set()
        self._not_before = 0.0
        self._trigger = "event"
        self._retry = Backoff(RETRY_SECONDS, RETRY_MAX_SECONDS, jitter=False)
        self._in_backoff = False  # _not_before was set by a failure, not by the throttle

    @property
    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def start(self) -> None:
        """Start the thread; return once the watches are in place."""
        if self._thread is not None:
            return
        self._thread = threading.Thread(target=self._main, name="cni-install-watch",
                                        daemon=True)
        self._thread.start()
        self._started.wait(timeout=5.0)
        if self._start_error is not None:
            raise self._start_error

    def stop(self, timeout: float = 2.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None

    # ---- thread ------------------------------------------------------------------------

    def _main(self) -> None:
        try:
            with Inotify(sync_timeout=POLL_SECONDS) as ino:
                watched: dict[Path, bool] = {d: False for d in self._dirs}
                try:
                    self._add_watches(ino, watched)
                except OSError as exc:
                    self._start_error = exc
                    return
                finally:
                    self._started.set()
                log.info("cni_install_watching", dirs=[str(d) for d in self._dirs])
                self._loop(ino, watched)
        except Exception as exc:  # a dead watcher must say so, not vanish
            log.error("cni_install_watcher_died", error=f"{type(exc).__name__}: {exc}")
        finally:
            self._started.set()

    def _add_watches(self, ino: Inotify, watched: dict[Path, bool]) -> bool:
        """Watch every dir not watched yet that exists; True if any watch was added."""
        added = False
        for d, ok in watched.items():
            if ok or not d.is_dir():
                continue
            ino.add_watch(d, DIR_MASK)
            watched[d] = True
            added = True
        return added

    def _loop(self, ino: Inotify, watched: dict[Path, bool]) -> None:
        clock = time.monotonic
        next_resync = clock() + self._cfg.resync_seconds
        while not self._stop.is_set():
            ino.sync_timeout = self._timeout(clock())
            event = ino.sync_get()
            now = clock()
            if event is not None:
                self._on_event(ino, event, watched, now)
            if not all(watched.values()):
                try:
                    if self._add_watches(ino, watched):
                        self._mark(now, "dir_recreated")
                except OSError as exc:
                    log.warning("cni_install_watch_failed", error=str(exc))
            if now >= next_resync:
                next_resync = now + self._cfg.resync_seconds
                self._mark(now, "resync")
                self._first_event = now - self._cfg.max_delay_seconds  # no debounce
            if self._due(now):
                self._reconcile(now)

    def _timeout(self, now: float) -> float:
        if self._first_event is None:
            return POLL_SECONDS
        due_at = max(self._not_before,
                     min(self._last_event + self._cfg.debounce_seconds,
                         self._first_event + self._cfg.max_delay_seconds))
        return min(POLL_SECONDS, max(0.0, due_at - now))

    def _mark(self, now: float, trigger: str) -> None:
        if self._first_event is None:
            self._first_event = now
            self._trigger = trigger
        self._last_event = now

    def _on_event(self, ino: Inotify, event: Event, watched: dict[Path, bool],
                  now: float) -> None:
        mask = event.mask
        if Mask.Q_OVERFLOW in mask:
            self._writing.clear()
            self._mark(now, "queue_overflow")
            return
        watch = event.watch
        directory = watch.path if watch is not None else None
        if mask & _DIR_GONE and event.name is None:
            if Mask.MOVE_SELF in mask and watch is not None:
                # The watch follows the moved dir; drop it and watch the path again.
                with contextlib.suppress(OSError):
                    ino.rm_watch(watch)
            for d in watched:
                if directory is None or d == directory:
                    watched[d] = False
            self._mark(now, "dir_gone")
            return
        if directory is None or event.name is None:
            return
        name = str(event.name)
        if is_temp_name(name):
            return
        if directory == self._cfg.cni_net_dir:
            if not conflist.is_config_name(name):
                return
        elif directory == self._cfg.cni_bin_dir:
            if name != self._cfg.binary_path.name:
                return
        else:
            return
        if self._in_backoff:  # something changed: try again now rather than after the backoff
            self._in_backoff = False
            self._not_before = 0.0
        key = (directory, name)
        if mask & _WRITE_END:
            self._writing.discard(key)
        elif mask & _WRITE_START:
            self._writing.add(key)
        self._mark(now, "event")

    def _due(self, now: float) -> bool:
        if self._first_event is None or now < self._not_before:
            return False
        if now - self._first_event >= self._cfg.max_delay_seconds:
            return True
        return not self._writing and now - self._last_event >= self._cfg.debounce_seconds

    def _reconcile(self, now: float) -> None:
        trigger = self._trigger
        self._first_event = None
        self._writing.clear()
        try:
            result = self._installer.check()
            if result.ready:
                return
            # Waiting for the primary CNI's config is not a fight: no throttling there.
            if "no_primary_config" not in result.problems:
                wait = self._throttle.delay()
                if wait > 0:
                    self._not_before = now + wait
                    self._in_backoff = False
                    self._mark(now, trigger)
                    return
            outcome = self._installer.repair(trigger=trigger)
        except Exception as exc:  # keep watching whatever went wrong
            log.error("cni_install_reconcile_error", error=f"{type(exc).__name__}: {exc}")
            outcome = RepairOutcome.FAILED
        if outcome is RepairOutcome.FAILED:
            self._not_before = now + self._retry.next()
            self._in_backoff = True
            self._mark(now, "retry")
        else:
            self._retry.reset()
            self._in_backoff = False
