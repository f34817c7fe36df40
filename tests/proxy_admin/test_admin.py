"""The proxy's admin endpoints, served in-process (aiohttp test server, loopback only)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
from aiohttp.test_utils import TestClient, TestServer
from prometheus_client import REGISTRY, Counter

from proxy.admin import make_admin_app, start_admin

# Registered in the default registry, which /metrics must serve.
_PROBE = Counter("meshnode_test_admin_probe_total", "Proves /metrics reads the default registry")


class State:
    def __init__(self) -> None:
        self.is_ready = False
        self.dump: dict[str, Any] = {"pods": {"ns-a": {"dns": {"queries": 3}}}}

    def config_dump(self) -> dict[str, Any]:
        return self.dump

    def ready(self) -> bool:
        return self.is_ready


class StoppableState(State):
    def __init__(self) -> None:
        super().__init__()
        self.stopped = 0

    def shutdown(self) -> None:
        self.stopped += 1


class AsyncStoppableState(State):
    def __init__(self) -> None:
        super().__init__()
        self.stopped = asyncio.Event()

    async def shutdown(self) -> None:
        self.stopped.set()


def with_client(state: State, body: Callable[[TestClient[Any, Any]], Awaitable[None]]) -> None:
    async def main() -> None:
        async with TestClient(TestServer(make_admin_app(state), host="127.0.0.1")) as client:
            await body(client)

    asyncio.run(main())


def test_config_dump_is_the_states_json() -> None:
    state = State()

    async def body(client: TestClient[Any, Any]) -> None:
        resp = await client.get("/config_dump")
        assert resp.status == 200
        assert resp.content_type == "application/json"
        assert json.loads(await resp.text()) == state.dump
        state.dump = {"addr": ("198.18.0.1", 53)}  # not JSON-native: still answers
        resp = await client.get("/config_dump")
        assert json.loads(await resp.text()) == {"addr": ["198.18.0.1", 53]}

    with_client(state, body)


def test_ready_follows_the_state() -> None:
    state = State()

    async def body(client: TestClient[Any, Any]) -> None:
        resp = await client.get("/healthz/ready")
        assert resp.status == 503
        state.is_ready = True
        resp = await client.get("/healthz/ready")
        assert resp.status == 200
        assert (await resp.text()).strip() == "ready"

    with_client(state, body)


def test_metrics_serves_the_default_registry() -> None:
    _PROBE.inc()

    async def body(client: TestClient[Any, Any]) -> None:
        resp = await client.get("/metrics")
        assert resp.status == 200
        assert resp.headers["Content-Type"].startswith("text/plain; version=")
        text = await resp.text()
        assert "meshnode_test_admin_probe_total" in text
        value = REGISTRY.get_sample_value("meshnode_test_admin_probe_total")
        assert f"meshnode_test_admin_probe_total {value}" in text

    with_client(State(), body)


def test_quitquitquit_calls_shutdown_on_post_only() -> None:
    state = StoppableState()

    async def body(client: TestClient[Any, Any]) -> None:
        resp = await client.get("/quitquitquit")
        assert resp.status == 405
        assert state.stopped == 0
        resp = await client.post("/quitquitquit")
        assert resp.status == 200
        assert state.stopped == 1

    with_client(state, body)


def test_quitquitquit_runs_an_async_shutdown() -> None:
    state = AsyncStoppableState()

    async def body(client: TestClient[Any, Any]) -> None:
        resp = await client.post("/quitquitquit")
        assert resp.status == 200
        await asyncio.wait_for(state.stopped.wait(), 2)

    with_client(state, body)


def test_quitquitquit_without_shutdown_is_not_implemented() -> None:
    async def body(client: TestClient[Any, Any]) -> None:
        resp = await client.post("/quitquitquit")
        assert resp.status == 501

    with_client(State(), body)


def test_start_admin_serves_on_loopback() -> None:
    async def main() -> None:
        state = State()
        state.is_ready = True
        runner = await start_admin(state, port=0)  # port 0: any free port
        try:
            addrs = runner.addresses
            assert len(addrs) == 1 and addrs[0][0] == "127.0.0.1"
            port = addrs[0][1]
            async with aiohttp.ClientSession() as s, \
                    s.get(f"http://127.0.0.1:{port}/healthz/ready") as resp:
                assert resp.status == 200
        finally:
            await runner.cleanup()

    asyncio.run(main())
