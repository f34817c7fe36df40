"""One pod, served by the node proxy: listeners inside its netns and its live connections.

Outbound (15001): the app's connection, redirected; we read where it was going and connect
there from inside the pod's netns, marked, so the source stays the pod's address.
Inbound (15006): a connection to the pod, redirected; we connect to the app in the pod, from
the client's own address (IP_TRANSPARENT; the connmark + table 100 rules bring the app's
replies back to us), so the app sees the real client. With the eBPF backend, inbound is not
redirected but handed to our listener by sk_lookup, so we register it (proxy/bpf.py).
Tunnel (15008): HBONE (mTLS + HTTP/2 CONNECT) from other node proxies, when the proxy has
the agent's mesh config channel (proxy/inpod/meshpath.py); refused without one. With the
channel, outbound connections to a service VIP go to an endpoint it picks, and to a mesh
(HBONE) workload through the tunnel; everything else is passed through as before.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import itertools
import os
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import structlog

from core import sysctl
from core.addr import plain_ip, unmap
from core.aio import cancel_and_wait
from core.netns import addresses, entered
from core.ports import TRANSPARENT_MARK
from core.spiffe import SpiffeError
from proxy import bpf, metrics
from proxy.config import ProxyConfig
from proxy.forward import Traffic, relay, reset
from proxy.inpod.dns import DnsProxy
from proxy.inpod.meshpath import PodMesh
from proxy.inpod.trafficpath import Plan, PodTraffic
from proxy.inpod.zds_client import WorkloadInfo
from proxy.limits import NodeLimits, Refused
from proxy.loopguard import capture_ports, loop_reason
from proxy.meshconfig.runtime import ProxyMesh
from proxy.meshconfig.table import NoEndpoint, Target
from proxy.origdst import original_dst
from proxy.sockets import listener_in, socket_in

log = structlog.get_logger("proxy")
access = structlog.get_logger("access")
IP_TRANSPARENT = 19
IPV6_TRANSPARENT = 75
_ids = itertools.count(1)


Lookup = Callable[[str], tuple[str, str]]  # ip -> (workload, namespace), "unknown" if not ours


@dataclass
class Conn:
    id: int
    direction: str
    src: tuple[str, int]
    dst: tuple[str, int]
    traffic: Traffic = field(default_factory=Traffic)
    started: float = field(default_factory=time.time)
    task: asyncio.Task[None] | None = None
    stats: metrics.ConnMetrics | None = None  # its istio_tcp_* series, once it has them

    def dump(self) -> dict[str, Any]:
        return {"id": self.id, "direction": self.direction, "src": f"{self.src[0]}:{self.src[1]}",
                "dst": f"{self.dst[0]}:{self.dst[1]}", "sent": self.traffic.a_to_b,
                "received": self.traffic.b_to_a, "age_s": round(time.time() - self.started, 1)}


def _addr(v: Any) -> Any:
    """A log field: an (ip, port) pair as "ip:port", anything else as it is."""
    if isinstance(v, tuple) and len(v) >= 2:
        return f"{v[0]}:{v[1]}"
    return v


class PodProxy:
    def __init__(self, uid: str, info: WorkloadInfo, netns_fd: int, cfg: ProxyConfig,
                 lookup: Lookup, mesh: ProxyMesh | None = None,
                 limits: NodeLimits | None = None) -> None:
        self.uid = uid
        self.name, self.namespace = info.name, info.namespace
        self.service_account = info.service_account
        self.netns_fd = netns_fd  # owned: closed by stop()
        self.netns_inode = os.fstat(netns_fd).st_ino
        self.cfg = cfg
        self.lookup = lookup
        self.ips: set[str] = set()
        self.listeners: dict[str, socket.socket] = {}
        self.conns: dict[int, Conn] = {}
        self._tasks: list[asyncio.Task[None]] = []
        self._handlers: set[asyncio.Task[None]] = set()
        self.dns: DnsProxy | None = None
        self.ebpf = False  # the inbound listener is registered with the eBPF backend
        self.started = time.time()
        self.meshpath = PodMesh(self, mesh) if mesh is not None else None
        # Traffic management (issue 16): VirtualService, DestinationRule, Sidecar egress.
        self.traffic = PodTraffic(self, self.meshpath, cfg.zero_copy) \
            if self.meshpath is not None else None
        self._tracked: dict[int, int] = {}  # id(inbound HBONE stream) -> Conn id
        # Shared by every pod of the process (the manager passes its own); a pod proxy made
        # alone (tests) gets a set of its own.
        self.limits = limits or NodeLimits.from_config(cfg)
        self.capture_ports = capture_ports(cfg.outbound_port, cfg.inbound_port,
                                           cfg.tunnel_port, cfg.dns_port)

    # -- lifecycle -------------------------------------------------------------------

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self.ips = await loop.run_in_executor(None, addresses, self.netns_fd)
        await loop.run_in_executor(None, self._allow_listener_handover)
        try:
            self.listeners["outbound"] = listener_in(self.netns_fd, self.cfg.outbound_port,
                                                     mark=self.cfg.mark)
            self.listeners["inbound"] = listener_in(self.netns_fd, self.cfg.inbound_port,
                                                    mark=self.cfg.mark)
            self.listeners["tunnel"] = listener_in(self.netns_fd, self.cfg.tunnel_port,
                                                   mark=self.cfg.mark)
            if self.cfg.dns_capture:
                await self._start_dns()
            if await loop.run_in_executor(None, bpf.register_inbound, self.cfg.bpf_pins(),
                                          self.listeners["inbound"]):
                self.ebpf = True
        except BaseException:
            self._close_listeners()
            raise
        for name, handler in (("outbound", self._outbound), ("inbound", self._inbound),
                              ("tunnel", self._tunnel)):
            self._tasks.append(asyncio.create_task(self._accept(self.listeners[name], handler,
                                                                name)))
        self._tasks.append(asyncio.create_task(self._idle_sweeper()))
        metrics.PODS_STARTED.inc()
        log.info("pod_proxy_started", uid=self.uid, pod=f"{self.namespace}/{self.name}",
                 ips=sorted(self.ips), netns_inode=self.netns_inode)

    def _allow_listener_handover(self) -> None:
        """tcp_migrate_req: when a proxy closes its listener during an upgrade, connections
        waiting in its accept queue move to the new proxy's SO_REUSEPORT listener instead
        of being reset. It is per netns, so it is set in the pod's."""
        with entered(self.netns_fd), contextlib.suppress(OSError):
            sysctl.write("net.ipv4.tcp_migrate_req", "1")

    async def _start_dns(self) -> None:
        udp = listener_in(self.netns_fd, self.cfg.dns_port, socket.SOCK_DGRAM, mark=self.cfg.mark)
        self.listeners["dns-udp"] = udp
        tcp = listener_in(self.netns_fd, self.cfg.dns_port, mark=self.cfg.mark)
        self.listeners["dns-tcp"] = tcp
        self.dns = DnsProxy(self.netns_fd, udp, tcp, mark=self.cfg.mark,
                            fallback=self.cfg.dns_fallback_addresses(), name=self.name,
                            bpf_pin_dir=self.cfg.bpf_pins(), refuse=self._dns_loop,
                            lookup=self.traffic.dns_lookup if self.traffic else None)
        await self.dns.start()

    def _dns_loop(self, upstream: tuple[str, int]) -> bool:
        why = self.loop_reason(upstream)
        if why is not None:
            self.refuse("dns", "loop", dst=upstream, detail=why)
        return why is not None

    def _close_listeners(self) -> None:
        for s in self.listeners.values():
            s.close()
        self.listeners.clear()

    async def stop_accepting(self) -> None:
        """Close the listeners (queued connections migrate to a newer proxy, if any)."""
        await cancel_and_wait(self._tasks)
        self._tasks.clear()
        if self.dns is not None:
            await self.dns.stop()
            self.dns = None
        self._close_listeners()

    async def stop(self, grace: float = 0.0) -> None:
        """Stop accepting; give live connections `grace` seconds, then end them."""
        await self.stop_accepting()
        deadline = time.monotonic() + grace
        while self.conns and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        await cancel_and_wait(self._handlers)
        if self.meshpath is not None:
            await self.meshpath.close()
        if self.netns_fd >= 0:
            os.close(self.netns_fd)
            self.netns_fd = -1
        metrics.PODS_STOPPED.inc()
        log.info("pod_proxy_stopped", uid=self.uid, pod=f"{self.namespace}/{self.name}")

    # -- connections -----------------------------------------------------------------

    async def _accept(self, listener: socket.socket,
                      handler: Callable[[socket.socket], Any], direction: str) -> None:
        loop = asyncio.get_running_loop()
        while True:
            try:
                sock, peer = await loop.sock_accept(listener)
            except OSError as exc:
                if (n := self.may_log("accept_failed")) is not None:
                    log.warning("accept_failed", uid=self.uid, error=str(exc), suppressed=n)
                await asyncio.sleep(0.05)
                continue
            if direction == "tunnel" and (why := self._local_tunnel_client(peer)):
                # HBONE comes from other pods, or from this proxy tunnelling the pod to
                # itself; anything else local is a process talking to the proxy's own port.
                self.refuse(direction, "loop", sock, src=peer[:2], detail=why)
                continue
            # The pod's share of the process, and the process's cap, before any work: past
            # them the client gets a reset at once (as Envoy's max connections does).
            denied = self.limits.connections.acquire(self.uid)
            if denied is not None:
                self.refuse(direction, denied, sock, src=peer)
                continue
            sock.setblocking(False)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            task = asyncio.create_task(self._serve(handler, sock))
            self._handlers.add(task)  # the loop keeps only weak references to tasks
            task.add_done_callback(self._served)

    def _local_tunnel_client(self, peer: tuple[str, int]) -> str | None:
        ip = unmap(ipaddress.ip_address(peer[0]))
        if ip.is_loopback:
            return "loopback_client"
        if str(ip) in self.ips and not (self.meshpath is not None
                                        and self.meshpath.claim_self_dial(peer[:2])):
            return "pod_ip_client"
        return None

    def _served(self, task: asyncio.Task[None]) -> None:
        self._handlers.discard(task)
        self.limits.connections.release(self.uid)

    # -- refusals and the error-log budget ---------------------------------------------

    def loop_reason(self, dst: tuple[str, int]) -> str | None:
        """Why dialling `dst` from this pod would reach the proxy's own listeners, or None."""
        return loop_reason(dst, self.ips, self.capture_ports)

    def may_log(self, event: str) -> int | None:
        """Whether this pod may log one more `event` error line now: None when over its
        budget (the line is dropped and counted), else how many were dropped before it."""
        n = self.limits.error_log.take((self.uid, event))
        if n is None:
            metrics.LOG_SUPPRESSED.labels(event).inc()
        return n

    def refuse(self, direction: str, reason: str, sock: socket.socket | None = None,
               **fields: Any) -> None:
        """Count (and, within the budget, log) one connection refused before any dial;
        reset the client's socket if given."""
        if sock is not None:
            reset(sock)
        metrics.REFUSED.labels(direction, reason).inc()
        if (n := self.may_log("connection_refused")) is not None:
            log.warning("connection_refused", uid=self.uid, pod=f"{self.namespace}/{self.name}",
                        direction=direction, reason=reason, suppressed=n,
                        **{k: _addr(v) for k, v in fields.items()})

    async def _serve(self, handler: Callable[[socket.socket], Any],
                     sock: socket.socket) -> None:
        """Run one connection's handler; whatever goes wrong, the client is never left
        hanging on a socket nobody serves (e.g. original_dst after the client vanished)."""
        try:
            await handler(sock)
        except asyncio.CancelledError:
            reset(sock)
            raise
        except Exception as exc:
            if (n := self.may_log("connection_failed")) is not None:
                log.warning("connection_failed", uid=self.uid,
                            error=f"{type(exc).__name__}: {exc}", suppressed=n)
            reset(sock)

    async def _outbound(self, client: socket.socket) -> None:
        dst = original_dst(client)
        peer = client.getpeername()[:2]
        src = (self._pod_address(plain_ip(peer[0])), peer[1])
        why = self.loop_reason(dst)
        if why is not None:
            # The app asked for one of our own listeners (127.0.0.1:15001, its own IP on a
            # capture port...): dialling it would loop through this proxy for ever. Refused
            # before routing, so no HBONE stream is spent on it either.
            self.refuse("outbound", "loop", client, src=src, dst=dst, detail=why)
            return
        if self.meshpath is not None:
            plan = await self.traffic.plan(client, src, dst) if self.traffic else None
            if plan is not None:
                await self._outbound_routed(client, src, dst, plan)
                return
            try:
                target = self.meshpath.mesh.table.route(dst, self.meshpath.workload())
            except NoEndpoint as exc:
                log.warning("no_endpoint", uid=self.uid, dst=f"{dst[0]}:{dst[1]}",
                            error=str(exc))
                reset(client)  # as a connection to a dead address would look
                return
            if target.hbone:
                await self._outbound_hbone(client, src, dst, target)
                return
            # A plain endpoint of a service, or dst unchanged.
            await self._proxy(client, "outbound", src, target.addr, transparent=False,
                              target=target)
            return
        await self._proxy(client, "outbound", src, dst, transparent=False)

    def _pod_address(self, ip: str) -> str:
        """The app's address as the pod knows it. The eBPF backend sends connect() to the
        proxy on loopback, so the app's socket is bound to 127.0.0.1 (or ::1) there, where
        REDIRECT keeps the pod's own address; logs and metrics want the latter."""
        if not ipaddress.ip_address(ip).is_loopback or not self.ips:
            return ip
        v6 = ":" in ip
        same = sorted(a for a in self.ips if (":" in a) == v6
                      and not ipaddress.ip_address(a).is_loopback
                      and not ipaddress.ip_address(a).is_link_local)
        return same[0] if same else ip

    async def _outbound_hbone(self, client: socket.socket, src: tuple[str, int],
                              orig: tuple[str, int], target: Target) -> None:
        assert self.meshpath is not None
        conn = Conn(next(_ids), "outbound", src, target.addr)
        conn.task = asyncio.current_task()
        conn.stats = metrics.ConnMetrics(self.outbound_labels(target.addr[0], target,
                                                              mtls=True))
        self.conns[conn.id] = conn
        metrics.CONNECTIONS.inc()
        me = self.meshpath.workload()
        error, flags = "", metrics.NO_FLAGS
        try:
            error, flags = await self.meshpath.outbound(client, src, target, conn.traffic)
        finally:
            w = target.workload
            self._closed(conn, error, flags, transport="hbone",
                         original_dst=f"{orig[0]}:{orig[1]}",
                         service=target.service.key if target.service else None,
                         source_principal=me.spiffe_id if me else None,
                         destination_principal=w.spiffe_id if w else None)

    async def _outbound_routed(self, client: socket.socket, src: tuple[str, int],
                               dst: tuple[str, int], plan: Plan) -> None:
        """A connection traffic management routes (proxy/inpod/trafficpath.py): a pool
        slot, connect with retries, relay, and the end told to outlier detection."""
        assert self.traffic is not None
        conn = Conn(next(_ids), "outbound", src, dst)
        conn.task = asyncio.current_task()
        self.conns[conn.id] = conn
        metrics.CONNECTIONS.inc()
        opened = None
        try:
            got = await self.traffic.open(plan, client, src, conn)
            if got is not None:
                up, opened = got
                plan.log["transport"] = "hbone" if up.target.hbone else "tcp"
                await up.relay(client, conn.traffic, self.cfg.zero_copy)
        finally:
            self.traffic.closed(opened, conn.traffic)
            self._closed(conn, plan.error, plan.flags, **plan.log)

    async def _inbound(self, client: socket.socket) -> None:
        dst = original_dst(client)
        peer = client.getpeername()[:2]
        src = (plain_ip(peer[0]), peer[1])
        decided: dict[str, Any] = {}
        if self.meshpath is not None:
            # Plaintext inbound obeys the same policies as HBONE (so does ztunnel): without
            # it a client outside the mesh would bypass every policy. No mesh config: no
            # policies, nothing to decide.
            d = self.meshpath.authorize_plaintext(src, dst)
            decided = {"policy": d.policy, "authz": d.reason}
            if not d.allowed:
                reset(client)  # as ztunnel: closed before the app is ever dialled
                # A client outside the mesh can repeat denials at will: an error line, so
                # within the pod's error-log budget, as _closed does.
                n = self.may_log("connection")
                if n:
                    decided["suppressed"] = n
                # Counted as ztunnel counts a denied connection: opened, then closed DENY.
                metrics.ConnMetrics(self.inbound_labels(src[0], dst)).close(
                    flags=metrics.DENY)
                # One line per denial: the access log's, or a warning when that is off.
                if n is None:
                    return
                if self.cfg.access_log:
                    access.info("connection", direction="inbound",
                                src=f"{src[0]}:{src[1]}", dst=f"{dst[0]}:{dst[1]}", **decided,
                                **self._who("inbound", src[0], dst[0]), bytes_sent=0,
                                bytes_received=0, duration_ms=0.0, reset=True,
                                error=f"denied: {d.reason}")
                else:
                    log.warning("plaintext_denied", uid=self.uid, src=f"{src[0]}:{src[1]}",
                                dst=f"{dst[0]}:{dst[1]}", **decided)
                return
        await self._proxy(client, "inbound", src, dst, transparent=self.cfg.preserve_source,
                          **decided)

    async def _tunnel(self, client: socket.socket) -> None:
        if self.meshpath is None:
            reset(client)  # no mesh config: nobody to terminate mTLS for
            return
        await self.meshpath.tunnel(client)

    def track(self, stream: Any) -> None:
        """An inbound HBONE stream relaying to the app: in the conns table for the idle
        sweep (cancelling its task resets both sides) and config_dump."""
        conn = Conn(next(_ids), "inbound", stream.src, stream.dst, traffic=stream.traffic,
                    task=stream.task, stats=stream.stats)
        self.conns[conn.id] = conn
        self._tracked[id(stream)] = conn.id

    def untrack(self, stream: Any) -> None:
        cid = self._tracked.pop(id(stream), None)
        if cid is not None:
            self.conns.pop(cid, None)

    async def _proxy(self, client: socket.socket, direction: str, src: tuple[str, int],
                     dst: tuple[str, int], transparent: bool, target: Target | None = None,
                     **log: Any) -> None:
        """Relay one plaintext connection; `target`: where the mesh table routed an outbound
        one (its workload and service name the destination in the metrics)."""
        conn = Conn(next(_ids), direction, src, dst)
        conn.task = asyncio.current_task()
        labels: tuple[str, ...] | None = (
            self.outbound_labels(dst[0], target) if direction == "outbound"
            else self.inbound_labels(src[0], dst))
        self.conns[conn.id] = conn
        metrics.CONNECTIONS.inc()
        error, flags = "", metrics.NO_FLAGS
        try:
            upstream = await self._connect(dst, src if transparent else None,
                                           direction=direction)
        except (OSError, TimeoutError) as exc:
            error = f"connect {dst[0]}:{dst[1]}: {exc.strerror or exc}" \
                if isinstance(exc, OSError) else f"connect {dst[0]}:{dst[1]}: timeout"
            reset(client)  # the app sees a refused/reset connection, as it would directly
            upstream = None
            flags = metrics.CONNECT
            if isinstance(exc, Refused):
                labels = None  # refused by the proxy itself (loop, limits): counted there
        if labels is not None:
            conn.stats = metrics.ConnMetrics(labels)
        try:
            if upstream is not None:
                await relay(client, upstream, conn.traffic, zero_copy=self.cfg.zero_copy)
        finally:
            self._closed(conn, error, flags, **log)  # log: e.g. inbound's policy decision

    def _closed(self, conn: Conn, error: str, flags: str = metrics.NO_FLAGS,
                **log: Any) -> None:
        """A proxied connection ended: out of the table, its metrics (`flags`: the
        response_flags of a failed one), its access-log line (`log`: what only some paths
        know, such as the tunnel's principals)."""
        self.conns.pop(conn.id, None)
        metrics.CONNECTIONS.dec()
        if conn.stats is not None:
            conn.stats.close(conn.traffic.b_to_a, conn.traffic.a_to_b, flags)
        if not self.cfg.access_log:
            return
        if error:
            # A failing client can end thousands of connections a second: its error lines
            # come out of the pod's budget; what is dropped is counted, and the next line
            # says how many.
            n = self.may_log("connection")
            if n is None:
                return
            if n:
                log["suppressed"] = n
        access.info("connection", direction=conn.direction,
                    src=f"{conn.src[0]}:{conn.src[1]}", dst=f"{conn.dst[0]}:{conn.dst[1]}",
                    **log, **self._who(conn.direction, conn.src[0], conn.dst[0]),
                    bytes_sent=conn.traffic.a_to_b, bytes_received=conn.traffic.b_to_a,
                    duration_ms=round((time.time() - conn.started) * 1e3, 1),
                    reset=conn.traffic.reset, error=error or None)

    async def _connect(self, dst: tuple[str, int], as_src: tuple[str, int] | None, *,
                       direction: str = "inbound") -> socket.socket:
        """Every upstream dial of this pod (outbound, 15006 inbound, the app behind an HBONE
        stream). Raises Refused, before any socket is made, when `dst` is one of the proxy's
        own listeners (a loop) or the pod or process has too many dials in flight."""
        why = self.loop_reason(dst)
        if why is not None:
            self.refuse(direction, "loop", src=as_src, dst=dst, detail=why)
            raise Refused("loop", f"{dst[0]}:{dst[1]} is the proxy's own listener ({why})")
        denied = self.limits.pending_connects.acquire(self.uid)
        if denied is not None:
            reason = denied.replace("_limit", "_pending_limit")
            self.refuse(direction, reason, src=as_src, dst=dst)
            raise Refused(reason, f"too many connects in flight ({reason})")
        metrics.PENDING_CONNECTS.inc()
        try:
            return await self._dial(dst, as_src)
        finally:
            metrics.PENDING_CONNECTS.dec()
            self.limits.pending_connects.release(self.uid)

    async def _dial(self, dst: tuple[str, int], as_src: tuple[str, int] | None
                    ) -> socket.socket:
        fam = socket.AF_INET6 if ":" in dst[0] else socket.AF_INET
        spoof = as_src is not None and as_src[0] not in self.ips
        # TRANSPARENT_MARK: how the eBPF backend routes the app's replies back to us.
        mark = self.cfg.mark | (TRANSPARENT_MARK if spoof else 0)
        up = socket_in(self.netns_fd, fam, socket.SOCK_STREAM, mark=mark)
        try:
            if spoof and as_src is not None:
                up.setsockopt(socket.SOL_IP if fam == socket.AF_INET else socket.IPPROTO_IPV6,
                              IP_TRANSPARENT if fam == socket.AF_INET else IPV6_TRANSPARENT, 1)
                up.bind((as_src[0], 0))
            up.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            await asyncio.wait_for(asyncio.get_running_loop().sock_connect(up, dst),
                                   self.cfg.connect_timeout_seconds)
        except BaseException:
            up.close()
            raise
        return up

    # -- telemetry: who is on each side (proxy/metrics.py has the label rules) ------------

    def _who(self, direction: str, src_ip: str, dst_ip: str) -> dict[str, str]:
        """The access log's names of both sides: the pods' own names (as ztunnel logs them),
        not the workload names of the metrics."""
        me = (self.name, self.namespace)
        src, dst = (me, self.lookup(dst_ip)) if direction == "outbound" \
            else (self.lookup(src_ip), me)
        return {"src_workload": src[0], "src_namespace": src[1], "dst_workload": dst[0],
                "dst_namespace": dst[1]}

    def me(self) -> metrics.Party:
        """This pod's side: its mesh workload; without a mesh config channel, its pod name
        and namespace from ZDS (nothing else is known)."""
        if self.meshpath is None:
            return metrics.pod_party(self.name, self.namespace)
        w = self.meshpath.workload()
        return metrics.party(w) if w is not None else metrics.Party(namespace=self.namespace)

    def party_at(self, ip: str) -> metrics.Party:
        """The side of the peer at `ip`: its mesh workload; without a mesh config channel, a
        pod of this node by its name; else unknown."""
        if self.meshpath is not None:
            return metrics.party(self.meshpath.mesh.table.workload_by_ip(ip))
        name, namespace = self.lookup(ip)
        return metrics.pod_party(name, namespace)

    def outbound_labels(self, dst_ip: str, target: Target | None = None, *,
                        mtls: bool = False) -> tuple[str, ...]:
        """Reporter source: this pod to `target` (the mesh table's pick: its workload and
        the service the app addressed), or to whatever holds `dst_ip`. Over HBONE (`mtls`)
        the source principal is the identity this pod presents."""
        if self.meshpath is not None:
            dest = metrics.party(target.workload if target is not None else None)
        else:
            dest = self.party_at(dst_ip)
        principal = ""
        if mtls and self.meshpath is not None:
            try:
                principal = str(self.meshpath.identity())
            except SpiffeError:
                principal = ""
        return metrics.traffic_labels(metrics.REPORTER_SOURCE, self.me(), dest,
                                      target.service if target is not None else None,
                                      source_principal=principal, mtls=mtls)

    def inbound_labels(self, src_ip: str, dst: tuple[str, int], *, peer: str = "",
                       host: str = "", mtls: bool = False) -> tuple[str, ...]:
        """Reporter destination: the client at `src_ip` to this pod's `dst`. `peer`: the
        client's SPIFFE ID proven by mTLS; `host`: the service it named (HBONE's
        `Forwarded: host=`)."""
        service = None
        if self.meshpath is not None:
            table = self.meshpath.mesh.table
            w = table.workload_by_ip(dst[0]) or self.meshpath.workload()
            dest = metrics.party(w) if w is not None else metrics.Party(
                namespace=self.namespace)
            service = metrics.inbound_service(table.services, w, dst[1], host)
        else:
            dest = self.me()
        return metrics.traffic_labels(metrics.REPORTER_DESTINATION, self.party_at(src_ip),
                                      dest, service, source_principal=peer, mtls=mtls)

    async def _idle_sweeper(self) -> None:
        idle = self.cfg.idle_timeout_seconds
        while True:
            await asyncio.sleep(min(max(idle / 4, 0.05), 5.0))
            now = time.monotonic()
            for c in list(self.conns.values()):
                if c.stats is not None:  # bytes reach the counters while connections live
                    c.stats.flush(c.traffic.b_to_a, c.traffic.a_to_b)
                if c.traffic.idle_for(now) > idle and c.task is not None:
                    c.task.cancel()  # relay resets both sides

    def dump(self) -> dict[str, Any]:
        return {"uid": self.uid, "name": self.name, "namespace": self.namespace,
                "service_account": self.service_account, "ips": sorted(self.ips),
                "netns_inode": self.netns_inode, "ebpf_inbound": self.ebpf,
                "listeners": {k: v.getsockname()[1] for k, v in self.listeners.items()},
                "connections": [c.dump() for c in self.conns.values()],
                "dns": self.dns.config_dump() if self.dns is not None else None,
                "identity": str(self.meshpath.identity()) if self.meshpath else None,
                "hbone_pool": self.meshpath.client.dump() if self.meshpath else None}
