"""Fixtures for the eBPF tests: one loader per module, on the session's private bpffs
(`bpffs` in tests/conftest.py)."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from agent.redirect.ebpf.loader import Loader


@pytest.fixture(scope="module")
def loader(bpffs: str) -> Iterator[Loader]:
    ld = Loader(pin_dir=os.path.join(bpffs, f"meshnode-test-{os.getpid()}"))
    try:
        ld.load()
        yield ld
    finally:
        ld.destroy()
