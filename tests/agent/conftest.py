from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from testing.agent_harness import AgentProc


@pytest.fixture
def agent(tmp_path: Path) -> Iterator[AgentProc]:
    a = AgentProc(tmp_path).start()
    try:
        yield a
    finally:
        a.stop()

