"""One pod's outbound connections under traffic management (issue 16): the sockets around
proxy/traffic's decisions. PodProxy (proxy/inpod/workload.py) asks `plan` for every outbound
connection when it has a mesh config channel:

- None: no rule concerns it (no Sidecar egress policy applies, and the destination is not a
  VIP of a service with traffic rules or with endpoints known by host name only): the
  existing path (MeshTable.route), unchanged; this costs two dict tests;
- a refusal: `registry_only` (Sidecar outboundTrafficPolicy) or the router's;
- a decision: the router's route, destination service and cluster.

`open` then takes a pool slot and connects with retries, each attempt to the endpoint the
cluster picks, through HBONE when the endpoint is a mesh workload and plainly otherwise (a
host-name endpoint is resolved at connect time with the node's resolver, as Envoy's
STRICT_DNS clusters and ztunnel do); `closed` tells the router how the connection ended.

The SNI of a TLS ClientHello is read only for a service with `tls` routes: the proxy peeks
(MSG_PEEK, so the upstream still gets every byte) for at most SNI_WAIT seconds and
MAX_HELLO bytes; a client that says nothing in time (a server-first protocol) is routed as
without SNI, never refused.
"""

from __future__ import annotations

import asyncio
import socket
import time
from dataclasses import dataclass, field
from typing import Any, Protocol

from core.mesh.model import Service, Workload
from core.mesh.traffic import RouteKind, ServiceTraffic
from core.spiffe import SpiffeError, parse
from proxy import metrics
from proxy.forward import Traffic, relay, reset
from proxy.hbone import metrics as hbone_metrics
from proxy.hbone import relay as hbone_relay
from proxy.hbone.client import HboneClient
from proxy.meshconfig.runtime import ProxyMesh
from proxy.meshconfig.table import Target
from proxy.traffic import egress
from proxy.traffic.refusal import Reason, Refused
from proxy.traffic.router import Decision, Endpoint, Opened
from proxy.traffic.routes import Connection
from proxy.traffic.sni import MAX_HELLO, NEED_MORE, server_name

Addr = tuple[str, int]
SNI_WAIT = 1.0          # seconds a client may take to send its ClientHello
_SNI_POLL = 0.005       # between peeks while the hello is incomplete
_FLAGS = {Reason.OVERFLOW: metrics.UPSTREAM_OVERFLOW,
          Reason.NO_HEALTHY_ENDPOINT: metrics.NO_HEALTHY_UPSTREAM,
          Reason.UNKNOWN_DESTINATION: metrics.NO_ROUTE}


class Pod(Protocol):
    """What this module uses of its pod (proxy/inpod/workload.py's PodProxy)."""

    uid: str
    namespace: str
    ips: set[str]

    async def _connect(self, dst: Addr, as_src: Addr | None, *,
                       direction: str = "inbound") -> socket.socket: ...
    def outbound_labels(self, dst_ip: str, target: Target | None = None, *,
                        mtls: bool = False) -> tuple[str, ...]: ...


class Mesh(Protocol):
    """What this module uses of the pod's mesh path (proxy/inpod/meshpath.py's PodMesh)."""

    mesh: ProxyMesh
    client: HboneClient

    def workload(self) -> Workload | None: ...
    def identity(self) -> Any: ...


@dataclass
class Plan:
    """One connection's way through traffic management, and what its access-log line and
    metrics say about it."""

    conn: Connection
    service: Service | None = None
    decision: Decision | None = None
    refused: Refused | None = None
    error: str = ""
    flags: str = metrics.NO_FLAGS
    log: dict[str, Any] = field(default_factory=dict)


class Upstream:
    """A connected upstream: a plain socket, or an HBONE stream."""

    def __init__(self, target: Target, sock: socket.socket | None = None,
                 stream: Any = None, labels: tuple[str, ...] = ()) -> None:
        self.target = target
        self.sock = sock
        self.stream = stream
        self._labels = labels  # the HBONE stream's (direction, source, peer)
        self.log: dict[str, Any] = {}  # the plan's access-log fields (open sets it)

    async def relay(self, client: socket.socket, traffic: Traffic, zero_copy: bool) -> None:
        try:
            if self.sock is not None:
                await relay(client, self.sock, traffic, zero_copy=zero_copy)
            else:
                await self._relay_hbone(client, traffic)
        finally:
            if traffic.reset_by:  # who reset it: only the upstream's counts for outliers
                self.log["reset_by"] = traffic.reset_by

    async def _relay_hbone(self, client: socket.socket, traffic: Traffic) -> None:
        try:
            await hbone_relay.relay(client, self.stream, traffic, sock_is_a=True)
        finally:
            labels = self._labels
            hbone_metrics.STREAMS_CLOSED.labels(*labels, str(traffic.reset).lower()).inc()
            hbone_metrics.SENT.labels(*labels).inc(traffic.a_to_b)
            hbone_metrics.RECEIVED.labels(*labels).inc(traffic.b_to_a)

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close()
        elif self.stream is not None:
            self.stream.reset()


def _has_tls_routes(t: ServiceTraffic | None) -> bool:
    return t is not None and any(r.kind == RouteKind.TLS for r in t.routes)


async def peek_sni(client: socket.socket, wait: float = SNI_WAIT) -> str:
    """The SNI of the ClientHello the client is sending, "" if none within `wait`."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + wait
    while True:
        try:
            data = client.recv(MAX_HELLO, socket.MSG_PEEK)
        except BlockingIOError:
            data = None
        except OSError:
            return ""
        if data == b"":
            return ""  # the client half-closed without a word
        if data is not None:
            name = server_name(data)
            if name is not NEED_MORE:
                return name
        left = deadline - loop.time()
        if left <= 0:
            return ""
        if data is None:
            await _readable(loop, client, left)
        else:
            # A hello begun: readability stays set while bytes are queued, so poll.
            await asyncio.sleep(min(_SNI_POLL, left))


async def _readable(loop: asyncio.AbstractEventLoop, sock: socket.socket,
                    timeout: float) -> None:
    fut: asyncio.Future[None] = loop.create_future()

    def ready() -> None:
        if not fut.done():
            fut.set_result(None)

    loop.add_reader(sock.fileno(), ready)
    try:
        await asyncio.wait_for(fut, timeout)
    except TimeoutError:
        pass
    finally:
        loop.remove_reader(sock.fileno())


class PodTraffic:
    def __init__(self, pod: Pod, meshpath: Mesh, zero_copy: bool = True) -> None:
        self.pod = pod
        self.meshpath = meshpath
        self.zero_copy = zero_copy
        # Per connection, only lookups: whether a service's rules have `tls` routes (by the
        # rules object), and the connection counter's series per (service, route, subset).
        self._tls: dict[str, tuple[ServiceTraffic | None, bool]] = {}
        self._counted: dict[tuple[str, str, str], Any] = {}

    def _peeks_sni(self, svc: Service) -> bool:
        t = self.table.traffic(svc.key)
        got = self._tls.get(svc.key)
        if got is None or got[0] is not t:
            got = self._tls[svc.key] = (t, _has_tls_routes(t))
        return got[1]

    def _count(self, svc: Service, d: Decision) -> None:
        key = (svc.key, d.route, d.subset)
        series = self._counted.get(key)
        if series is None:
            if len(self._counted) > 4096:  # routes renamed by config generations
                self._counted.clear()
            series = self._counted[key] = metrics.TRAFFIC_CONNECTIONS.labels(*key)
        series.inc()

    @property
    def table(self) -> Any:
        return self.meshpath.mesh.table

    # -- 1. which way ------------------------------------------------------------------------

    async def plan(self, client: socket.socket, src: Addr, dst: Addr) -> Plan | None:
        table = self.table
        svc = table.routed_service(dst)
        if svc is None and not table.egress:
            return None
        me = self.meshpath.workload()
        conn = Connection(dst[0], dst[1], src[0], me,
                          table.labels(me.uid) if me is not None else {})
        policy = table.egress_policy(me, self.pod.namespace)
        if policy is not None:
            d = egress.decide(policy, table.registry, dst[1], ip=dst[0])
            if not d.allowed:
                return Plan(conn, refused=Refused(d.reason or Reason.REGISTRY_ONLY, d.detail))
            if svc is None and d.service is not None and dst[0] not in {
                    v.address for v in d.service.vips}:
                svc = d.service  # an address-less ServiceEntry, known by its port
            if svc is None:
                return None  # allowed: the existing path (a VIP, a pod, passthrough)
        assert svc is not None
        if self._peeks_sni(svc):
            conn = Connection(conn.dst_ip, conn.dst_port, conn.src_ip, conn.source,
                              conn.source_labels, await peek_sni(client))
        try:
            decision = table.router.decide(svc, conn)
        except Refused as exc:
            return Plan(conn, svc, refused=exc)
        return Plan(conn, svc, decision)

    # -- 2. connect ------------------------------------------------------------------------------

    def _refuse(self, plan: Plan, client: socket.socket, exc: Refused) -> None:
        reset(client)
        svc = plan.service.key if plan.service is not None else metrics.UNKNOWN
        metrics.TRAFFIC_REFUSED.labels(exc.reason.value, svc).inc()
        plan.refused = exc
        plan.error = f"{exc.reason.value}: {exc.detail}"
        plan.flags = _FLAGS.get(exc.reason, metrics.CONNECT)
        plan.log["refused"] = exc.reason.value

    async def open(self, plan: Plan, client: socket.socket, src: Addr,
                   conn: Any) -> tuple[Upstream, Opened[Upstream] | None] | None:
        """Connect as planned; None when refused (the client is reset, `plan` says why).
        Sets `conn.dst` to the endpoint and `conn.stats` to its istio_tcp_* series."""
        d, svc = plan.decision, plan.service
        plan.log["original_dst"] = f"{plan.conn.dst_ip}:{plan.conn.dst_port}"
        if svc is not None:
            plan.log["service"] = svc.key
        if d is not None:
            plan.log.update(route=d.route, subset=d.subset, cluster=str(d.cluster))
        if plan.refused is not None:
            if svc is not None and plan.refused.reason != Reason.REGISTRY_ONLY:
                conn.stats = metrics.ConnMetrics(self.pod.outbound_labels(
                    conn.dst[0], Target(conn.dst, None, svc)))
            self._refuse(plan, client, plan.refused)
            return None
        assert d is not None and svc is not None
        self._count(svc, d)
        if d.passthrough:  # PASSTHROUGH: the original destination, one attempt
            try:
                up = await self._attempt(Endpoint(_NOBODY, conn.dst), d, src,
                                         self.pod_timeout())
            except (OSError, TimeoutError) as exc:
                self._failed(plan, client, conn, svc,
                             Refused(Reason.CONNECT_FAILED, str(exc) or "timeout"))
                return None
            self._opened(conn, up, plan)
            return up, None
        try:
            opened = await self.table.router.open(
                d, plan.conn, lambda e, budget: self._attempt(e, d, src, budget))
        except Refused as exc:
            self._failed(plan, client, conn, svc, exc)
            return None
        retries = len(opened.attempts) - 1
        if retries:
            metrics.TRAFFIC_RETRIES.labels(svc.key).inc(retries)
            plan.log["attempts"] = len(opened.attempts)
        self._opened(conn, opened.value, plan)
        return opened.value, opened

    def pod_timeout(self) -> float:
        return float(getattr(getattr(self.pod, "cfg", None), "connect_timeout_seconds", 5.0))

    def _failed(self, plan: Plan, client: socket.socket, conn: Any, svc: Service,
                exc: Refused) -> None:
        conn.stats = metrics.ConnMetrics(self.pod.outbound_labels(
            conn.dst[0], Target(conn.dst, None, svc)))
        self._refuse(plan, client, exc)

    def _opened(self, conn: Any, up: Upstream, plan: Plan) -> None:
        up.log = plan.log
        conn.dst = up.target.addr
        conn.stats = metrics.ConnMetrics(self.pod.outbound_labels(
            up.target.addr[0], up.target, mtls=up.target.hbone))

    async def _attempt(self, e: Endpoint, d: Decision, src: Addr, budget: float) -> Upstream:
        """One connect attempt within `budget` seconds. Raises OSError or TimeoutError."""
        async with asyncio.timeout(budget):
            addr = e.addr
            if e.host:
                addr = (await resolve(e.host), addr[1])
            w = e.workload if e.workload is not _NOBODY else None
            target = Target(addr, w, d.service)
            if not target.hbone:
                return Upstream(target, sock=await self.pod._connect(
                    addr, None, direction="outbound"))
            try:
                ids = [parse(i) for i in target.identities()]
                me = self.meshpath.identity()
            except SpiffeError as exc:
                raise ConnectionError(f"identity: {exc}") from None
            stream = await self.meshpath.client.open(me, ids, addr, src_addr=src,
                                                     host=d.service.hostname)
            return Upstream(target, stream=stream,
                            labels=("outbound", str(me), str(stream.link.peer)))

    # -- DNS ------------------------------------------------------------------------------------

    def dns_lookup(self, name: str) -> list[str] | None:
        """The addresses the proxy's DNS server answers for `name`: the VIPs of the service
        whose host name it is (the pod's namespace's first, when several namespaces hold
        one), if the pod's Sidecar imports it; None: not a name of the mesh (the query goes
        to the pod's resolver)."""
        table = self.table
        found = [s for s in table.registry.by_host(name, 0)
                 if not s.hostname.startswith("*") and s.vips]
        if not found:
            return None
        me = self.meshpath.workload()
        policy = table.egress_policy(me, self.pod.namespace)
        if policy is not None:
            found = [s for s in found if egress.imported(policy, s, 0, name)]
            if not found:
                return None
        svc = next((s for s in found if s.namespace == self.pod.namespace), found[0])
        return [v.address for v in svc.vips if v.length is None]

    # -- 3. the end --------------------------------------------------------------------------

    def closed(self, opened: Opened[Upstream] | None, traffic: Traffic) -> None:
        """Tell the router how the connection ended. Only the upstream's own reset is a 5xx
        for outlier detection: a client resetting its connections, the idle timeout, or a
        reset answering bytes sent after the upstream closed would let any client in any
        pod eject a healthy endpoint."""
        if opened is not None:
            self.table.router.closed(opened, reset=traffic.upstream_failed)


_NOBODY = Workload(uid="", name="", namespace="", addresses=())


async def resolve(host: str) -> str:
    """The first address of `host` by the node's resolver (the proxy's own netns), as
    Envoy's STRICT_DNS cluster and ztunnel resolve a DNS ServiceEntry's endpoints."""
    loop = asyncio.get_running_loop()
    started = time.monotonic()
    try:
        infos = await loop.getaddrinfo(host, None, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise ConnectionError(f"resolve {host}: {exc.strerror}") from None
    if not infos:
        raise ConnectionError(f"resolve {host}: no address "
                              f"({time.monotonic() - started:.2f}s)")
    return str(infos[0][4][0])

