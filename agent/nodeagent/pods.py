"""Pod records and their persisted store.

State machine: pending → redirected → enrolled. `redirected` means the rules are in place;
`enrolled` adds the proxy's ack (the proxy issue). A pod is recorded as `pending` before any
rule is written, so an agent crash mid-enrollment is seen (and finished or undone) on restart.
"""

from __future__ import annotations

import enum
import json
import os
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field
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
        d = asdict(self)
        d["state"] = self.state.value
        return d

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> PodRecord:
        d = dict(d)
        d["state"] = PodState(d.get("state", "pending"))
        return cls(**d)


class PodStore:
    """Pods by container id, persisted atomically after every change (small: one per pod)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._pods: dict[str, PodRecord] = {}
        if path.exists():
            with open(path) as f:
                for d in json.load(f).get("pods", []):
                    rec = PodRecord.from_json(d)
                    self._pods[rec.container_id] = rec

    def get(self, container_id: str) -> PodRecord | None:
        with self._lock:
            return self._pods.get(container_id)

    def all(self) -> list[PodRecord]:
        with self._lock:
            return list(self._pods.values())

    def put(self, rec: PodRecord) -> None:
        rec.last_change = time.time()
        with self._lock:
            self._pods[rec.container_id] = rec
            self._save()

    def drop(self, container_id: str) -> PodRecord | None:
        with self._lock:
            rec = self._pods.pop(container_id, None)
            if rec is not None:
                self._save()
            return rec

    def _save(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        data = json.dumps({"version": 1, "pods": [p.to_json() for p in self._pods.values()]})
        fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=".pods.", suffix=".tmp")
        with os.fdopen(fd, "w") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.path)
