"""One pod's mesh data path: outbound through HBONE to mesh workloads, inbound HBONE on
15008 with L4 authorization, and the same authorization for plaintext inbound on 15006
(`authorize_plaintext`, no peer identity). Used by PodProxy only when the proxy has a mesh
config channel (proxy/meshconfig); without one the pod proxy behaves exactly as before.

The pod's identity is looked up in the mesh table by the pod's IPs (the ZDS hand-off
carries no service account worth trusting), and re-read per connection, so a workload
update or a certificate rotation applies to the next connection without a restart.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
import time
from typing import Any, Protocol

import structlog

from core.addr import plain_ip
from core.mesh.model import Workload
from core.spiffe import SpiffeError, SpiffeId, parse
from proxy import metrics
from proxy.authz import Decision
from proxy.config import ProxyConfig
from proxy.forward import Traffic, reset
from proxy.hbone import metrics as hbone_metrics
from proxy.hbone.client import HboneClient, HboneError
from proxy.hbone.server import HboneServer, InboundStream
from proxy.limits import NodeLimits
from proxy.meshconfig.runtime import ProxyMesh
from proxy.meshconfig.table import Target
from proxy.sockets import socket_in

log = structlog.get_logger("proxy")
access = structlog.get_logger("access")
Addr = tuple[str, int]
# HboneError.kind -> the connection's response_flags (ztunnel's, from its error kinds);
# anything else is CONNECT.
_FLAGS = {"identity": metrics.IDENTITY_ERROR, "timeout": metrics.NETWORK_POLICY,
          "tls": metrics.TLS_FAILURE}


class PodProxy(Protocol):
    """What the mesh path uses of its pod (proxy/inpod/workload.py's PodProxy), so this
    module does not import the one that imports it."""

    uid: str
    name: str
    namespace: str
    service_account: str
    netns_fd: int
    cfg: ProxyConfig
    limits: NodeLimits
    ips: set[str]
    capture_ports: frozenset[int]

    async def _connect(self, dst: Addr, as_src: Addr | None) -> socket.socket: ...
    def inbound_labels(self, src_ip: str, dst: Addr, *, peer: str = "", host: str = "",
                       mtls: bool = False) -> tuple[str, ...]: ...
    def track(self, stream: Any) -> None: ...
    def untrack(self, stream: Any) -> None: ...
    def loop_reason(self, dst: tuple[str, int]) -> str | None: ...
    def may_log(self, event: str) -> int | None: ...
    def refuse(self, direction: str, reason: str, sock: socket.socket | None = None,
               **fields: Any) -> None: ...


class _PodSlots:
    """Each inbound HBONE stream takes one of the pod's connection slots (proxy/limits.py)
    for as long as it relays, as an accepted plaintext connection does."""

    def __init__(self, pod: PodProxy) -> None:
        self.pod = pod

    def acquire(self, src: Addr, dst: Addr) -> str | None:
        denied = self.pod.limits.connections.acquire(self.pod.uid)
        if denied is not None:
            self.pod.refuse("inbound", denied, src=src, dst=dst)
        return denied

    def release(self) -> None:
        self.pod.limits.connections.release(self.pod.uid)


class PodMesh:
    def __init__(self, pod: PodProxy, mesh: ProxyMesh) -> None:
        self.pod = pod
        self.mesh = mesh
        self.client = HboneClient(mesh.certs, self._dial_tunnel,
                                  connect_timeout=pod.cfg.connect_timeout_seconds)
        self._servers: dict[SpiffeId, HboneServer] = {}
        # Source addresses of this proxy's own tunnels to this very pod (a pod calling a
        # service it serves itself): the only clients from the pod's own IPs that 15008
        # accepts. Added before connect(), so the accept never races ahead of it.
        self._self_dials: set[Addr] = set()

    # -- who this pod is ----------------------------------------------------------------

    def workload(self) -> Workload | None:
        return self.mesh.table.first_workload(self.pod.ips)

    def identity(self) -> SpiffeId:
        w = self.workload()
        if w is not None:
            return parse(w.spiffe_id)
        td = self.mesh.table.trust_domain
        return SpiffeId.of(td, self.pod.namespace, self.pod.service_account)

    # -- outbound -------------------------------------------------------------------------

    async def _dial_tunnel(self, addr: Addr) -> socket.socket:
        # From inside the source pod's netns, marked: the tunnel leaves with the pod's own
        # address and is not captured again by its rules.
        fam = socket.AF_INET6 if ":" in addr[0] else socket.AF_INET
        s = socket_in(self.pod.netns_fd, fam, socket.SOCK_STREAM, mark=self.pod.cfg.mark)
        own: Addr | None = None
        try:
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if plain_ip(addr[0]) in self.pod.ips:
                s.bind((addr[0], 0))  # the port is known before the peer can accept
                own = (plain_ip(addr[0]), s.getsockname()[1])
                self._self_dials.add(own)
            await asyncio.get_running_loop().sock_connect(s, addr)
        except BaseException:
            if own is not None:
                self._self_dials.discard(own)
            s.close()
            raise
        return s

    def claim_self_dial(self, peer: Addr) -> bool:
        """Whether a client of 15008 from this pod's own IP is one of this proxy's tunnels
        (it is then claimed: each is accepted once). Anything else there is a process in
        the pod talking to the proxy's port directly."""
        key = (plain_ip(peer[0]), peer[1])
        if key in self._self_dials:
            self._self_dials.discard(key)
            return True
        return False

    async def outbound(self, client: socket.socket, src: Addr, target: Target,
                       conn_traffic: Traffic) -> tuple[str, str]:
        """Tunnel the app's connection to `target` (an HBONE workload). Returns an error
        text for the access log ("" on success) and the connection's response_flags; the
        client is reset on failure."""
        try:
            ids = [parse(i) for i in target.identities()]
            me = self.identity()
        except SpiffeError as exc:
            reset(client)
            return f"identity: {exc}", metrics.IDENTITY_ERROR
        host = target.service.hostname if target.service is not None else ""
        try:
            await self.client.proxy(client, me, ids, target.addr, conn_traffic, src_addr=src,
                                    host=host)
        except HboneError as exc:
            return (f"hbone {target.addr[0]}:{target.addr[1]}: {exc}",
                    _FLAGS.get(exc.kind, metrics.CONNECT))
        return "", metrics.NO_FLAGS

    # -- inbound (15008) -------------------------------------------------------------------

    async def tunnel(self, sock: socket.socket) -> None:
        try:
            me = self.identity()
        except SpiffeError as exc:
            log.warning("hbone_no_identity", uid=self.pod.uid, error=str(exc))
            reset(sock)
            return
        server = self._servers.get(me)
        if server is None:
            server = self._servers[me] = HboneServer(
                self.mesh.certs, me, self._authorize, self._dial_app,
                connect_timeout=self.pod.cfg.connect_timeout_seconds,
                on_open=self._opened, on_close=self._closed,
                refuse_target=self._refuse_target, may_log=self.pod.may_log,
                # One line per refused stream: the access log's when it is on (_closed).
                log_answers=not self.pod.cfg.access_log, slots=_PodSlots(self.pod))
        await server.serve(sock)

    def _refuse_target(self, src: Addr, dst: Addr) -> str | None:
        """A CONNECT naming one of the proxy's capture ports is refused (400) whatever its
        address: dialling it from inside the pod would reach this proxy again (the same
        loop as 127.0.0.1:15001 on the outbound side), never an app."""
        if dst[1] not in self.pod.capture_ports:
            return None
        why = self.pod.loop_reason(dst) or "capture_port"
        self.pod.refuse("inbound", "loop", src=src, dst=dst, detail=why)
        return f"{dst[0]}:{dst[1]} is a proxy port ({why})"

    def _authorize(self, peer: SpiffeId | None, src_ip: str, dst_ip: str,
                   dst_port: int) -> Decision:
        """Policy for one inbound connection to this pod. `peer` is None on plaintext
        inbound (15006): no principal, no namespace, as ztunnel's inbound passthrough."""
        dst = str(ipaddress.ip_address(dst_ip))
        if dst not in self.pod.ips:
            # CONNECT may only reach this pod: never a way into other addresses from here.
            return Decision(False, "destination_not_this_pod")
        return self.mesh.table.authorize(self.mesh.table.workload_by_ip(dst),
                                         self.pod.namespace, peer, src_ip, dst, dst_port)

    def authorize_plaintext(self, src: Addr, dst: Addr) -> Decision:
        """Policy for a plaintext connection captured on 15006 (redirected or handed over
        by eBPF sk_lookup): the same policies as HBONE, evaluated with the client's address
        and no identity, so identity-based fields never match. A denial is counted in
        the same counter as HBONE denials, with an empty source principal; the caller logs
        it, once (its access-log line, or `plaintext_denied` when the access log is off)."""
        try:
            decision = self._authorize(None, src[0], dst[0], dst[1])
        except Exception as exc:  # a policy bug must fail closed, and loudly
            log.exception("plaintext_authorize_failed", uid=self.pod.uid)
            decision = Decision(False, f"authorization_error: {type(exc).__name__}")
        if not decision.allowed:
            try:
                me = str(self.identity())
            except SpiffeError:
                me = ""  # a malformed identity must not turn a denial into an error
            hbone_metrics.AUTHZ_DENIED.labels("", me, decision.reason,
                                              decision.policy or "").inc()
        return decision

    async def _dial_app(self, src: Addr, dst: Addr) -> socket.socket:
        # As 15006 does: from the source pod's address, so the app sees the real client.
        return await self.pod._connect(dst, src if self.pod.cfg.preserve_source else None)

    def _labels(self, info: InboundStream) -> tuple[str, ...]:
        return self.pod.inbound_labels(info.src[0], info.dst, peer=str(info.peer),
                                       host=info.for_host, mtls=True)

    def _opened(self, info: InboundStream) -> None:
        metrics.CONNECTIONS.inc()
        info.stats = metrics.ConnMetrics(self._labels(info))
        self.pod.track(info)

    def _closed(self, info: InboundStream) -> None:
        if info.status == 200:
            metrics.CONNECTIONS.dec()
            if isinstance(info.stats, metrics.ConnMetrics):
                info.stats.close(info.traffic.b_to_a, info.traffic.a_to_b)
        elif info.status == 503 or (info.status == 401 and (
                info.decision is None or info.decision.reason != "destination_not_this_pod")):
            # As ztunnel: a stream denied by policy, or whose app could not be dialled, is a
            # connection opened and closed with DENY or CONNECT. A bad request (400, or a
            # CONNECT to an address not this pod's) never had the context to be counted.
            flags = metrics.DENY if info.status == 401 else metrics.CONNECT
            metrics.ConnMetrics(self._labels(info)).close(flags=flags)
        self.pod.untrack(info)
        suppressed = 0
        if info.error and self.pod.cfg.access_log:
            # Refused and failed streams come out of the pod's error-log budget.
            n = self.pod.may_log("connection")
            if n is None:
                return
            suppressed = n
        if self.pod.cfg.access_log:
            d = info.decision
            access.info("connection", direction="inbound", transport="hbone",
                        src=f"{info.src[0]}:{info.src[1]}", dst=f"{info.dst[0]}:{info.dst[1]}",
                        source_principal=str(info.peer), destination_principal=str(info.local),
                        dst_workload=self.pod.name, dst_namespace=self.pod.namespace,
                        status=info.status, policy=d.policy if d else None,
                        authz=d.reason if d else None, bytes_sent=info.traffic.b_to_a,
                        bytes_received=info.traffic.a_to_b,
                        duration_ms=round((time.time() - info.started) * 1e3, 1),
                        reset=info.traffic.reset, error=info.error or None,
                        **({"suppressed": suppressed} if suppressed else {}))

    async def close(self) -> None:
        await asyncio.gather(self.client.close(), *(s.close() for s in self._servers.values()),
                             return_exceptions=True)

