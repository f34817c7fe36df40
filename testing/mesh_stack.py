"""The processes of a test mesh, started in order and always stopped in reverse.

Every two-node suite needs the same steps: the control plane on manifests, one MeshNode per
node, pods enrolled by CNI ADD, app servers; and, whatever fails half-way, everything
already started stopped again (a process left behind holds the lab's netns and ports).
`MeshStack` is that list of things to stop, with the steps as methods:

    with Lab("xy") as lab, MeshStack(tmp) as s:
        t = build(lab)
        cp = s.control_plane(t.cp, *manifests)
        n1, n2 = s.node("node1", t.node1, cp), s.node("node2", t.node2, cp)
        s.enroll(n1, t.a, "sleep")
        s.keep(EchoServer(t.b, 8080))

Each thing is registered *before* it starts, so a start that fails half-way is stopped too.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import Any, Protocol, TypeVar

from testing.agent_harness import cni
from testing.lab import Node
from testing.mesh_procs import ControlPlaneProc, MeshNode


class _Closable(Protocol):
    def close(self) -> None: ...


class _Stoppable(Protocol):
    def stop(self) -> None: ...


T = TypeVar("T", bound=_Closable | _Stoppable)


class MeshStack:
    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self._stack = contextlib.ExitStack()

    def __enter__(self) -> MeshStack:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def close(self) -> None:
        self._stack.close()

    def keep(self, thing: T) -> T:
        """Stop (or close) `thing` when the stack closes; returns it."""
        stop = getattr(thing, "stop", None) or getattr(thing, "close")  # noqa: B009
        self._stack.callback(stop)
        return thing

    def control_plane(self, where: Node, *manifests: dict[str, Any] | str,
                      name: str = "mesh.yaml") -> ControlPlaneProc:
        """The control plane in `where`'s netns, reading `manifests` (one file, `name`)."""
        cp = ControlPlaneProc(self.workdir / "cp", where)
        if manifests:
            cp.write_manifests(name, *manifests)
        self.keep(cp).start()
        return cp

    def node(self, name: str, where: Node, cp: ControlPlaneProc,
             configure: Callable[[MeshNode], None] | None = None, **kw: Any) -> MeshNode:
        """One node's agent and proxy, started; `configure` edits their config files
        first (e.g. turn the DNS proxy on)."""
        n = MeshNode(name, self.workdir / name, cp, where, **kw)
        if configure is not None:
            configure(n)
        self.keep(n).start()
        return n

    def enroll(self, node: MeshNode, pod: Node, name: str, container_id: str = "",
               **kw: Any) -> None:
        """CNI ADD of `pod` through `node`'s agent; the test fails if it is refused."""
        r = cni("ADD", node.agent.socket, pod.path, container_id or f"c-{name}", [pod.ip4],
                name=name, **kw)
        assert r.code == 0, f"CNI ADD {name}: {r.stdout}"
