from __future__ import annotations

import pytest

from agent.redirect import backend as engine
from agent.redirect.backend import RuleBackend

# Every real-kernel test runs once per backend.
BACKENDS = [("iptables", "nft"), ("iptables", "legacy"), ("nftables", "auto")]


@pytest.fixture(params=BACKENDS, ids=[f"{b}-{f}" if b == "iptables" else b for b, f in BACKENDS])
def impl(request: pytest.FixtureRequest) -> RuleBackend:
    b, f = request.param
    return engine.make_backend(b, f)

