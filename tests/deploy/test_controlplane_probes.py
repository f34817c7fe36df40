"""The control plane Deployment's probes dial the monitoring address its own arguments set,
on paths the control plane's monitoring app really serves (plain manifests and the chart)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer

from cli.main import build_parser
from controlplane import http
from tests.deploy.manifests import container, find, plain, render

Obj = dict[str, Any]


@pytest.fixture(params=["plain", "helm"])
def deployment(request: pytest.FixtureRequest) -> Obj:
    objs = [o for _f, o in plain()] if request.param == "plain" else render()
    return find(objs, "Deployment", "meshnode-controlplane")


def _statuses(ready: bool, paths: list[str]) -> list[int]:
    async def main() -> list[int]:
        async with TestClient(TestServer(http.make_app(lambda: ready))) as client:
            return [(await client.get(p)).status for p in paths]
    return asyncio.run(main())


def test_probes_hit_what_the_control_plane_serves(deployment: Obj) -> None:
    c = container(deployment["spec"]["template"]["spec"], "controlplane")
    args = build_parser().parse_args(c["args"])
    host, port = http.split_address(args.metrics_address)
    # A wildcard bind (for Prometheus) is reached on the loopback too, where the kubelet
    # dials it (hostNetwork).
    reach = {"0.0.0.0": "127.0.0.1", "::": "::1"}.get(host, host)
    probes = {k: c[k]["httpGet"] for k in ("readinessProbe", "livenessProbe")}
    for probe in probes.values():
        assert (probe["host"], probe["port"]) == (reach, port), probe
    assert probes["readinessProbe"]["path"] == "/readyz"
    assert {"name": "http-monitoring", "containerPort": port, "protocol": "TCP"} in c["ports"]
    paths = [p["path"] for p in probes.values()]
    assert _statuses(True, paths) == [200, 200]
    # Readiness follows the server; liveness does not; an unknown path is not 200.
    assert _statuses(False, [*paths, "/nope"]) == [503, 200, 404]
