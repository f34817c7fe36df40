"""A real control plane on 127.0.0.1 (TLS, ephemeral port) and real gRPC clients for it."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, TypeVar

import aiohttp
import grpc
from envoy.service.discovery.v3 import ads_pb2_grpc, discovery_pb2
from google.protobuf import any_pb2
from prometheus_client.parser import text_string_to_metric_families

from controlplane.resources import ADDRESS_TYPE, AUTHORIZATION_TYPE
from controlplane.server import ControlPlane, ControlPlaneConfig
from meshpb.istio import authorization_pb2, workload_pb2

T = TypeVar("T")
EXAMPLE = Path(__file__).parents[2] / "controlplane" / "examples" / "mesh.yaml"


def run(coro: Coroutine[Any, Any, T], timeout: float = 20) -> T:
    """asyncio.run with a hard cap, so a protocol bug fails the test instead of hanging."""
    async def capped() -> T:
        return await asyncio.wait_for(coro, timeout)
    return asyncio.run(capped())


@asynccontextmanager
async def control_plane(tmp_path: Path, mesh_text: str | None = None,
                        **overrides: Any) -> AsyncIterator[ControlPlane]:
    mesh = tmp_path / "mesh.yaml"
    mesh.write_text(mesh_text if mesh_text is not None else EXAMPLE.read_text())
    cfg = ControlPlaneConfig(mesh=mesh, address="127.0.0.1:0", state_dir=tmp_path / "state",
                             **overrides)
    cp = ControlPlane(cfg)
    await cp.start()
    try:
        yield cp
    finally:
        await cp.stop(0)


def channel(cp: ControlPlane, root_pem: bytes | None = None) -> grpc.aio.Channel:
    creds = grpc.ssl_channel_credentials(root_certificates=root_pem or cp.root.cert_pem.encode())
    # The server cert names localhost and 127.0.0.1, and the client checks it.
    return grpc.aio.secure_channel(f"localhost:{cp.port}", creds)


def auth(token: str) -> list[tuple[str, str]]:
    return [("authorization", f"Bearer {token}")]


class AdsClient:
    """One DeltaAggregatedResources stream, driven by hand so each protocol step is visible."""

    def __init__(self, ch: grpc.aio.Channel, token: str) -> None:
        stub = ads_pb2_grpc.AggregatedDiscoveryServiceStub(ch)
        self.call = stub.DeltaAggregatedResources(metadata=auth(token))
        # One reader task: cancelling a pending grpc.aio read would cancel the whole RPC.
        self.inbox: asyncio.Queue[Any] = asyncio.Queue()
        self._reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        try:
            while (resp := await self.call.read()) is not grpc.aio.EOF:
                await self.inbox.put(resp)
            await self.inbox.put(EOFError("stream ended"))
        except grpc.aio.AioRpcError as exc:
            await self.inbox.put(exc)

    async def send(self, **fields: Any) -> None:
        await self.call.write(discovery_pb2.DeltaDiscoveryRequest(**fields))

    async def recv(self, timeout: float = 3) -> Any:
        item = await asyncio.wait_for(self.inbox.get(), timeout)
        if isinstance(item, BaseException):
            raise item
        return item

    async def expect_silence(self, seconds: float = 0.3) -> None:
        try:
            item = await asyncio.wait_for(self.inbox.get(), seconds)
        except TimeoutError:
            return
        raise AssertionError(f"unexpected response: {item}")

    async def ack(self, resp: Any) -> None:
        await self.send(type_url=resp.type_url, response_nonce=resp.nonce)

    async def subscribe(self, type_url: str, **fields: Any) -> Any:
        await self.send(type_url=type_url, **fields)
        return await self.recv()

    def close(self) -> None:
        self.call.cancel()
        self._reader.cancel()


def names(resp: Any) -> list[str]:
    return sorted(r.name for r in resp.resources)


def decode(resource: Any) -> Any:
    body: any_pb2.Any = resource.resource
    msg: Any = (workload_pb2.Address() if body.type_url == ADDRESS_TYPE
                else authorization_pb2.Authorization())
    if not body.Unpack(msg):
        raise ValueError(f"{resource.name}: type {body.type_url}")
    return msg


Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


async def http_get(cp: ControlPlane, path: str) -> tuple[int, str, str]:
    """GET on the monitoring port (start with metrics_address=...): status, type, body."""
    async with aiohttp.ClientSession() as s, \
            s.get(f"http://127.0.0.1:{cp.metrics_port}{path}") as r:
        return r.status, r.headers.get("Content-Type", ""), await r.text()


async def scrape(cp: ControlPlane) -> Samples:
    """/metrics over real HTTP, parsed: (sample name, labels) -> value."""
    status, _, text = await http_get(cp, "/metrics")
    assert status == 200
    return {(s.name, frozenset(s.labels.items())): s.value
            for fam in text_string_to_metric_families(text) for s in fam.samples}


def sample(samples: Samples, name: str, **labels: str) -> float:
    """One sample's value; 0 when the series is not exposed (yet)."""
    return samples.get((name, frozenset(labels.items())), 0.0)


async def eventually(check: Callable[[], bool] | Callable[[], Awaitable[bool]],
                     timeout: float = 3) -> None:
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout
    while True:
        result = check()
        if not isinstance(result, bool):
            result = await result
        if result:
            return
        if loop.time() > end:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.02)


__all__ = ["ADDRESS_TYPE", "AUTHORIZATION_TYPE", "AdsClient", "Samples", "auth", "channel",
           "control_plane", "decode", "eventually", "http_get", "names", "run", "sample",
           "scrape"]
