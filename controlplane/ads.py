"""`envoy.service.discovery.v3.AggregatedDiscoveryService/DeltaAggregatedResources` (grpc.aio).

Each stream is a `Session` (controlplane/session.py holds the protocol rules) fed by two
sources: the client's requests and the store's change events. Only delta ADS is served;
ztunnel and our agent never use state-of-the-world.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from typing import Any

import grpc
import structlog
from envoy.service.discovery.v3 import discovery_pb2

from controlplane import metrics, nodeauth
from controlplane.session import Session
from controlplane.store import ServedStore

log = structlog.get_logger("controlplane.ads")

SERVICE = "envoy.service.discovery.v3.AggregatedDiscoveryService"


class AdsService:
    def __init__(self, store: ServedStore, token_key: bytes) -> None:
        self.store = store
        self.token_key = token_key
        self.sessions: set[Session] = set()  # live streams, for tests and debugging

    def handler(self) -> grpc.GenericRpcHandler:
        return grpc.method_handlers_generic_handler(SERVICE, {
            "DeltaAggregatedResources": grpc.stream_stream_rpc_method_handler(
                self.delta_aggregated_resources,
                request_deserializer=discovery_pb2.DeltaDiscoveryRequest.FromString,
                response_serializer=discovery_pb2.DeltaDiscoveryResponse.SerializeToString),
        })

    async def delta_aggregated_resources(self, requests: AsyncIterator[Any],
                                         context: grpc.aio.ServicerContext[Any, Any],
                                         ) -> AsyncIterator[Any]:
        node = nodeauth.node_from_metadata(self.token_key, context.invocation_metadata())
        if node is None:
            log.warning("ads_stream_refused", peer=context.peer(), reason="no valid node token")
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, "authentication failure")
        assert node is not None
        session = Session(peer=context.peer(), node_name=node)
        log.info("ads_stream_opened", peer=session.peer, node=node)
        self.sessions.add(session)
        metrics.ADS_CLIENTS.labels(node=node).inc()
        reader = aiter(requests)
        try:
            with self.store.changes() as changed:
                next_req: asyncio.Task[Any] = asyncio.ensure_future(anext(reader))
                next_change = asyncio.ensure_future(changed.wait())
                try:
                    while True:
                        done, _ = await asyncio.wait({next_req, next_change},
                                                     return_when=asyncio.FIRST_COMPLETED)
                        if next_req in done:
                            try:
                                req = next_req.result()
                            except StopAsyncIteration:
                                return
                            for resp in session.on_request(req, self.store.snapshot,
                                                           self.store.version):
                                metrics.PUSHES.labels(type_url=resp.type_url,
                                                      trigger="request").inc()
                                yield resp
                            next_req = asyncio.ensure_future(anext(reader))
                        if next_change in done:
                            if self.store.closed:
                                return  # stopping: end the stream with status OK
                            # Cleared before computing: a change landing while we send is
                            # picked up by the next round, never lost.
                            changed.clear()
                            changed_at = self.store.changed_at
                            for resp in session.on_snapshot(self.store.snapshot,
                                                            self.store.version):
                                log.info("ads_push", node=node, type_url=resp.type_url,
                                         updated=len(resp.resources),
                                         removed=len(resp.removed_resources))
                                metrics.PUSHES.labels(type_url=resp.type_url,
                                                      trigger="change").inc()
                                yield resp
                                # Resumed once gRPC took the message: the push is sent.
                                if changed_at is not None:
                                    metrics.PUSH_LATENCY.observe(time.monotonic() - changed_at)
                            next_change = asyncio.ensure_future(changed.wait())
                finally:
                    for task in (next_req, next_change):
                        task.cancel()
                        # The stream is over; a failed or cancelled read has nothing to add.
                        with contextlib.suppress(asyncio.CancelledError, Exception):
                            await task
        finally:
            self.sessions.discard(session)
            metrics.ADS_CLIENTS.labels(node=node).dec()
            log.info("ads_stream_closed", peer=session.peer, node=node)
