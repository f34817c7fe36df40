"""The real control plane in a child process, driven over its stdin/stdout, for measuring it
from outside (bench/controlplane_scale.py): its own CPU time and RSS, a full GC on demand.

`python -m testing.controlplane_child KUBECONFIG STATE_DIR` serves the API server of
KUBECONFIG on 127.0.0.1 (any free port), logging at `info` (as `meshnode controlplane` does
by default) to stderr. It says, one JSON line each on stdout: its RSS before reading the
cluster; then, once serving, its port, RSS and (workloads, services, policies) counts. On
stdin: `gc` collects and says RSS, ADS sessions and counts; `round` starts the profiler if
MESHNODE_BENCH_CP_PROFILE=FILE is set (stopped by the next `gc`, written to FILE at the end);
`stop` (or end of input) stops it. With MESHNODE_BENCH_CP_HEAP=1 every RSS it says comes with
`heap`: where the memory is (`heap_breakdown`), which costs a walk of every object, so it is
for finding where memory goes, not for the figures.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import ctypes
import ctypes.util
import gc
import json
import os
import sys
import tempfile
import types
from collections.abc import Iterable
from pathlib import Path
from typing import Any
from xml.etree import ElementTree

from controlplane import nodeauth

ROOT = Path(__file__).resolve().parents[1]
PROFILE_ENV = "MESHNODE_BENCH_CP_PROFILE"
HEAP_ENV = "MESHNODE_BENCH_CP_HEAP"


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


# ---- where the memory is ----------------------------------------------------------------------

_LEAVES = (str, bytes, bytearray, int, float, complex, bool, type(None), memoryview)
_SKIPPED = (type, types.ModuleType, types.FunctionType, types.MethodType,
            types.BuiltinFunctionType)


def deep_size(roots: Iterable[Any], seen: set[int]) -> int:
    """Bytes of everything reachable from `roots` not in `seen` (ids; updated): containers,
    slotted and __dict__ objects; a protobuf message counts as its ByteSize (its C memory is
    not visible to sys.getsizeof). Classes, modules and functions count as nothing."""
    from google.protobuf.message import Message

    total = 0
    stack = list(roots)
    while stack:
        o = stack.pop()
        if id(o) in seen or isinstance(o, _SKIPPED):
            continue
        seen.add(id(o))
        total += sys.getsizeof(o)
        if isinstance(o, _LEAVES):
            continue
        if isinstance(o, Message):
            total += o.ByteSize()
        elif isinstance(o, dict):
            stack.extend(o.keys())
            stack.extend(o.values())
        elif isinstance(o, (list, tuple, set, frozenset, collections.deque)):
            stack.extend(o)
        else:
            for cls in type(o).__mro__:
                for slot in getattr(cls, "__slots__", ()):
                    if slot not in ("__dict__", "__weakref__") and hasattr(o, slot):
                        stack.append(getattr(o, slot))
            if hasattr(o, "__dict__"):
                stack.append(o.__dict__)
    return total


def _mallinfo() -> dict[str, int]:
    """glibc's heap: bytes in use by malloc, free but kept (not returned to the system), and
    mmapped (mallinfo2(3))."""
    class MallInfo2(ctypes.Structure):
        _fields_ = [(n, ctypes.c_size_t) for n in (
            "arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks",
            "fordblks", "keepcost")]

    libc = ctypes.CDLL(ctypes.util.find_library("c"))
    if not hasattr(libc, "mallinfo2"):
        return {}
    libc.mallinfo2.restype = MallInfo2
    m = libc.mallinfo2()
    return {"heap": m.arena, "in_use": m.uordblks, "free": m.fordblks, "mmapped": m.hblkhd}


def _pymalloc() -> dict[str, int]:
    """Python's small-object allocator: its arenas (mmapped, 1 MiB each, returned only when
    empty), the bytes in use in them and the bytes free in them (sys._debugmallocstats)."""
    with tempfile.TemporaryFile() as f:
        saved = os.dup(2)
        os.dup2(f.fileno(), 2)
        try:
            sys._debugmallocstats()
        finally:
            os.dup2(saved, 2)
            os.close(saved)
        f.seek(0)
        text = f.read().decode()
    wanted = {"arenas allocated current": "arenas", "bytes in allocated blocks": "in_use",
              "bytes in available blocks": "free_blocks"}
    out = {}
    for line in text.splitlines():
        name, _, value = line.lstrip("# ").partition("=")
        if name.strip() in wanted:
            out[wanted[name.strip()]] = int(value.strip().replace(",", ""))
    out["arenas"] *= 1 << 20
    return out


def _arenas() -> dict[str, int]:
    """glibc's heaps split by owner: the main heap (the event loop's thread: Python, protobuf)
    and the others (gRPC's threads: transports, TLS), each as bytes in use (malloc_info(3))."""
    libc = ctypes.CDLL(ctypes.util.find_library("c"))
    libc.fopen.restype = ctypes.c_void_p
    with tempfile.NamedTemporaryFile() as f:
        fp = libc.fopen(f.name.encode(), b"w")
        libc.malloc_info(0, ctypes.c_void_p(fp))
        libc.fclose(ctypes.c_void_p(fp))
        root = ElementTree.parse(f.name).getroot()
    out = {"main_in_use": 0, "threads_in_use": 0}
    for heap in root.findall("heap"):
        size = int(next(s for s in heap.findall("system") if s.get("type") == "current")
                   .get("size", 0))
        free = sum(int(t.get("size", 0)) for t in heap.findall("total"))
        out["main_in_use" if heap.get("nr") == "0" else "threads_in_use"] += size - free
    return out


def heap_breakdown(cp: Any) -> dict[str, Any]:
    """Bytes per part of the control plane's state (each object counted once, in the first
    part that reaches it, in this order), and glibc's heap."""
    from controlplane import session

    index, store = cp.store.index, cp.store
    parts: dict[str, list[Any]] = {
        "objects": [cp.objects._objs],
        "reflector_caches": [r.cache for r in cp.informers.reflectors.values()]
        if cp.informers is not None else [],
        "index_model": [index.workloads, index.services, index.policies],
        "index_tables": [v for k, v in vars(index).items()
                         if k not in ("store", "opts", "workloads", "services", "policies",
                                      "_listeners")],
        "ambientstore": [v for k, v in vars(store).items()
                         if k not in ("index", "snapshot", "_log", "_shared", "_feeds")],
        "snapshot": [store.snapshot],
        "store_log": [store._log, store._shared],
        "sessions": list(cp.ads.sessions),
        "session_caches": [v for k, v in vars(session).items()
                           if k.startswith("_") and isinstance(v, dict) and not
                           k.startswith("__")],
    }
    seen: set[int] = set()
    out: dict[str, Any] = {k: deep_size(v, seen) for k, v in parts.items()}
    out["malloc"] = {**_mallinfo(), **_arenas()}
    out["pymalloc"] = _pymalloc()
    return out


def malloc_trim() -> None:
    ctypes.CDLL(ctypes.util.find_library("c")).malloc_trim(0)


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
        _say({"rss": rss(), **heap(cp)})
        await cp.start()
        gc.collect()
        _say({"port": cp.port, "rss": rss(), "counts": list(cp.store.counts), **heap(cp)})
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
                      "counts": list(cp.store.counts), **heap(cp)})
        await cp.stop(0)

    def heap(cp: Any) -> dict[str, Any]:
        if not os.environ.get(HEAP_ENV):
            return {}
        out = heap_breakdown(cp)
        malloc_trim()
        out["rss_after_trim"] = rss()  # what free heap the process was holding
        return {"heap": out}

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
