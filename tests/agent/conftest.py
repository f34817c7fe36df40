from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.lab import Lab, Node
from tests.agent.harness import AgentProc


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "tests/agent" in str(item.fspath):
            item.add_marker(pytest.mark.kernel)


@pytest.fixture
def agent(tmp_path: Path) -> Iterator[AgentProc]:
    a = AgentProc(tmp_path).start()
    try:
        yield a
    finally:
        a.stop()


@pytest.fixture
def pods() -> Iterator[tuple[Node, Node]]:
    with Lab("ag") as lab:
        a, b = lab.node("pod"), lab.node("peer")
        lab.link(a, b)
        yield a, b
