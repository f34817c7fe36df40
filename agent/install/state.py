"""The last install/repair, kept in a small JSON file so `meshnode install status` (another
process than the agent) can show it. Written atomically; reading tolerates anything."""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import structlog

from agent.install.atomic import atomic_write

log = structlog.get_logger()


@dataclass(frozen=True)
class Event:
    time: str  # RFC 3339, UTC
    reason: str

    @classmethod
    def now(cls, reason: str) -> Event:
        return cls(time=datetime.now(UTC).isoformat(timespec="milliseconds"), reason=reason)


@dataclass
class InstallState:
    last_repair: Event | None = None
    last_install: Event | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"last_repair": None if self.last_repair is None else asdict(self.last_repair),
                "last_install": None if self.last_install is None else asdict(self.last_install)}


def _event(raw: Any) -> Event | None:
    if isinstance(raw, dict) and isinstance(raw.get("time"), str) \
            and isinstance(raw.get("reason"), str):
        return Event(time=raw["time"], reason=raw["reason"])
    return None


def load_state(path: Path | None) -> InstallState:
    if path is None:
        return InstallState()
    try:
        raw = json.loads(path.read_text())
    except (OSError, ValueError):
        return InstallState()
    if not isinstance(raw, dict):
        return InstallState()
    return InstallState(last_repair=_event(raw.get("last_repair")),
                        last_install=_event(raw.get("last_install")))


def save_state(path: Path | None, state: InstallState) -> None:
    """Best effort: a state file that cannot be written only costs `status` its history."""
    if path is None:
        return
    try:
        os.makedirs(path.parent, mode=0o755, exist_ok=True)
        atomic_write(path, (json.dumps(state.to_dict(), indent=2) + "\n").encode(), mode=0o644)
    except OSError as exc:
        log.warning("cni_install_state_write_failed", path=str(path), error=str(exc))
