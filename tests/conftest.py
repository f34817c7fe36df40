"""Shared by every suite: the `kernel` marker by folder, and a pair of lab namespaces."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.lab import Lab, Node
from agent.redirect import backend as engine
from agent.redirect.backend import RuleBackend

# Suites that need root and a real kernel (namespaces, netfilter, containerd).
KERNEL_SUITES = ("kernel", "agent", "e2e", "proxy", "dns", "zds", "ebpf")


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


# Tests that take `impl` run once per redirection backend.
BACKENDS = [("iptables", "nft"), ("iptables", "legacy"), ("nftables", "auto")]


@pytest.fixture(params=BACKENDS, ids=[f"{b}-{f}" if b == "iptables" else b for b, f in BACKENDS])
def impl(request: pytest.FixtureRequest) -> RuleBackend:
    b, f = request.param
    return engine.make_backend(b, f)
