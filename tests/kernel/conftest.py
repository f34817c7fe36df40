from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from agent.lab import Lab, Node
from agent.redirect import backend as engine
from agent.redirect.backend import RuleBackend

# Every real-kernel test runs once per backend.
BACKENDS = [("iptables", "nft"), ("iptables", "legacy"), ("nftables", "auto")]


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "tests/kernel" in str(item.fspath):
            item.add_marker(pytest.mark.kernel)


@pytest.fixture(autouse=True)
def _needs_root() -> None:
    if os.geteuid() != 0:
        pytest.fail("kernel tests need root (network namespaces, netfilter)")


@pytest.fixture(params=BACKENDS, ids=[f"{b}-{f}" if b == "iptables" else b for b, f in BACKENDS])
def impl(request: pytest.FixtureRequest) -> RuleBackend:
    b, f = request.param
    return engine.make_backend(b, f)


@pytest.fixture
def pods() -> Iterator[tuple[Node, Node]]:
    """A client and a server netns joined by a veth pair; deleted even if the test fails."""
    with Lab("t") as lab:
        client, server = lab.node("client"), lab.node("server")
        lab.link(client, server)
        yield client, server
