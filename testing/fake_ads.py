"""A scripted Delta ADS server: a real grpc.aio server with TLS whose every response the test
writes, so the client's side of the protocol (nonces, ACK/NACK, reconnect) can be checked
message by message."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator
from typing import Any

import grpc
from envoy.service.discovery.v3 import ads_pb2_grpc, discovery_pb2
from google.protobuf import any_pb2

from meshpb.istio import authorization_pb2 as authz_pb
from meshpb.istio import workload_pb2 as wl_pb

ADDRESS = "type.googleapis.com/istio.workload.Address"
AUTHZ = "type.googleapis.com/istio.security.Authorization"

_END = object()


class Stream:
    """One client stream as the test sees it: requests in, responses out."""

    def __init__(self, metadata: dict[str, str]) -> None:
        self.metadata = metadata
        self.requests: asyncio.Queue[Any] = asyncio.Queue()
        self.outbox: asyncio.Queue[Any] = asyncio.Queue()
        self.closed = asyncio.Event()
        self._n = 0

    async def recv(self, timeout: float = 5.0) -> Any:
        async with asyncio.timeout(timeout):
            return await self.requests.get()

    async def no_request(self, within: float = 0.3) -> None:
        with contextlib.suppress(TimeoutError):
            req = await self.recv(within)
            raise AssertionError(f"unexpected request: {req}")

    def send(self, type_url: str, resources: list[Any] = (),  # type: ignore[assignment]
             removed: list[str] = (), nonce: str = "") -> str:  # type: ignore[assignment]
        self._n += 1
        nonce = nonce or f"n{self._n}-{type_url.rsplit('.', 1)[-1]}"
        self.outbox.put_nowait(discovery_pb2.DeltaDiscoveryResponse(
            type_url=type_url, resources=list(resources), removed_resources=list(removed),
            nonce=nonce, system_version_info="v"))
        return nonce

    def end(self) -> None:
        """End the stream cleanly (like a server's max-connection-age close)."""
        self.outbox.put_nowait(_END)

    def abort(self, code: grpc.StatusCode = grpc.StatusCode.UNAVAILABLE) -> None:
        self.outbox.put_nowait(code)


class ScriptedAds(ads_pb2_grpc.AggregatedDiscoveryServiceServicer):  # type: ignore[misc]
    def __init__(self) -> None:
        self.streams: asyncio.Queue[Stream] = asyncio.Queue()
        self.count = 0
        self.reject: grpc.StatusCode | None = None   # refuse every new stream with this

    async def next_stream(self, timeout: float = 5.0) -> Stream:
        async with asyncio.timeout(timeout):
            return await self.streams.get()

    async def DeltaAggregatedResources(self, request_iterator: AsyncIterator[Any],
                                       context: grpc.aio.ServicerContext[Any, Any]
                                       ) -> AsyncIterator[Any]:
        self.count += 1
        if self.reject is not None:
            await context.abort(self.reject, "scripted rejection")
        s = Stream({k: v for k, v in context.invocation_metadata() or ()})  # type: ignore[misc]
        self.streams.put_nowait(s)

        async def pump() -> None:
            async for req in request_iterator:
                s.requests.put_nowait(req)
        reader = asyncio.create_task(pump())
        try:
            while True:
                item = await s.outbox.get()
                if item is _END:
                    return
                if isinstance(item, grpc.StatusCode):
                    await context.abort(item, "scripted abort")
                yield item
        finally:
            reader.cancel()
            s.closed.set()


async def start_server(servicer: ScriptedAds, key_pem: bytes, cert_pem: bytes
                       ) -> tuple[grpc.aio.Server, int]:
    server = grpc.aio.server()
    ads_pb2_grpc.add_AggregatedDiscoveryServiceServicer_to_server(servicer, server)
    port = server.add_secure_port("127.0.0.1:0",
                                  grpc.ssl_server_credentials([(key_pem, cert_pem)]))
    await server.start()
    return server, port


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# ---- resource builders ----

def _any(type_url: str, value: bytes) -> any_pb2.Any:
    return any_pb2.Any(type_url=type_url, value=value)


def workload(uid: str, ip: bytes = b"\x0a\x00\x00\x01", node: str = "node1", sa: str = "sa1",
             ns: str = "default", services: dict[str, int] | None = None,
             **kw: Any) -> wl_pb.Workload:
    w = wl_pb.Workload(uid=uid, name=uid.rsplit("/", 1)[-1], namespace=ns, addresses=[ip],
                       node=node, service_account=sa, tunnel_protocol=wl_pb.HBONE, **kw)
    for key, port in (services or {}).items():
        w.services[key].ports.add(service_port=port, target_port=port + 8000)
    return w


def res_workload(w: wl_pb.Workload, version: str = "1") -> Any:
    return discovery_pb2.Resource(
        name=w.uid, version=version,
        resource=_any(ADDRESS, wl_pb.Address(workload=w).SerializeToString()))


def res_service(ns: str, host: str, vip: bytes, port: int = 80, version: str = "1") -> Any:
    s = wl_pb.Service(name=host.split(".")[0], namespace=ns, hostname=host,
                      addresses=[wl_pb.NetworkAddress(address=vip)],
                      ports=[wl_pb.Port(service_port=port, target_port=port + 8000)])
    return discovery_pb2.Resource(
        name=f"{ns}/{host}", version=version,
        resource=_any(ADDRESS, wl_pb.Address(service=s).SerializeToString()))


def res_policy(ns: str, name: str, action: authz_pb.Action = authz_pb.DENY,
               ports: tuple[int, ...] = (9090,), version: str = "1") -> Any:
    a = authz_pb.Authorization(
        name=name, namespace=ns, scope=authz_pb.NAMESPACE, action=action,
        groups=[authz_pb.Group(rules=[authz_pb.Rules(matches=[
            authz_pb.Match(destination_ports=list(ports),
                           principals=[authz_pb.StringMatch(prefix="spiffe://cluster.local/")])
        ])])])
    return discovery_pb2.Resource(name=f"{ns}/{name}", version=version,
                                  resource=_any(AUTHZ, a.SerializeToString()))


def res_raw(name: str, type_url: str, value: bytes, version: str = "1") -> Any:
    return discovery_pb2.Resource(name=name, version=version, resource=_any(type_url, value))
