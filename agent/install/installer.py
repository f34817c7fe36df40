"""Install, check, repair and uninstall the CNI plugin and its conflist entry.

Order matters: the binary goes in before the entry (a runtime never runs a chain naming a
plugin that is not there yet), and the entry comes out before the binary on uninstall.

`stop(upgrade=True)` (the default) leaves both in place. While the agent is away (restart,
upgrade), the plugin fails ADD because it cannot reach the agent, so new pods wait for the
new agent instead of starting without capture (fail closed). Only a real removal of the
agent from the node (`stop(upgrade=False)`, `meshnode install remove`) takes them out.
"""

from __future__ import annotations

import contextlib
import os
import stat
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import structlog

from agent.install import conflist, metrics
from agent.install.atomic import atomic_write, fsync_dir, remove_stale_temps
from agent.install.binary import BINARY_MODE, binary_info, install_binary, sha256_file
from agent.install.binary import remove_binary as _remove_binary
from agent.install.config import InstallConfig
from agent.install.outcome import CheckResult, RepairOutcome
from agent.install.state import Event, InstallState, load_state, save_state
from agent.install.watcher import InstallWatcher

log = structlog.get_logger()

# Largest config file we read (a conflist is a few KiB; this guards against a stray huge file).
MAX_CONFIG_BYTES = 1 << 20


class InstallError(Exception):
    """The install cannot be done as configured (the message says why)."""


class NoPrimaryConfig(InstallError):
    """No valid CNI config in net.d yet: nothing to chain into (the primary CNI is not up)."""


@dataclass(frozen=True)
class _NetFile:
    name: str
    data: bytes | None  # None: unreadable


class Installer:
    """Owns the plugin binary and our conflist entry on one node."""

    def __init__(self, config: InstallConfig) -> None:
        self.config = config
        self._lock = threading.RLock()
        self._state: InstallState = load_state(config.state_file)
        self._installed_once = False
        self._last_primary: str | None = None
        self._watcher: InstallWatcher | None = None

    # ---- reading -----------------------------------------------------------------------

    def _read_net_dir(self) -> list[_NetFile]:
        files: list[_NetFile] = []
        try:
            entries = list(os.scandir(self.config.cni_net_dir))
        except FileNotFoundError:
            return files
        for entry in entries:
            if not conflist.is_config_name(entry.name):
                continue
            try:
                if entry.is_dir():
                    continue
                with open(entry.path, "rb") as f:
                    data: bytes | None = f.read(MAX_CONFIG_BYTES + 1)
                if data is not None and len(data) > MAX_CONFIG_BYTES:
                    data = None
            except FileNotFoundError:
                continue
            except OSError:
                data = None
            files.append(_NetFile(entry.name, data))
        return files

    def _select(self) -> tuple[conflist.Selection, dict[str, bytes | None]]:
        files = self._read_net_dir()
        raw = {f.name: f.data for f in files}
        return conflist.choose_primary((f.name, f.data) for f in files), raw

    def check(self) -> CheckResult:
        """Re-read the binary and net.d; update the ready gauge."""
        cfg = self.config
        problems: list[str] = []
        sel, _ = self._select()
        entry: dict[str, Any] | None = None
        primary_path: Path | None = None
        if sel.primary is None:
            problems.append("no_primary_config")
        else:
            primary_path = cfg.cni_net_dir / sel.primary.filename
            ours = conflist.find_ours(sel.primary.doc, cfg.plugin_type)
            entry = ours[0] if ours else None
            problem = conflist.entry_problem(sel.primary, cfg.entry.to_dict())
            if problem is not None:
                if (self._last_primary is not None
                        and self._last_primary != sel.primary.filename):
                    problem = "primary_changed"
                problems.append(problem)
        binary = binary_info(cfg.binary_path)
        source_sha: str | None = None
        with contextlib.suppress(OSError):
            source_sha = sha256_file(cfg.plugin_source)
        if not binary.present:
            problems.append("binary_missing")
        else:
            if source_sha is not None and source_sha != binary.sha256:
                problems.append("binary_changed")
            if binary.mode != BINARY_MODE:
                problems.append("binary_mode")
        result = CheckResult(problems=tuple(problems), binary=binary, source_sha256=source_sha,
                             primary=primary_path, entry=entry, skipped=tuple(sel.skipped))
        metrics.READY.set(1 if result.ready else 0)
        return result

    def ready(self) -> bool:
        """For the agent's readiness endpoint: binary in place and our entry chained."""
        return self.check().ready

    # ---- writing -----------------------------------------------------------------------

    def install(self, reason: str = "install") -> list[str]:
        """Put binary and entry in place (no-op if they are); return what changed.

        Raises NoPrimaryConfig while net.d has no valid config, InstallError if the plugin
        source is missing and no binary is installed.
        """
        cfg = self.config
        with self._lock:
            for d in (cfg.cni_bin_dir, cfg.cni_net_dir):
                remove_stale_temps(d)
            changes: list[str] = []
            if cfg.plugin_source.is_file():
                os.makedirs(cfg.cni_bin_dir, exist_ok=True)
                if install_binary(cfg.plugin_source, cfg.binary_path):
                    changes.append(f"binary:{cfg.binary_path}")
            elif binary_info(cfg.binary_path).present:
                log.warning("cni_install_plugin_source_missing", source=str(cfg.plugin_source),
                            keeping=str(cfg.binary_path))
            else:
                raise InstallError(f"plugin source {cfg.plugin_source} not found (build it "
                                   "with cni/build.sh, or `make setup`)")
            changes += self._chain_into_primary()
            self._installed_once = True
            if changes:
                self._state.last_install = Event.now(reason)
                save_state(cfg.state_file, self._state)
                log.info("cni_install_installed", reason=reason, changes=changes)
            self.check()
            return changes

    def _chain_into_primary(self) -> list[str]:
        cfg = self.config
        entry = cfg.entry.to_dict()
        for _attempt in range(5):
            sel, raw = self._select()
            primary = sel.primary
            if primary is None:
                raise NoPrimaryConfig(
                    f"no valid CNI config (.conf/.conflist/.json) in {cfg.cni_net_dir}")
            changes: list[str] = []
            if conflist.entry_problem(primary, entry) is not None:
                src = cfg.cni_net_dir / primary.filename
                target_name, doc = conflist.chain(
                    primary, entry, wrap_name=cfg.wrap_name,
                    wrap_cni_version=cfg.wrap_cni_version)
                target = cfg.cni_net_dir / target_name
                try:
                    st = os.stat(src)
                except FileNotFoundError:
                    continue  # gone since we read it: choose again
                # Another agent may have rewritten the file since we read it: start over
                # rather than write our edit of its old content over its new one.
                if _read_or_none(src) != raw.get(primary.filename):
                    continue
                # An edited-in-place config that is a symlink stays one: write its target.
                write_to = Path(os.path.realpath(src)) if target == src else target
                atomic_write(write_to, conflist.render(doc), mode=stat.S_IMODE(st.st_mode),
                             uid=st.st_uid, gid=st.st_gid)
                changes.append(f"conflist:{target}")
                if target != src:
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(src)
                    fsync_dir(cfg.cni_net_dir)
                    changes.append(f"wrapped:{src}")
                    log.info("cni_install_conf_wrapped", source=str(src), target=str(target))
                self._last_primary = target_name
            else:
                self._last_primary = primary.filename
            changes += self._remove_from_files(exclude={self._last_primary})
            return changes
        raise InstallError(f"{cfg.cni_net_dir}: config keeps changing under us; will retry")

    def _remove_from_files(self, exclude: set[str | None]) -> list[str]:
        """Take our entries out of every other config file in net.d (stale after a switch)."""
        cfg = self.config
        changes: list[str] = []
        for f in self._read_net_dir():
            if f.name in exclude or f.data is None:
                continue
            try:
                doc = conflist.load_json(f.data)
            except conflist.ConfigError:
                continue
            if not isinstance(doc, dict):
                continue
            new_doc, removed = conflist.remove_ours(doc, cfg.plugin_type)
            if not removed:
                continue
            path = cfg.cni_net_dir / f.name
            if not conflist.plugins_of(new_doc):
                log.warning("cni_install_entry_left_in_place", path=str(path),
                            why="removing it would leave no plugins")
                continue
            try:
                st = os.stat(path)
                atomic_write(Path(os.path.realpath(path)), conflist.render(new_doc),
                             mode=stat.S_IMODE(st.st_mode), uid=st.st_uid, gid=st.st_gid)
            except FileNotFoundError:
                continue
            changes.append(f"entry_removed:{path}")
            log.info("cni_install_entry_removed", path=str(path), count=removed)
        return changes

    def repair(self, trigger: str = "event") -> RepairOutcome:
        """Check, and install again if anything is broken. Never raises."""
        with self._lock:
            try:
                result = self.check()
                if result.ready:
                    self._installed_once = True
                    if result.primary is not None:
                        self._last_primary = result.primary.name
                    return RepairOutcome.OK
                reason = result.problems[0]
                first = not self._installed_once
                self.install(reason=trigger if first else reason)
            except NoPrimaryConfig as exc:
                log.info("cni_install_waiting_for_primary_config", detail=str(exc))
                metrics.READY.set(0)
                return RepairOutcome.WAITING
            except (InstallError, OSError) as exc:
                log.error("cni_install_repair_failed", trigger=trigger, error=str(exc))
                metrics.READY.set(0)
                return RepairOutcome.FAILED
            if first:
                return RepairOutcome.INSTALLED
            metrics.REPAIRS.labels(reason=reason).inc()
            self._state.last_repair = Event.now(reason)
            save_state(self.config.state_file, self._state)
            log.warning("cni_install_repaired", reason=reason, problems=list(result.problems),
                        trigger=trigger)
            return RepairOutcome.REPAIRED

    def uninstall(self) -> list[str]:
        """Take our entry out of every config in net.d, then remove the binary."""
        cfg = self.config
        with self._lock:
            changes = self._remove_from_files(exclude=set())
            if _remove_binary(cfg.binary_path):
                changes.append(f"binary_removed:{cfg.binary_path}")
            for d in (cfg.cni_bin_dir, cfg.cni_net_dir):
                remove_stale_temps(d, max_age=0.0)
            self._installed_once = False
            self._last_primary = None
            metrics.READY.set(0)
            log.info("cni_install_uninstalled", changes=changes)
            return changes

    # ---- lifecycle ---------------------------------------------------------------------

    def start(self) -> None:
        """Install (or wait for the primary config), then watch and repair in a thread."""
        with self._lock:
            if self._watcher is not None:
                return
            for d in (self.config.cni_bin_dir, self.config.cni_net_dir):
                os.makedirs(d, exist_ok=True)
            watcher = InstallWatcher(self, self.config)
            watcher.start()  # watches are in place before the first check: no missed event
            self._watcher = watcher
        self.repair(trigger="start")

    def stop(self, *, upgrade: bool = True) -> None:
        """Stop watching. `upgrade=True` leaves plugin and entry in place (see module doc)."""
        with self._lock:
            watcher, self._watcher = self._watcher, None
        if watcher is not None:
            watcher.stop()
        if upgrade:
            log.info("cni_install_stopped", left_in_place=True)
            return
        self.uninstall()

    @property
    def watching(self) -> bool:
        w = self._watcher
        return w is not None and w.alive

    # ---- status ------------------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        cfg = self.config
        result = self.check()
        state = self._state
        if state.last_repair is None and state.last_install is None:
            state = load_state(cfg.state_file)
        return {
            "ready": result.ready,
            "problems": list(result.problems),
            "binary": {**result.binary.to_dict(), "source": str(cfg.plugin_source),
                       "source_sha256": result.source_sha256},
            "conflist": {
                "path": None if result.primary is None else str(result.primary),
                "net_dir": str(cfg.cni_net_dir),
                "skipped": [{"file": n, "reason": r} for n, r in result.skipped],
            },
            "entry": result.entry,
            "last_repair": None if state.last_repair is None else {
                "time": state.last_repair.time, "reason": state.last_repair.reason},
            "last_install": None if state.last_install is None else {
                "time": state.last_install.time, "reason": state.last_install.reason},
        }


def _read_or_none(path: Path) -> bytes | None:
    try:
        return path.read_bytes()
    except OSError:
        return None
