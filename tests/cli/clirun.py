"""Run the real `meshnode` command (this checkout's) as a user would, optionally inside a
lab netns; every run is checked for a traceback, which must never reach a user."""

from __future__ import annotations

import json
import subprocess
import sys
from typing import Any

from core.netns import inside
from testing.agent_harness import REPO


def meshnode(*args: str, netns: str | None = None, timeout: float = 60,
             env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "cli.main", *args]

    def go() -> subprocess.CompletedProcess[str]:
        return subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, timeout=timeout,
                              env=env)

    if netns is None:
        r = go()
    else:
        with inside(netns):
            r = go()
    assert "Traceback" not in r.stderr + r.stdout, r.stderr
    return r


def meshnode_json(*args: str, netns: str | None = None, code: int = 0) -> Any:
    r = meshnode(*args, "-o", "json", netns=netns)
    assert r.returncode == code, (r.returncode, r.stdout, r.stderr)
    return json.loads(r.stdout)
