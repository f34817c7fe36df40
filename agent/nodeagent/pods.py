"""Pod records and their persisted store.

State machine: pending → redirected → enrolled. `redirected` means the rules are in place;
`enrolled` adds the proxy's ack (the proxy issue). A pod is recorded as `pending` before any
rule is written, so an agent crash mid-enrollment is seen (and finished or undone) on restart.
"""

from __future__ import annotations

import contextlib
import enum
import json
import os
import tempfile
import threading
import time
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any


class PodState(enum.StrEnum):
    PENDING = "pending"
    REDIRECTED = "redirected"
    ENROLLED = "enrolled"


@dataclass
class PodRecord:
    container_id: str
    netns: str
    netns_inode: int
    ifname: str
    ips: list[str]
    name: str = ""
    namespace: str = ""
    uid: str = ""
    state: PodState = PodState.PENDING
    backend: str = ""
    capture: dict[str, Any] = field(default_factory=dict)  # per-pod redirect overrides
    last_change: float = field(default_factory=time.time)
    detail: str = ""

    def to_json(self) -> dict[str, Any]:
        d = {f.name: getattr(self, f.name) for f in fields(self)}
        d["state"] = self.state.value
        return d

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> PodRecord:
        d = dict(d)
        d["state"] = PodState(d.get("state", "pending"))
        return cls(**d)


class PodStore:
    """Pods by container id; each pod persisted as its own small file, so a change costs the
    same with 5 pods or 5000 (rewriting one file of all pods made every ADD O(pods)).

    Files are replaced atomically (write, then rename), never fsync'd: the state lives on
    tmpfs (/var/run) and only has to survive an agent restart, not a reboot, which takes
    every pod netns with it anyway.
    """

    def __init__(self, directory: Path) -> None:
        self.dir = directory
        self._lock = threading.Lock()
        self._pods: dict[str, PodRecord] = {}
        self.dir.mkdir(parents=True, exist_ok=True)
        for f in self.dir.glob("*.json"):
            try:
                rec = PodRecord.from_json(json.loads(f.read_text()))
            except (ValueError, TypeError, KeyError, OSError):
                continue  # a torn or foreign file: reconcile cannot trust it anyway
            self._pods[rec.container_id] = rec

    def _file(self, container_id: str) -> Path:
        # Container ids are [A-Za-z0-9_.-] (checked by the plugin); never trust a separator.
        return self.dir / (container_id.replace("/", "_") + ".json")

    def get(self, container_id: str) -> PodRecord | None:
        with self._lock:
            return self._pods.get(container_id)

    def all(self) -> list[PodRecord]:
        with self._lock:
            return list(self._pods.values())

    def count(self, state: PodState) -> int:
        with self._lock:
            return sum(p.state is state for p in self._pods.values())

    def put(self, rec: PodRecord) -> None:
        rec.last_change = time.time()
        data = json.dumps(rec.to_json())
        with self._lock:
            self._pods[rec.container_id] = rec
            fd, tmp = tempfile.mkstemp(dir=self.dir, prefix=".pod.", suffix=".tmp")
            with os.fdopen(fd, "w") as f:
                f.write(data)
            os.replace(tmp, self._file(rec.container_id))

    def drop(self, container_id: str) -> PodRecord | None:
        with self._lock:
            rec = self._pods.pop(container_id, None)
            if rec is not None:
                with contextlib.suppress(FileNotFoundError):
                    self._file(container_id).unlink()
            return rec
