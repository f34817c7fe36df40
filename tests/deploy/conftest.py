"""Shared by the offline deploy checks."""

from __future__ import annotations

import pytest


@pytest.fixture(autouse=True)
def _node_name(monkeypatch: pytest.MonkeyPatch) -> None:
    """In the DaemonSet the downward API sets NODE_NAME; the agent's config needs it once
    the Kubernetes pod source is enabled."""
    monkeypatch.setenv("NODE_NAME", "node-a")
