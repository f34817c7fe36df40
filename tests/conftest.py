"""Shared by every suite: the `kernel` marker by folder, and a pair of lab namespaces."""

from __future__ import annotations

import contextlib
import os
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.redirect import backend as engine
from agent.redirect.backend import RuleBackend
from testing.lab import Lab, Node

# Suites that need root and a real kernel (namespaces, netfilter, containerd).
KERNEL_SUITES = ("kernel", "agent", "e2e", "proxy", "dns", "zds", "ebpf", "mesh", "demo",
                 "proxy_admin")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    root = Path(__file__).parent
    for item in items:
        suite = Path(str(item.fspath)).relative_to(root).parts[0]
        if suite in KERNEL_SUITES:
            item.add_marker(pytest.mark.kernel)


@pytest.fixture(autouse=True)
def _kernel_tests_need_root(request: pytest.FixtureRequest) -> None:
    if request.node.get_closest_marker("kernel") and os.geteuid() != 0:
        pytest.fail("kernel tests need root (network namespaces, netfilter, containerd)")


@pytest.fixture
def pods() -> Iterator[tuple[Node, Node]]:
    """A client and a server netns joined by a veth pair; deleted even if the test fails."""
    with Lab("t") as lab:
        client, server = lab.node("client"), lab.node("server")
        lab.link(client, server)
        yield client, server


BPFFS_PREFIX = "meshnode-test-bpffs-"


def _sweep_stale_bpffs() -> None:
    """A run that was SIGKILLed leaves its bpffs mounted with links pinned (so still
    attached): detach and unmount those of dead test processes."""
    from agent.redirect.ebpf.loader import Loader

    tmp = tempfile.gettempdir()
    for name in os.listdir(tmp):
        if not name.startswith(BPFFS_PREFIX):
            continue
        pid = int(name[len(BPFFS_PREFIX):].split("-", 1)[0] or 0)
        if pid and os.path.exists(f"/proc/{pid}"):
            continue
        mnt = os.path.join(tmp, name)
        if os.path.ismount(mnt):
            for sub in os.listdir(mnt):
                with contextlib.suppress(OSError):
                    Loader(pin_dir=os.path.join(mnt, sub)).destroy()
            subprocess.run(["umount", "-l", mnt], check=False)
        with contextlib.suppress(OSError):
            os.rmdir(mnt)


@pytest.fixture(scope="session")
def bpffs() -> Iterator[str]:
    """A private bpffs mount, so nothing is pinned in the host's /sys/fs/bpf."""
    _sweep_stale_bpffs()
    mnt = tempfile.mkdtemp(prefix=f"{BPFFS_PREFIX}{os.getpid()}-")
    subprocess.run(["mount", "-t", "bpf", "bpf", mnt], check=True)
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", mnt], check=False)
        with contextlib.suppress(OSError):
            os.rmdir(mnt)


@pytest.fixture(scope="module")
def ebpf_pin_dir(bpffs: str) -> Iterator[str]:
    """The eBPF backend's pin dir for one test module; everything in it is detached and
    removed at the end of the module."""
    from agent.redirect.ebpf.loader import Loader

    path = os.path.join(bpffs, f"impl-{os.getpid()}")
    try:
        yield path
    finally:
        Loader(pin_dir=path).destroy()


@pytest.fixture(scope="module")
def ebpf_impl(ebpf_pin_dir: str) -> Iterator[RuleBackend]:
    """The eBPF backend on this module's pins, one per module: each backend owns its loader,
    and loading compiles (~1 s) and holds a few dozen descriptors until closed."""
    impl = engine.make_backend("ebpf", bpf_pin_dir=ebpf_pin_dir)
    try:
        yield impl
    finally:
        impl.close()


# Tests that take `impl` run once per redirection backend.
BACKENDS = [("iptables", "nft"), ("iptables", "legacy"), ("nftables", "auto"), ("ebpf", "")]


@pytest.fixture(params=BACKENDS, ids=[f"{b}-{f}" if b == "iptables" else b for b, f in BACKENDS])
def impl(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> RuleBackend:
    b, f = request.param
    if b == "ebpf":
        # Everything that looks for the pins (the backend, a proxy in this process or a
        # child, the CLI) finds this module's private ones.
        monkeypatch.setenv("MESHNODE_BPF_PIN_DIR", request.getfixturevalue("ebpf_pin_dir"))
        ebpf: RuleBackend = request.getfixturevalue("ebpf_impl")
        return ebpf
    return engine.make_backend(b, f)


NETFILTER_BACKENDS = [b for b in BACKENDS if b[0] != "ebpf"]


@pytest.fixture(params=NETFILTER_BACKENDS,
                ids=[f"{b}-{f}" if b == "iptables" else b for b, f in NETFILTER_BACKENDS])
def netfilter_impl(request: pytest.FixtureRequest) -> RuleBackend:
    """The backends that keep rules in chains (eBPF keeps map entries: tests/ebpf)."""
    b, f = request.param
    return engine.make_backend(b, f)
