"""The demo's daemons: the control plane, and per node an agent and a proxy, each a
`meshnode` child process started inside its own netns and stopped by its own PID.

Every child gets a session of its own: a Ctrl-C in the terminal then reaches only the demo,
which tears down in order (pods are released while their agent and proxy still run) instead
of every process dying at once under it.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping
from pathlib import Path

from core.netns import inside

REPO = Path(__file__).resolve().parents[1]


def http_get(netns: str, url: str, timeout: float = 2) -> tuple[int, str]:
    """(status, body) of a GET made from inside `netns` (the daemons' ports are on their
    node's own loopback); (0, "") when nothing answers."""
    try:
        with inside(netns), urllib.request.urlopen(url, timeout=timeout) as r:
            return int(r.status), r.read().decode()
    except urllib.error.HTTPError as e:
        return int(e.code), e.read().decode()
    except OSError:
        return 0, ""


class Daemon:
    """One child process in `netns`, its stdout/stderr (structlog JSON) in `log`."""

    def __init__(self, name: str, argv: list[str], netns: str, log: Path,
                 env: Mapping[str, str] | None = None) -> None:
        self.name, self.argv, self.netns, self.log = name, argv, netns, log
        self.env = {**os.environ, **(env or {})}
        self.proc: subprocess.Popen[bytes] | None = None

    @classmethod
    def meshnode(cls, name: str, args: list[str], netns: str, log: Path,
                 env: Mapping[str, str] | None = None) -> Daemon:
        return cls(name, [sys.executable, "-m", "cli.main", *args], netns, log, env)

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    def start(self) -> Daemon:
        with open(self.log, "ab") as out, inside(self.netns):
            self.proc = subprocess.Popen(self.argv, stdin=subprocess.DEVNULL, stdout=out,
                                         stderr=out, cwd=REPO, env=self.env,
                                         start_new_session=True)
        return self

    def wait_until(self, ready: Callable[[], bool], timeout: float = 20) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc is None or self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited:\n{self.tail()}")
            if ready():
                return
            time.sleep(0.05)
        raise RuntimeError(f"{self.name} not ready after {timeout:.0f}s:\n{self.tail()}")

    def wait_http(self, url: str, timeout: float = 20) -> None:
        self.wait_until(lambda: http_get(self.netns, url, 1)[0] == 200, timeout)

    def get(self, url: str) -> tuple[int, str]:
        return http_get(self.netns, url)

    def tail(self, n: int = 1500) -> str:
        try:
            return self.log.read_text(errors="replace")[-n:]
        except OSError:
            return ""

    def stop(self, grace: float = 10) -> None:
        """SIGTERM by PID, then SIGKILL after `grace` s."""
        p, self.proc = self.proc, None
        if p is None or p.poll() is not None:
            return
        p.send_signal(signal.SIGTERM)
        try:
            p.wait(grace)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()
