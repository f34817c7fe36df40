"""A real control plane on 127.0.0.1 (TLS, ephemeral port) serving a manifests directory
(`config=`), and real gRPC clients for it."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Sequence
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
from testing import mesh_manifests as mm

T = TypeVar("T")
EXAMPLE_FILE = "example.yaml"   # the example's file in the manifests directory
ECHO = {"app": "echo"}
SLEEP_PRINCIPAL = "cluster.local/ns/default/sa/sleep"


def example(*, sleep_node: str = "node1", echo_2: bool = True) -> list[mm.Obj]:
    """The example mesh (it mirrors the project's former example mesh file): in the ambient
    namespace `default`, on nodes node1 and node2, a client `sleep` (sa sleep, 10.1.1.2,
    node1) and two servers echo-1 (sa echo, 10.1.2.2, node2) and echo-2 (sa echo, 10.1.1.3,
    node1) behind the Service `echo` (10.96.0.10, port 80 -> 8080); one L4 policy: only
    `sleep` may reach the echo servers, and only on 8080. `sleep_node`: where sleep runs;
    without `echo_2`, echo-2 is gone."""
    return [
        *mm.two_nodes(),
        mm.service("echo", "10.96.0.10", [(80, 8080)], selector=ECHO),
        mm.pod("sleep", "10.1.1.2", sleep_node, service_account="sleep",
               labels={"app": "sleep"}),
        mm.pod("echo-1", "10.1.2.2", "node2", service_account="echo", labels=ECHO),
        *([mm.pod("echo-2", "10.1.1.3", "node1", service_account="echo", labels=ECHO)]
          if echo_2 else []),
        mm.authorization_policy("echo-from-sleep", "ALLOW", [
            {"from": [{"source": {"principals": [SLEEP_PRINCIPAL]}}],
             "to": [{"operation": {"ports": ["8080"]}}]}], selector=ECHO),
    ]


def deny_sleep() -> mm.Obj:
    """A namespace-wide DENY of everything from `sleep` (an edit the tests make)."""
    return mm.authorization_policy("deny-sleep", "DENY", [
        {"from": [{"source": {"principals": [SLEEP_PRINCIPAL]}}]}])


def manifests(tmp_path: Path, docs: Sequence[mm.Obj | str] | None = None) -> Path:
    """`tmp_path/manifests`, holding `docs` (default: the example) in EXAMPLE_FILE."""
    conf = tmp_path / "manifests"
    conf.mkdir(parents=True, exist_ok=True)
    mm.write(conf, EXAMPLE_FILE, *(example() if docs is None else docs))
    return conf


def run(coro: Coroutine[Any, Any, T], timeout: float = 20) -> T:
    """asyncio.run with a hard cap, so a protocol bug fails the test instead of hanging."""
    async def capped() -> T:
        return await asyncio.wait_for(coro, timeout)
    return asyncio.run(capped())


@asynccontextmanager
async def control_plane(tmp_path: Path, docs: Sequence[mm.Obj | str] | None = None,
                        **overrides: Any) -> AsyncIterator[ControlPlane]:
    """Serving `manifests(tmp_path, docs)` (edit the files there: they are watched)."""
    cfg = ControlPlaneConfig(config=manifests(tmp_path, docs), address="127.0.0.1:0",
                             state_dir=tmp_path / "state", **overrides)
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


__all__ = ["ADDRESS_TYPE", "AUTHORIZATION_TYPE", "EXAMPLE_FILE", "AdsClient", "Samples", "auth",
           "channel", "control_plane", "decode", "deny_sleep", "eventually", "example",
           "http_get", "manifests", "names", "run", "sample", "scrape"]
