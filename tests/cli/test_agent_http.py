"""The agent's debug endpoints the CLI reads (agent/nodeagent/http.py), in process."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from agent.nodeagent.http import make_app, spec_json
from agent.nodeagent.pods import PodRecord, PodState, PodStore
from agent.redirect.spec import RedirectSpec, with_overrides
from cli.redirect_cmd import _spec_from_json


def _get(app: Any, *paths: str) -> list[tuple[int, Any]]:
    from aiohttp.test_utils import TestClient, TestServer

    async def go() -> list[tuple[int, Any]]:
        async with TestClient(TestServer(app)) as client:
            out = []
            for p in paths:
                r = await client.get(p)
                out.append((r.status, await r.json()))
            return out

    return asyncio.run(go())


def test_one_pod_with_and_without_the_agent_spec(tmp_path: Path) -> None:
    store = PodStore(tmp_path / "pods")
    store.put(PodRecord("c1", "/var/run/netns/p1", 1, "eth0", ["198.18.0.1"], name="web",
                        namespace="shop", state=PodState.ENROLLED, backend="nftables",
                        capture={"dns_capture": False, "ipv6": False}))
    base = RedirectSpec(exclude_outbound_ports=(9999,))

    def spec_for(capture: Mapping[str, Any]) -> RedirectSpec:
        return with_overrides(base, capture)

    (s1, [rec]), (s2, missing), (s3, status), (s4, version) = _get(
        make_app(store, lambda: True, spec_for=spec_for),
        "/debug/pods/shop/web", "/debug/pods/shop/nope", "/debug/status", "/debug/version")
    assert s1 == 200 and rec["netns"] == "/var/run/netns/p1"
    assert _spec_from_json(rec["spec"]) == spec_for(rec["capture"])
    assert rec["spec"]["exclude_outbound_ports"] == [9999] and not rec["spec"]["dns_capture"]
    assert s2 == 404 and missing["known"] == ["shop/web"]
    assert s3 == 200 and status["pods"] == {"total": 1, "pending": 0, "redirected": 0,
                                            "enrolled": 1}
    assert status["ready"] is True and status["backends"] == ["nftables"]
    assert status["controlplane"] is None and status["component"] == "agent"
    assert s4 == 200 and version["version"] == status["version"]
    # Without the agent's spec (today's agent/server.py): the record only.
    [(_, [plain])] = _get(make_app(store, lambda: False), "/debug/pods/shop/web")
    assert "spec" not in plain and plain["capture"] == {"dns_capture": False, "ipv6": False}


def test_spec_json_round_trips() -> None:
    spec = RedirectSpec(ipv6=True, exclude_outbound_cidrs=("10.0.0.0/8",),
                        virtual_interfaces=("tun0",), kubelet_uid=7)
    assert _spec_from_json(spec_json(spec)) == spec
