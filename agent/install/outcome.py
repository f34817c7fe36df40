"""What a check or a repair of the install found: the installer returns these, the
watcher acts on them."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from agent.install.binary import BinaryInfo


class RepairOutcome(enum.Enum):
    OK = "ok"              # nothing was broken
    INSTALLED = "installed"  # first install of this process
    REPAIRED = "repaired"  # something was broken and is fixed
    WAITING = "waiting"    # no primary config yet
    FAILED = "failed"      # an error; try again later


@dataclass(frozen=True)
class CheckResult:
    """Is the install valid right now, and if not, why (most telling problem first)."""

    problems: tuple[str, ...]
    binary: BinaryInfo
    source_sha256: str | None
    primary: Path | None
    entry: dict[str, Any] | None
    skipped: tuple[tuple[str, str], ...] = field(default=())

    @property
    def ready(self) -> bool:
        return not self.problems
