"""`envoy.service.discovery.v3.AggregatedDiscoveryService/DeltaAggregatedResources` (grpc.aio).

Each stream is a `Session` (controlplane/session.py holds the protocol rules) fed by two
sources: the client's requests and the store's change events. Only delta ADS is served;
ztunnel and our agent never use state-of-the-world.

A stream reads the store's changes when it pushes, and when a request may be answered (a
first request, a subscription change), never on an ACK: so the streams woken by a change read
it from the same position, and share the response it makes (controlplane/session.py).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import time
from collections.abc import AsyncIterator
from typing import Any

import grpc
import structlog
from envoy.service.discovery.v3 import discovery_pb2

from controlplane import heap, metrics, wire
from controlplane.auth import Authenticator, AuthError
from controlplane.session import Session
from controlplane.store import ServedStore

log = structlog.get_logger("controlplane.ads")

SERVICE = "envoy.service.discovery.v3.AggregatedDiscoveryService"
# A first request listing this many held resources is large transient work (parsed and
# compared, then dropped): the heap is trimmed after a burst of them (controlplane/heap.py).
LARGE_REQUEST = 1000


class AdsService:
    def __init__(self, store: ServedStore, auth: Authenticator) -> None:
        self.store = store
        self.auth = auth
        self.sessions: set[Session] = set()  # live streams, for tests and debugging

    def handler(self) -> grpc.GenericRpcHandler:
        return grpc.method_handlers_generic_handler(SERVICE, {
            "DeltaAggregatedResources": grpc.stream_stream_rpc_method_handler(
                self.delta_aggregated_resources,
                request_deserializer=discovery_pb2.DeltaDiscoveryRequest.FromString,
                # Responses are written as bytes by the session (controlplane/wire.py).
                response_serializer=wire.serialize),
        })

    async def delta_aggregated_resources(self, requests: AsyncIterator[Any],
                                         context: grpc.aio.ServicerContext[Any, Any],
                                         ) -> AsyncIterator[Any]:
        # Node agents only (a node token, or a trusted node account's Kubernetes token):
        # the stream is the node's view of the mesh, and its metrics are per node.
        try:
            caller = await self.auth.authenticate(context.invocation_metadata())
        except AuthError as exc:
            log.warning("ads_stream_refused", peer=context.peer(), reason=str(exc))
            await context.abort(exc.code, str(exc))
        if not caller.node_agent:
            reason = f"{caller} is not a node agent (not a trusted node account)"
            log.warning("ads_stream_refused", peer=context.peer(), reason=reason)
            await context.abort(grpc.StatusCode.PERMISSION_DENIED, reason)
        node = caller.node
        session = Session(peer=context.peer(), node_name=node, fed=True)
        log.info("ads_stream_opened", peer=session.peer, node=node)
        self.sessions.add(session)
        metrics.ADS_CLIENTS.labels(node=node).inc()
        try:
            with self.store.feed() as feed:
                # One wake-up for both sources: the store's changes (the feed sets it) and
                # the answers to the client's requests (the reader sets it). Requests are read
                # by a task of their own, so an ACK costs a read: no task, no wait per message.
                wake = feed.event
                answers: collections.deque[Any] = collections.deque()

                async def read() -> None:
                    try:
                        async for req in requests:
                            if session.may_respond(req):
                                session.absorb(feed.take())
                            answers.extend(session.on_request(req, self.store.snapshot,
                                                              self.store.version))
                            if answers:
                                wake.set()
                            if len(req.initial_resource_versions) >= LARGE_REQUEST:
                                heap.trim_soon()
                    finally:
                        wake.set()  # the client ended the stream, or the read failed

                reading = asyncio.ensure_future(read())
                try:
                    while True:
                        await wake.wait()
                        if self.store.closed:
                            return  # stopping: end the stream with status OK
                        # Cleared before computing: a change landing while we send is picked
                        # up by the next round, never lost.
                        wake.clear()
                        while answers:
                            resp = answers.popleft()
                            _pushes(resp.type_url, "request").inc()
                            yield resp
                        if reading.done():
                            reading.result()  # a failed read ends the stream with its error
                            return
                        changed_at = self.store.changed_at
                        session.absorb(feed.take())
                        for resp in session.on_snapshot(self.store.snapshot, self.store.version):
                            # Debug, not info: a change is pushed to every stream, and a
                            # line per stream per change would be most of the log (and of
                            # the CPU) with a thousand nodes (istiod logs these at debug).
                            log.debug("ads_push", node=node, type_url=resp.type_url,
                                      updated=len(resp.names),
                                      removed=len(resp.removed_resources))
                            _pushes(resp.type_url, "change").inc()
                            yield resp
                            # Resumed once gRPC took the message: the push is sent.
                            if changed_at is not None:
                                metrics.PUSH_LATENCY.observe(time.monotonic() - changed_at)
                finally:
                    reading.cancel()
                    # The stream is over; a failed or cancelled read has nothing to add.
                    with contextlib.suppress(asyncio.CancelledError, Exception):
                        await reading
        finally:
            self.sessions.discard(session)
            metrics.ADS_CLIENTS.labels(node=node).dec()
            log.info("ads_stream_closed", peer=session.peer, node=node)


_PUSHES: dict[tuple[str, str], Any] = {}


def _pushes(type_url: str, trigger: str) -> Any:
    """metrics.PUSHES' series (looked up once: `labels()` is as costly as a push's own work)."""
    child = _PUSHES.get((type_url, trigger))
    if child is None:
        child = _PUSHES[(type_url, trigger)] = metrics.PUSHES.labels(type_url=type_url,
                                                                     trigger=trigger)
    return child
