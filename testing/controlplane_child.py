"""The real control plane in a child process, driven over its stdin/stdout, for measuring it
from outside (bench/controlplane_scale.py): its own CPU time and RSS, a full GC on demand.

`python -m testing.controlplane_child KUBECONFIG STATE_DIR` serves the API server of
KUBECONFIG on 127.0.0.1 (any free port), logging at `info` (as `meshnode controlplane` does
by default) to stderr. It says, one JSON line each on stdout: its RSS before reading the
cluster; then, once serving, its port, RSS and (workloads, services, policies) counts. On
stdin: `gc` collects and says RSS, ADS sessions and counts; `round` starts the profiler if
MESHNODE_BENCH_CP_PROFILE=FILE is set (stopped by the next `gc`, written to FILE at the end);
`stop` (or end of input) stops it.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import json
import os
import sys
from pathlib import Path
from typing import Any

from controlplane import nodeauth

ROOT = Path(__file__).resolve().parents[1]
PROFILE_ENV = "MESHNODE_BENCH_CP_PROFILE"


def rss(pid: int | str = "self") -> int:
    """Resident set size in bytes (proc(5) VmRSS)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def cpu(pid: int | str = "self") -> float:
    """User + system CPU seconds of a process, all threads (proc(5) stat fields 14, 15)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def node_tokens(state_dir: Path, nodes: list[str]) -> list[str]:
    """The nodes' tokens under the token key the child will use (created here if absent)."""
    key = nodeauth.load_or_create_key(state_dir / "node-token.key")
    return [nodeauth.mint(key, n) for n in nodes]


def _say(msg: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(msg) + "\n")
    sys.stdout.flush()


def main(kubeconfig: str, state_dir: str) -> None:
    from controlplane.server import ControlPlane, ControlPlaneConfig
    from core import logs

    logs.configure("info")
    profile = None
    if os.environ.get(PROFILE_ENV):
        import cProfile
        profile = cProfile.Profile()

    async def serve() -> None:
        cp = ControlPlane(ControlPlaneConfig(kubeconfig=kubeconfig, address="127.0.0.1:0",
                                             state_dir=Path(state_dir)))
        gc.collect()
        _say({"rss": rss()})
        await cp.start()
        gc.collect()
        _say({"port": cp.port, "rss": rss(), "counts": list(cp._counts())})
        loop = asyncio.get_running_loop()
        reader = asyncio.StreamReader()
        await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
        while (line := (await reader.readline()).decode().strip()) not in ("stop", ""):
            if line == "round" and profile is not None:
                profile.enable()
            if line == "gc":
                if profile is not None:
                    profile.disable()
                gc.collect()
                _say({"rss": rss(), "streams": len(cp.ads.sessions),
                      "counts": list(cp._counts())})
        await cp.stop(0)

    asyncio.run(serve())
    if profile is not None:
        profile.dump_stats(os.environ[PROFILE_ENV])


class ControlPlaneChild:
    """The parent's handle: `await start(...)`, `said()` for the next line, `gc()`, `cpu()`,
    `stop()`."""

    def __init__(self, proc: asyncio.subprocess.Process, log: Path) -> None:
        self.proc, self.log = proc, log

    @classmethod
    async def start(cls, kubeconfig: str, state: Path, log: Path) -> ControlPlaneChild:
        with log.open("wb") as err:
            proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "testing.controlplane_child", kubeconfig, str(state),
                cwd=ROOT, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
                stderr=err, limit=1 << 20)
        return cls(proc, log)

    async def said(self, timeout: float) -> dict[str, Any]:
        assert self.proc.stdout is not None
        line = await asyncio.wait_for(self.proc.stdout.readline(), timeout)
        if not line:
            tail = self.log.read_text(errors="replace").splitlines()[-20:]
            raise RuntimeError("the control plane exited:\n" + "\n".join(tail))
        out: dict[str, Any] = json.loads(line)
        return out

    def send(self, command: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(command.encode() + b"\n")

    async def gc(self) -> dict[str, Any]:
        self.send("gc")
        return await self.said(60)

    def cpu(self) -> float:
        return cpu(self.proc.pid)

    async def stop(self) -> None:
        if self.proc.returncode is None:
            assert self.proc.stdin is not None
            with contextlib.suppress(ConnectionError):
                self.proc.stdin.write(b"stop\n")
                self.proc.stdin.close()
            try:
                await asyncio.wait_for(self.proc.wait(), 30)
            except TimeoutError:
                self.proc.kill()
                await self.proc.wait()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
