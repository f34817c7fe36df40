"""Fixtures for the containerd end-to-end harness (tests/e2e/runtime.py)."""

from __future__ import annotations

import difflib
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.runtime import PREFIX, Runtime, build_rootfs, host_snapshot, processes_of

TOOLS = ("containerd", "ctr", "runc", "containerd-shim-runc-v2", "busybox", "nsenter",
         "unshare", "ip")


@pytest.fixture(autouse=True)
def _e2e_prereqs() -> None:
    if os.geteuid() != 0:
        pytest.fail("e2e tests need root (containerd, network and mount namespaces)")
    missing = [t for t in TOOLS if not shutil.which(t)]
    if missing:
        # make setup installs them all: a missing one is a broken setup, not a skip.
        pytest.fail(f"missing tools (run make setup): {', '.join(missing)}")


@pytest.fixture(scope="session", autouse=True)
def host_unchanged() -> Iterator[dict[str, str]]:
    """Snapshot the host's network and firewall before the e2e tests and compare after:
    the harness must leave no trace (links, addresses, routes, rules, netns, processes)."""
    if os.geteuid() != 0:
        yield {}
        return
    before = host_snapshot()
    yield before
    after = host_snapshot()
    diffs = []
    for key in before:
        if before[key] != after[key]:
            diffs.append("\n".join(difflib.unified_diff(
                before[key].splitlines(), after[key].splitlines(), f"{key} before",
                f"{key} after", lineterm="")))
    leftovers = processes_of(f"/{PREFIX}-{os.getpid()}-")
    assert not diffs, "host changed by the e2e tests:\n" + "\n".join(diffs)
    assert not leftovers, f"processes of ours left running: {leftovers}"


@pytest.fixture(scope="session")
def e2e_rootfs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A busybox rootfs shared (read-only) by every container of the session."""
    return build_rootfs(tmp_path_factory.mktemp("mne2e-rootfs"))


@pytest.fixture
def runtime(e2e_rootfs: Path) -> Iterator[Runtime]:
    """A fresh private containerd in its own node netns, torn down even if the test fails."""
    with Runtime(e2e_rootfs) as rt:
        yield rt
