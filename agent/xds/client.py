"""Delta ADS client: one stream to the control plane carrying workloads/services and policies.

Protocol (Envoy xds_protocol.rst, behaviour as ztunnel's `src/xds/client.rs`):
- one initial wildcard request per type, with the node and, on reconnect, the name->version
  map of what we hold (`initial_resource_versions`) so the server sends only what changed and
  tells us what was removed while we were away;
- every response is answered on the same stream: ACK = its nonce; NACK = its nonce plus
  `error_detail` naming each rejected resource. The good resources of a NACKed response are
  applied; a rejected resource keeps its last good record (and its old version, so a
  reconnect makes the server send it again);
- ready once the first response of Istio's two types has been applied; it stays set across
  reconnects, because the last good state stays in force while the control plane is away;
- meshnode's traffic management types (core/mesh/trafficpb.py) are subscribed too, and
  *first*: a meshnode control plane answers a stream's requests in order, so their first
  responses are applied before Istio's types make the agent ready (no moment where the proxy
  runs without the mesh's REGISTRY_ONLY or routing rules). A control plane that does not
  serve them (istiod, an older meshnode) does not answer those requests; they do not count
  toward readiness, so such a control plane still makes the agent ready, and nothing of
  traffic management is applied;
- reconnect with exponential backoff and jitter; a stream that delivered anything resets the
  backoff (servers close streams on purpose, e.g. istiod's 30 min max connection age).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

import grpc
import structlog
from envoy.service.discovery.v3 import ads_pb2_grpc, discovery_pb2

from agent.xds.channel import ControlPlaneEndpoint, call_metadata, secure_channel
from agent.xds.node import NodeInfo
from agent.xds.state import TrafficKind, XdsState
from core.backoff import Backoff
from core.mesh import trafficpb
from core.mesh.frompb import Converter, ConvertError
from core.mesh.model import Policy, Service, Workload
from core.mesh.trafficpb import TrafficRecord

log = structlog.get_logger("xds")

ADDRESS_TYPE = "type.googleapis.com/istio.workload.Address"
AUTHORIZATION_TYPE = "type.googleapis.com/istio.security.Authorization"
# What readiness waits for (see the module's docstring).
REQUIRED_TYPES = (ADDRESS_TYPE, AUTHORIZATION_TYPE)
# XdsState's kind of each traffic management type.
TRAFFIC_KINDS: dict[str, TrafficKind] = {trafficpb.SERVICE_TRAFFIC_TYPE: "traffic",
                                         trafficpb.EGRESS_POLICY_TYPE: "egress",
                                         trafficpb.WORKLOAD_LABELS_TYPE: "labels"}
# Subscribed in this order: traffic management first.
TYPES = (*trafficpb.TRAFFIC_TYPES, ADDRESS_TYPE, AUTHORIZATION_TYPE)
INVALID_ARGUMENT = 3       # google.rpc.Code, in error_detail of a NACK
MAX_ERRORS_LISTED = 50     # a NACK names at most this many resources, then counts the rest
YIELD_EVERY = 2000         # resources converted between event-loop yields (large snapshots)


@dataclass
class XdsClientConfig:
    endpoint: ControlPlaneEndpoint
    node: NodeInfo
    initial_backoff: float = 0.01    # ztunnel: 10 ms doubling to 15 s
    max_backoff: float = 15.0


@dataclass
class XdsStats:
    connects: int = 0
    responses: int = 0
    acks: int = 0
    nacks: int = 0
    last_nack: str = ""
    last_error: str = ""
    connected: bool = False
    last_response_at: float = 0.0
    last_ack_at: float = 0.0
    # The serving control plane's `control_plane.identifier` (istiod's JSON: Component, ID,
    # Info.version), as its last response said: which replica and version this agent follows.
    control_plane: str = ""
    per_type: Counter[str] = field(default_factory=Counter)


class DeltaAdsClient:
    def __init__(self, cfg: XdsClientConfig, state: XdsState | None = None,
                 backoff: Backoff | None = None) -> None:
        self.cfg = cfg
        self.state = state if state is not None else XdsState(local_node=cfg.node.node_name)
        self.backoff = backoff or Backoff(cfg.initial_backoff, cfg.max_backoff)
        self.convert = Converter()
        self.stats = XdsStats()
        self._ready = asyncio.Event()
        self._seen_types: set[str] = set()
        self._node = cfg.node.to_proto()

    # ---- public API ----

    def ready(self) -> bool:
        return self._ready.is_set()

    async def wait_ready(self, timeout: float | None = None) -> bool:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                await self._ready.wait()
        return self._ready.is_set()

    async def run(self) -> None:
        """Connect and stay connected until cancelled."""
        while True:
            got_any = False
            try:
                got_any = await self._stream_once()
                log.info("xds_stream_ended")
            except asyncio.CancelledError:
                raise
            except grpc.aio.AioRpcError as e:
                details = e.details() or ""
                if e.code() == grpc.StatusCode.INTERNAL and "from Core" in details:
                    # gRPC replaces the server's status with this when our write races the
                    # server closing the stream; say what happened instead.
                    details = "stream closed by the control plane while we were sending"
                self.stats.last_error = f"{e.code().name}: {details}"
                got_any = got_any or self.stats.connected
                log.warning("xds_stream_error", code=e.code().name, details=details,
                            address=self.cfg.endpoint.address)
            except Exception as e:  # cert file missing, bad address, our own bug...
                self.stats.last_error = repr(e)
                log.exception("xds_stream_failed", address=self.cfg.endpoint.address)
            finally:
                self.stats.connected = False
            if got_any:
                self.backoff.reset()
            delay = self.backoff.next()
            log.info("xds_reconnecting", delay_s=round(delay, 3))
            await asyncio.sleep(delay)

    # ---- one stream ----

    async def _stream_once(self) -> bool:
        """Run one stream to its end; True if it delivered at least one response."""
        self.stats.connected = False
        channel = secure_channel(self.cfg.endpoint)
        got_any = False
        try:
            stub = ads_pb2_grpc.AggregatedDiscoveryServiceStub(channel)
            call = stub.DeltaAggregatedResources(metadata=call_metadata(self.cfg.endpoint))
            for t in TYPES:
                await call.write(self._initial_request(t))
            self.stats.connects += 1
            log.info("xds_connected", address=self.cfg.endpoint.address, node=self._node.id)
            while True:
                resp = await call.read()
                if resp is grpc.aio.EOF:
                    return got_any
                got_any = self.stats.connected = True
                await call.write(await self.handle(resp))
        except grpc.aio.AioRpcError:
            if got_any:
                self.stats.connected = True  # tells run() to reset the backoff
            raise
        finally:
            await channel.close()

    def _initial_request(self, type_url: str) -> Any:
        versions = self.state.versions(
            TRAFFIC_KINDS.get(type_url) or ("address" if type_url == ADDRESS_TYPE else "policy"))
        return discovery_pb2.DeltaDiscoveryRequest(
            node=self._node, type_url=type_url, resource_names_subscribe=["*"],
            initial_resource_versions=versions)

    # ---- one response ----

    async def handle(self, resp: Any) -> Any:
        """Apply one DeltaDiscoveryResponse; return the ACK or NACK to send back."""
        t = resp.type_url
        self.stats.responses += 1
        self.stats.per_type[t] += 1
        self.stats.last_response_at = time.time()
        if resp.HasField("control_plane"):
            self.stats.control_plane = resp.control_plane.identifier
        if t == ADDRESS_TYPE:
            errors = await self._apply(resp, self.convert.address, "address")
        elif t == AUTHORIZATION_TYPE:
            errors = await self._apply(resp, self.convert.policy, "policy")
        elif t in TRAFFIC_KINDS:
            errors = await self._apply(resp, trafficpb.DECODERS[t], TRAFFIC_KINDS[t])
        else:
            errors = [f"unknown type_url {t!r}"]
        req = discovery_pb2.DeltaDiscoveryRequest(type_url=t, response_nonce=resp.nonce)
        if errors:
            msg = "; ".join(errors[:MAX_ERRORS_LISTED])
            if len(errors) > MAX_ERRORS_LISTED:
                msg += f"; and {len(errors) - MAX_ERRORS_LISTED} more"
            req.error_detail.code = INVALID_ARGUMENT
            req.error_detail.message = msg
            self.stats.nacks += 1
            self.stats.last_nack = msg
            log.warning("xds_nack", type_url=t, nonce=resp.nonce, rejected=len(errors),
                        error=msg[:2000])
        else:
            self.stats.acks += 1
            self.stats.last_ack_at = self.stats.last_response_at
        if t in TYPES and t not in self._seen_types:
            self._seen_types.add(t)
            if not self._ready.is_set() and self._seen_types.issuperset(REQUIRED_TYPES):
                self._ready.set()
                log.info("xds_ready", workloads=len(self.state.workloads),
                         services=len(self.state.services), policies=len(self.state.policies),
                         traffic=len(self.state.traffic), egress=len(self.state.egress),
                         traffic_types=sorted(TRAFFIC_KINDS[x] for x in self._seen_types
                                              if x in TRAFFIC_KINDS))
        return req

    async def _apply(self, resp: Any,
                     conv: Callable[[str, str, bytes], Workload | Service | Policy
                                    | TrafficRecord],
                     kind: Literal["address", "policy"] | TrafficKind) -> list[str]:
        errors: list[str] = []
        t = resp.type_url
        names = Counter(r.name for r in resp.resources)
        good: list[Workload | Service | Policy | TrafficRecord] = []
        reported: set[str] = set()
        for i, r in enumerate(resp.resources):
            if i and i % YIELD_EVERY == 0:
                await asyncio.sleep(0)  # a 100k snapshot must not stall the agent's loop
            name = r.name
            if not name:
                errors.append(f"resource #{i}: no name")
                continue
            if names[name] > 1:  # ambiguous: apply none of them, name it once
                if name not in reported:
                    reported.add(name)
                    errors.append(f"{name}: duplicate resource name in one response")
                continue
            if not r.HasField("resource"):
                continue  # TTL heartbeat: nothing changes
            if r.resource.type_url != t:
                errors.append(f"{name}: resource of type {r.resource.type_url!r}")
                continue
            try:
                good.append(conv(name, r.version, r.resource.value))
            except ConvertError as e:
                errors.append(f"{name}: {e}")
            except Exception as e:  # a converter bug must not take the stream down
                log.exception("xds_convert_bug", name=name)
                errors.append(f"{name}: {e!r}")
        removed = [*resp.removed_resources, *(n.name for n in resp.removed_resource_names)]
        try:
            if kind == "policy":
                self.state.apply(good, removed_policies=removed)
            elif kind == "address":
                self.state.apply(good, removed_addresses=removed)
            else:
                self.state.apply(good, removed_traffic=[(kind, n) for n in removed])
        except Exception as e:
            log.exception("xds_apply_failed", type_url=t)
            errors.append(f"apply failed: {e!r}")
        return errors
