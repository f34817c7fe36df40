"""One pod's mesh data path: outbound through HBONE to mesh workloads, inbound HBONE on
15008 with L4 authorization. Used by PodProxy only when the proxy has a mesh config
channel (proxy/meshconfig); without one the pod proxy behaves exactly as before.

The pod's identity is looked up in the mesh table by the pod's IPs (the ZDS hand-off
carries no service account worth trusting), and re-read per connection, so a workload
update or a certificate rotation applies to the next connection without a restart.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
import time
from typing import TYPE_CHECKING

import structlog

from proxy import metrics
from proxy.authz import Decision
from proxy.forward import Traffic, reset
from proxy.hbone.client import HboneClient, HboneError
from proxy.hbone.server import HboneServer, InboundStream
from proxy.identity.spiffe import SpiffeError, SpiffeId, parse
from proxy.inpod.sockets import socket_in
from proxy.meshconfig.runtime import ProxyMesh
from proxy.meshconfig.table import MeshWorkload, Target

if TYPE_CHECKING:
    from proxy.inpod.workload import PodProxy

log = structlog.get_logger("proxy")
access = structlog.get_logger("access")
Addr = tuple[str, int]


class PodMesh:
    def __init__(self, pod: PodProxy, mesh: ProxyMesh) -> None:
        self.pod = pod
        self.mesh = mesh
        self.client = HboneClient(mesh.certs, self._dial_tunnel,
                                  connect_timeout=pod.cfg.connect_timeout_seconds)
        self._servers: dict[SpiffeId, HboneServer] = {}

    # -- who this pod is ----------------------------------------------------------------

    def workload(self) -> MeshWorkload | None:
        return self.mesh.table.first_workload(self.pod.ips)

    def identity(self) -> SpiffeId:
        w = self.workload()
        if w is not None:
            return parse(w.identity)
        td = self.mesh.table.trust_domain
        return parse(f"spiffe://{td}/ns/{self.pod.namespace}/sa/{self.pod.service_account}")

    # -- outbound -------------------------------------------------------------------------

    async def _dial_tunnel(self, addr: Addr) -> socket.socket:
        # From inside the source pod's netns, marked: the tunnel leaves with the pod's own
        # address and is not captured again by its rules.
        fam = socket.AF_INET6 if ":" in addr[0] else socket.AF_INET
        s = socket_in(self.pod.netns_fd, fam, socket.SOCK_STREAM, mark=self.pod.cfg.mark)
        try:
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            await asyncio.get_running_loop().sock_connect(s, addr)
        except BaseException:
            s.close()
            raise
        return s

    async def outbound(self, client: socket.socket, src: Addr, target: Target,
                       conn_traffic: Traffic) -> str:
        """Tunnel the app's connection to `target` (an HBONE workload). Returns an error
        text for the access log ("" on success); the client is reset on failure."""
        try:
            ids = [parse(i) for i in target.identities()]
            me = self.identity()
        except SpiffeError as exc:
            reset(client)
            return f"identity: {exc}"
        try:
            await self.client.proxy(client, me, ids, target.addr, conn_traffic, src_addr=src)
        except HboneError as exc:
            return f"hbone {target.addr[0]}:{target.addr[1]}: {exc}"
        return ""

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
                on_open=self._opened, on_close=self._closed)
        await server.serve(sock)

    def _authorize(self, peer: SpiffeId, src_ip: str, dst_ip: str, dst_port: int) -> Decision:
        dst = str(ipaddress.ip_address(dst_ip))
        if dst not in self.pod.ips:
            # CONNECT may only reach this pod: never a way into other addresses from here.
            return Decision(False, "destination_not_this_pod")
        return self.mesh.table.authorize(self.mesh.table.workload_by_ip(dst),
                                         self.pod.namespace, peer, src_ip, dst, dst_port)

    async def _dial_app(self, src: Addr, dst: Addr) -> socket.socket:
        # As 15006 does: from the source pod's address, so the app sees the real client.
        return await self.pod._connect(dst, src if self.pod.cfg.preserve_source else None)

    def _opened(self, info: InboundStream) -> None:
        metrics.CONNECTIONS.inc()
        labels = self.pod._labels("inbound", info.src[0], info.dst[0])
        metrics.OPENED.labels(*labels).inc()
        self.pod.track(info)

    def _closed(self, info: InboundStream) -> None:
        if info.status == 200:
            metrics.CONNECTIONS.dec()
            labels = self.pod._labels("inbound", info.src[0], info.dst[0])
            metrics.CLOSED.labels(*labels).inc()
            metrics.SENT.labels(*labels).inc(info.traffic.b_to_a)
            metrics.RECEIVED.labels(*labels).inc(info.traffic.a_to_b)
        self.pod.untrack(info)
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
                        reset=info.traffic.reset, error=info.error or None)

    async def close(self) -> None:
        await asyncio.gather(self.client.close(), *(s.close() for s in self._servers.values()),
                             return_exceptions=True)

