"""The import rules of docs/architecture.md ("Packages and import rules"), checked on the
source with `ast`, so the layering cannot rot silently:

- `core` imports none of the product packages (only the standard library, third-party
  libraries and `meshpb`);
- `agent`, `proxy` and `controlplane` import neither each other nor `cli`, `demo`, `testing`;
- no package but `cli` imports all three of them;
- nothing under `bench`, `demo` or `testing` imports `tests`;
- no import cycle between sub-packages (`agent.redirect`, `proxy.inpod`, a top-level module
  such as `agent.config` counts as one), nor between modules (files).

Every import counts: module level, inside functions, under `if TYPE_CHECKING:`.
"""

from __future__ import annotations

import ast
from collections.abc import Iterable, Mapping
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("core", "agent", "proxy", "controlplane", "cli", "demo", "testing", "bench")
PRODUCTS = ("agent", "proxy", "controlplane")
OURS = {*PACKAGES, "meshpb", "tests"}

# package -> top-level packages it must not import
FORBIDDEN: dict[str, set[str]] = {
    "core": {"agent", "proxy", "controlplane", "cli", "demo", "testing", "bench", "tests"},
    "agent": {"proxy", "controlplane", "cli", "demo", "testing", "bench", "tests"},
    "proxy": {"agent", "controlplane", "cli", "demo", "testing", "bench", "tests"},
    "controlplane": {"agent", "proxy", "cli", "demo", "testing", "bench", "tests"},
    "demo": {"tests", "bench", "cli"},
    "testing": {"tests", "bench", "cli", "demo"},
    "bench": {"tests", "cli", "demo"},
    "cli": {"tests", "bench", "testing"},
}


def sources(root: Path = ROOT) -> dict[str, str]:
    """module name -> source, for every .py file of the packages checked here."""
    out = {}
    for pkg in PACKAGES:
        for path in sorted((root / pkg).rglob("*.py")):
            parts = list(path.relative_to(root).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            out[".".join(parts)] = path.read_text()
    return out


def imports(mods: Mapping[str, str]) -> dict[str, set[str]]:
    """module -> the modules of ours it imports (a `from p import x` names module p.x when
    there is one, else p)."""
    packages = {m for m, src in mods.items() if _is_package(m, mods)}
    out: dict[str, set[str]] = {}
    for mod, src in mods.items():
        deps: set[str] = set()
        for node in ast.walk(ast.parse(src)):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    here = mod.split(".") if mod in packages else mod.split(".")[:-1]
                    up = here[:len(here) - node.level + 1]
                    base = ".".join(up + ([base] if base else []))
                names = [f"{base}.{a.name}" if f"{base}.{a.name}" in mods else base
                         for a in node.names]
            else:
                continue
            deps.update(n for n in names if n.split(".")[0] in OURS)
        deps.discard(mod)
        out[mod] = deps
    return out


def _is_package(mod: str, mods: Mapping[str, str]) -> bool:
    return any(m.startswith(mod + ".") for m in mods)


def unit(mod: str) -> str:
    """The sub-package a module belongs to: `agent.redirect.ebpf.loader` -> `agent.redirect`,
    `agent.config` -> `agent.config`, `core` -> `core`."""
    return ".".join(mod.split(".")[:2])


def layer_violations(graph: Mapping[str, Iterable[str]]) -> list[str]:
    bad = []
    for mod, deps in sorted(graph.items()):
        top = mod.split(".")[0]
        for dep in sorted(deps):
            if dep.split(".")[0] in FORBIDDEN.get(top, set()):
                bad.append(f"{mod} imports {dep}")
    for top in {m.split(".")[0] for m in graph} - {"cli"}:
        reached = {d.split(".")[0] for m, deps in graph.items() if m.split(".")[0] == top
                   for d in deps}
        if set(PRODUCTS) <= reached:
            bad.append(f"{top} imports all of {', '.join(PRODUCTS)} (only cli may)")
    return bad


def cycles(graph: Mapping[str, Iterable[str]]) -> list[list[str]]:
    """The strongly connected components with more than one node (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            scc = []
            while True:
                w = stack.pop()
                on.discard(w)
                scc.append(w)
                if w == v:
                    break
            if len(scc) > 1:
                out.append(sorted(scc))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def unit_graph(graph: Mapping[str, Iterable[str]]) -> dict[str, set[str]]:
    out: dict[str, set[str]] = {}
    for mod, deps in graph.items():
        out.setdefault(unit(mod), set()).update(unit(d) for d in deps if unit(d) != unit(mod))
    return out


# ---- the rules, on the real tree -----------------------------------------------------------

GRAPH = imports(sources())


def test_every_package_is_checked() -> None:
    for pkg in PACKAGES:
        assert pkg in GRAPH or any(m.startswith(pkg + ".") for m in GRAPH), pkg
    assert len(GRAPH) > 150


def test_layers() -> None:
    assert layer_violations(GRAPH) == []


def test_no_cycle_between_sub_packages() -> None:
    assert cycles(unit_graph(GRAPH)) == []


def test_no_cycle_between_modules() -> None:
    assert cycles(GRAPH) == []


# ---- the checker itself, on planted violations ---------------------------------------------

PLANTED = {
    "core": "",
    "core.netns": "import os\n",
    "agent": "",
    "agent.a": "from core import netns\n",
    "proxy": "",
    "proxy.p": "from core.netns import entered\n",
    "controlplane": "",
    "controlplane.c": "from core import netns\n",
    "cli": "",
    "cli.main": "import agent.a\nimport proxy.p\nimport controlplane.c\n",
}


def test_checker_accepts_a_clean_tree() -> None:
    g = imports(PLANTED)
    assert layer_violations(g) == []
    assert cycles(g) == [] and cycles(unit_graph(g)) == []


@pytest.mark.parametrize(("module", "source", "expected"), [
    ("core.bad", "from agent import a\n", "core.bad imports agent.a"),
    ("core.bad", "def f():\n    import proxy.p\n", "core.bad imports proxy.p"),
    ("proxy.bad", "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n"
                  "    from agent.a import X\n", "proxy.bad imports agent.a"),
    ("agent.bad", "from controlplane.c import Y\n", "agent.bad imports controlplane.c"),
    ("agent.bad", "import cli.main\n", "agent.bad imports cli.main"),
    ("demo.bad", "from tests.x import y\n", "demo.bad imports tests.x"),
    ("bench.bad", "from tests.agent import harness\n", "bench.bad imports tests.agent"),
    ("testing.bad", "import agent.a, proxy.p, controlplane.c\n",
     "testing imports all of agent, proxy, controlplane (only cli may)"),
])
def test_checker_finds_a_planted_violation(module: str, source: str, expected: str) -> None:
    assert expected in layer_violations(imports({**PLANTED, module: source}))


def test_checker_finds_planted_cycles() -> None:
    mods = {**PLANTED, "agent.x": "", "agent.x.one": "from agent.y import two\n",
            "agent.y": "", "agent.y.two": "def f():\n    from agent.x import one\n"}
    g = imports(mods)
    assert cycles(unit_graph(g)) == [["agent.x", "agent.y"]]
    assert cycles(g) == [["agent.x.one", "agent.y.two"]]
    rel = {**PLANTED, "agent.x": "", "agent.x.one": "from . import two\n",
           "agent.x.two": "from .one import f\n"}
    assert cycles(imports(rel)) == [["agent.x.one", "agent.x.two"]]
