"""The per-pod DNS proxy: whatever the pod sends to port 53 lands on 15053 in its netns.

The pod's redirect rules REDIRECT its UDP and TCP port-53 traffic to 15053, except traffic
carrying the proxy mark. This proxy forwards each query to the resolver the pod actually
asked (its original destination), from inside the pod's netns with the mark set so the
rules let it out, and relays the answer back. A query for a name of the mesh (a service's
host name, e.g. a ServiceEntry host) is answered locally with the service's addresses when
the pod proxy gives a lookup (proxy/inpod/dnsanswer.py), as Istio's DNS proxying does, over
UDP and over TCP (proxy/inpod/dnstcp.py reads TCP message by message); without a lookup a
TCP connection is relayed byte for byte.

Original destination:
- TCP: the accepted socket answers SO_ORIGINAL_DST (`proxy.origdst.original_dst`).
- UDP: SO_ORIGINAL_DST is refused for UDP (ENOPROTOOPT) and IP_RECVORIGDSTADDR reports the
  post-NAT address, so we ask conntrack inside the pod's netns: the REDIRECT is a DNAT,
  and the flow's original tuple (UDP, client addr, client port) names the resolver.
  With the eBPF backend there is no NAT: its `cookie_origin` map names the resolver
  (`proxy.bpf.dns_origin`), and its recvmsg hook shows the answer as coming from it.

The answer to a UDP client must leave from the address the query was delivered to (the
REDIRECT target, 127.0.0.1 or ::1), or conntrack will not match it to the client's flow
and will not rewrite its source back to the resolver's address. So we read that address
with IPV6_PKTINFO/IP_PKTINFO and reply with it as the source.

Never block the event loop: setns, conntrack and socket creation run on worker threads.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import ipaddress
import os
import socket
import struct
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any, TypeVar

import structlog
from prometheus_client import Counter

from core.addr import plain_ip
from core.aio import cancel_and_wait
from core.netns import entered
from core.ports import PROXY_MARK
from proxy import bpf
from proxy.inpod import dnsanswer, dnstcp
from proxy.origdst import original_dst
from proxy.sockets import socket_in

log = structlog.get_logger(__name__)

T = TypeVar("T")
Upstream = tuple[str, int]

IP_PKTINFO = 8  # linux/in.h; the socket module does not export it
_MAX_UDP = 65535
_CMSG_SPACE = socket.CMSG_SPACE(32)  # room for either in6_pktinfo or in_pktinfo
_TCP_READ = 65535
# Conntrack reports the entry's remaining life; never trust a cached answer for longer
# than this even if the entry claims more (a stream flow may be given 120s+).
_CACHE_MAX_S = 120.0
_CACHE_SWEEP_AT = 4096
_MAX_INFLIGHT = 1024  # queries (UDP and TCP) being served at once, per pod

_QUERIES = Counter("meshnode_proxy_dns_queries_total",
                   "DNS queries (UDP datagrams, TCP connections) received on 15053", ["proto"])
_ANSWERED = Counter("meshnode_proxy_dns_answered_total",
                    "DNS queries relayed back to the client", ["proto"])
_FAILED = Counter("meshnode_proxy_dns_failed_total",
                  "DNS queries dropped: no upstream, unreachable or timed out", ["proto"])
_LOCAL = Counter("meshnode_proxy_dns_local_answers_total",
                 "DNS queries for a mesh name (a service host) answered by the proxy itself")


@dataclass
class DnsCounters:
    """Per-pod counts. For TCP, one connection counts as one query, answered if the client
    got any answer on it."""

    queries: int = 0
    answered: int = 0
    failed: int = 0


def _family_of(host: str) -> int:
    return socket.AF_INET6 if ipaddress.ip_address(host).version == 6 else socket.AF_INET


def _unmap(host: str) -> str:
    """'::ffff:1.2.3.4' -> '1.2.3.4' (a dual-stack socket reports v4 peers v4-mapped, but
    conntrack and upstream sockets want the real family), without a '%scope'."""
    return plain_ip(host.split("%", 1)[0])


def _addr_text(raw: bytes | None) -> str | None:
    """Packed pktinfo address (16 or 4 bytes) as text, v4-mapped ones as plain v4."""
    if raw is None:
        return None
    return _unmap(str(ipaddress.ip_address(raw)))


def conntrack_original_dst(netns_fd: int, client: str, client_port: int, local_port: int,
                           local_addr: str | None = None) -> tuple[Upstream, float] | None:
    """The destination a redirected UDP flow was first sent to, and how long conntrack will
    keep the flow (seconds), or None. Blocking: call it on a worker thread.

    With the address the query was delivered to (`local_addr`, the REDIRECT target) we know
    the flow's whole reply tuple and ask for that one entry: a hash lookup, ~1 ms. Without
    it, or if that misses, we dump entries filtered on the original tuple (UDP, client
    address and port); the kernel walks the whole, all-netns conntrack table for that
    (~10 ms on a quiet host), so it is only the fallback.

    The whole netlink exchange happens inside `entered`: pyroute2 opens its socket lazily,
    and a netlink socket reads the conntrack table of the netns it was created in. pyroute2
    runs a private asyncio loop on this thread, so uvloop must not be the global policy
    (uvloop cannot open AF_NETLINK sockets; see cli/agent_cmd.py).
    """
    # Here, for start-up time: pyroute2's conntrack modules add ~0.1 s to the proxy's start,
    # and only UDP DNS of pods captured by a netfilter backend ever needs them.
    from pyroute2.conntrack import Conntrack
    from pyroute2.netlink.exceptions import NetlinkError
    from pyroute2.netlink.nfnetlink.nfctsocket import NFCTAttrTuple

    fam = _family_of(client)
    udp = socket.IPPROTO_UDP
    try:
        with entered(netns_fd), Conntrack(nfgen_family=fam) as ct:
            if local_addr is not None and _family_of(local_addr) == fam:
                try:
                    msg = ct.entry("get", tuple_reply=NFCTAttrTuple(
                        family=fam, saddr=local_addr, daddr=client, proto=udp,
                        sport=local_port, dport=client_port))
                except NetlinkError as exc:
                    if exc.code != errno.ENOENT:
                        raise
                    msg = None
                if msg is not None:
                    orig = NFCTAttrTuple.from_netlink(fam, msg.get_attr("CTA_TUPLE_ORIG"))
                    if orig.daddr is not None and orig.dport is not None:
                        return ((str(orig.daddr), int(orig.dport)),
                                float(msg.get_attr("CTA_TIMEOUT") or 0))
            want = NFCTAttrTuple(family=fam, saddr=client, proto=udp, sport=client_port)
            entries = list(ct.dump_entries(tuple_orig=want))
    except NetlinkError as exc:  # not an OSError; callers should only need to catch one
        raise OSError(exc.code, f"conntrack: {exc}") from exc
    for e in entries:
        # The redirected flow is the one whose reply comes from our listener; anything
        # else from the same source (say the proxy's own zone-1 flows) is not it.
        if e.tuple_reply.sport != local_port or e.tuple_reply.dport != client_port:
            continue
        if e.tuple_orig.dport is None or e.tuple_orig.daddr is None:
            continue
        return (str(e.tuple_orig.daddr), int(e.tuple_orig.dport)), float(e.timeout or 0)
    return None


def _close_socket_result(fut: asyncio.Future[Any]) -> None:
    # A worker made a socket for a task that was cancelled meanwhile: nobody else will.
    if fut.cancelled() or fut.exception() is not None:
        return
    res = fut.result()
    if isinstance(res, socket.socket):
        res.close()


class DnsProxy:
    """The DNS proxy of one pod, serving the UDP socket and TCP listener on 15053."""

    def __init__(self, netns_fd: int, udp_sock: socket.socket, tcp_listener: socket.socket,
                 mark: int = PROXY_MARK, fallback: Sequence[Upstream] = (),
                 timeout: float = 5.0, name: str = "", bpf_pin_dir: str = "",
                 refuse: Callable[[Upstream], bool] | None = None,
                 lookup: dnsanswer.Lookup | None = None) -> None:
        # Our own reference: the caller may close its fd while we still make sockets there.
        self._netns_fd = os.dup(netns_fd)
        self._udp = udp_sock
        self._tcp = tcp_listener
        self._mark = mark
        self._fallback = tuple(fallback)
        self._timeout = timeout
        self._bpf_pin_dir = bpf_pin_dir
        # The pod proxy's loop guard: True for an upstream that is one of the proxy's own
        # listeners (a query sent straight to 127.0.0.1:15053 names 15053 itself as its
        # resolver, and asking it would loop); it counts and logs the refusal.
        self._refuse = refuse or (lambda _up: False)
        # The mesh's names (service host -> its VIPs), or None: relay every query.
        self._lookup = lookup
        self.local_answers = 0
        self.name = name or f"netns-inode:{os.fstat(self._netns_fd).st_ino}"
        self._local_port = int(udp_sock.getsockname()[1])
        self.udp = DnsCounters()
        self.tcp = DnsCounters()
        self._cache: dict[tuple[str, int], tuple[Upstream, float]] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._inflight: set[asyncio.Future[Any]] = set()
        self._accept_task: asyncio.Task[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._reading = False
        self._closed = False
        self._log = log.bind(pod=self.name)

    # ---- lifecycle -------------------------------------------------------------------

    async def start(self) -> None:
        if self._closed:
            raise RuntimeError("DnsProxy already stopped")
        self._loop = asyncio.get_running_loop()
        # Ask for the local address each datagram was delivered to (the REDIRECT target),
        # the only source conntrack will map back to the resolver's address.
        if self._udp.family == socket.AF_INET6:
            self._udp.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_RECVPKTINFO, 1)
        else:
            self._udp.setsockopt(socket.IPPROTO_IP, IP_PKTINFO, 1)
        self._udp.setblocking(False)
        self._tcp.setblocking(False)
        self._loop.add_reader(self._udp.fileno(), self._on_udp_readable)
        self._reading = True
        self._accept_task = asyncio.create_task(self._accept_loop(), name="dns-accept")
        self._log.info("dns_proxy_started", fallback=list(self._fallback))

    async def stop(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._reading and self._loop is not None:
            self._loop.remove_reader(self._udp.fileno())
            self._reading = False
        if self._accept_task is not None:
            await cancel_and_wait([self._accept_task])
        # Loop: a task may still spawn one (an accept that completed as we cancelled).
        while self._tasks:
            await cancel_and_wait(self._tasks)
        # Worker threads cannot be cancelled; wait for them so that any socket one of them
        # made is closed (by _close_socket_result) before we report ourselves stopped.
        await asyncio.gather(*list(self._inflight), return_exceptions=True)
        await asyncio.sleep(0)
        self._udp.close()
        self._tcp.close()
        os.close(self._netns_fd)
        self._cache.clear()
        self._log.info("dns_proxy_stopped", udp=asdict(self.udp), tcp=asdict(self.tcp))

    # ---- reporting ------------------------------------------------------------------

    @property
    def counters(self) -> DnsCounters:
        """UDP and TCP together."""
        return DnsCounters(self.udp.queries + self.tcp.queries,
                           self.udp.answered + self.tcp.answered,
                           self.udp.failed + self.tcp.failed)

    def config_dump(self) -> dict[str, Any]:
        return {
            "pod": self.name,
            "port": self._local_port,
            "mark": self._mark,
            "fallback": [f"{h}:{p}" for h, p in self._fallback],
            "timeout_s": self._timeout,
            "running": self._reading and not self._closed,
            "udp": asdict(self.udp),
            "tcp": asdict(self.tcp),
            "cached_flows": len(self._cache),
            "local_answers": self.local_answers,
        }

    # ---- helpers --------------------------------------------------------------------

    async def _off_loop(self, fn: Callable[..., T], *args: Any) -> T:
        """Run blocking `fn` on a worker thread. If our task is cancelled the thread still
        finishes; stop() waits for it, and a socket it made is closed, not leaked."""
        assert self._loop is not None
        fut: asyncio.Future[T] = self._loop.run_in_executor(None, fn, *args)
        self._inflight.add(fut)
        fut.add_done_callback(self._inflight.discard)
        try:
            return await asyncio.shield(fut)
        except asyncio.CancelledError:
            fut.add_done_callback(_close_socket_result)
            raise

    async def _socket(self, family: int, type_: int) -> socket.socket:
        return await self._off_loop(socket_in, self._netns_fd, family, type_, self._mark)

    async def _upstream_socket(self, upstream: Upstream, type_: int) -> socket.socket | None:
        """A marked socket in the pod's netns for dialling `upstream`; None (logged) if the
        socket cannot be made."""
        try:
            return await self._socket(_family_of(upstream[0]), type_)
        except OSError as exc:
            self._log.warning("dns_upstream_socket_failed", error=str(exc))
            return None

    def _spawn(self, coro: Any, name: str) -> None:
        task: asyncio.Task[None] = asyncio.create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # ---- UDP ------------------------------------------------------------------------

    def _on_udp_readable(self) -> None:
        # Drain what is queued now; each datagram is one query with its own task.
        for _ in range(64):
            try:
                data, anc, _flags, client = self._udp.recvmsg(_MAX_UDP, _CMSG_SPACE)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                self._log.warning("dns_udp_recv_failed", error=str(exc))
                return
            if len(self._tasks) >= _MAX_INFLIGHT:
                # Flooded: shed load here rather than queue unbounded work on the
                # executor; the client will retry.
                self._fail("udp")
                continue
            self._spawn(self._serve_udp(data, client, self._pktinfo(anc)), "dns-udp")

    def _pktinfo(self, anc: list[tuple[int, int, bytes]]) -> bytes | None:
        """The local address the query was delivered to, as raw bytes of the sockaddr
        family of our socket (16 for v6/v4-mapped, 4 for v4)."""
        for level, kind, raw in anc:
            if level == socket.IPPROTO_IPV6 and kind == socket.IPV6_PKTINFO and len(raw) >= 16:
                return raw[:16]
            if level == socket.IPPROTO_IP and kind == IP_PKTINFO and len(raw) >= 12:
                return raw[8:12]  # struct in_pktinfo: ifindex, spec_dst, addr (header dst)
        return None

    def _reply_anc(self, local: bytes | None) -> list[tuple[int, int, bytes]]:
        if local is None:
            return []
        if len(local) == 16:
            return [(socket.IPPROTO_IPV6, socket.IPV6_PKTINFO, struct.pack("=16sI", local, 0))]
        return [(socket.IPPROTO_IP, IP_PKTINFO, struct.pack("=I4s4s", 0, local, b"\0" * 4))]

    async def _udp_upstreams(self, client: str, port: int,
                             local: bytes | None) -> list[Upstream]:
        if self._bpf_pin_dir:
            # The eBPF backend: no NAT, no conntrack entry; its map names the resolver.
            here = _addr_text(local) or ("::1" if ":" in client else "127.0.0.1")
            try:
                origin = await self._off_loop(bpf.dns_origin, self._bpf_pin_dir,
                                              self._netns_fd, (client, port),
                                              (here, self._local_port))
            except OSError as exc:
                self._log.warning("dns_bpf_origin_failed", client=client, port=port,
                                  error=str(exc))
                origin = None
            if origin is not None:
                return [origin]
        key = (client, port)
        now = time.monotonic()
        hit = self._cache.get(key)
        if hit is not None and hit[1] > now:
            return [hit[0]]
        try:
            found = await self._off_loop(conntrack_original_dst, self._netns_fd, client, port,
                                         self._local_port, _addr_text(local))
        except OSError as exc:
            self._log.warning("dns_conntrack_failed", client=client, port=port, error=str(exc))
            found = None
        if found is None:
            return list(self._fallback)
        dst, life = found
        if len(self._cache) >= _CACHE_SWEEP_AT:
            self._cache = {k: v for k, v in self._cache.items() if v[1] > now}
        # Never beyond what conntrack promised: after that the client's port may be reused
        # for a new flow to another resolver.
        self._cache[key] = (dst, now + min(life, _CACHE_MAX_S))
        return [dst]

    async def _serve_udp(self, query: bytes, client: Any, local: bytes | None) -> None:
        self.udp.queries += 1
        _QUERIES.labels("udp").inc()
        host, port = _unmap(str(client[0])), int(client[1])
        answer: bytes | None = None
        if self._lookup is not None:
            answer = dnsanswer.answer(query, self._lookup)
            if answer is not None:
                try:
                    self._udp.sendmsg([answer], self._reply_anc(local), 0, client)
                except OSError as exc:
                    self._log.warning("dns_udp_reply_failed", client=host, port=port,
                                      error=str(exc))
                    self._fail("udp")
                    return
                self._local_answer()
                self.udp.answered += 1
                _ANSWERED.labels("udp").inc()
                return
        try:
            found = await self._udp_upstreams(host, port, local)
            upstreams = [u for u in found if not self._refuse(u)]
            if not found:
                self._log.warning("dns_no_upstream", client=host, port=port, proto="udp")
            for up in upstreams:
                answer = await self._ask_udp(up, query)
                if answer is not None:
                    break
            if answer is None:
                self._fail("udp")
                return
            self._udp.sendmsg([answer], self._reply_anc(local), 0, client)
        except OSError as exc:
            self._log.warning("dns_udp_reply_failed", client=host, port=port, error=str(exc))
            self._fail("udp")
            return
        self.udp.answered += 1
        _ANSWERED.labels("udp").inc()

    async def _ask_udp(self, upstream: Upstream, query: bytes) -> bytes | None:
        """One query to one upstream over its own marked socket in the pod's netns, so the
        answer comes back to this socket only. None on timeout or error."""
        assert self._loop is not None
        sock = await self._upstream_socket(upstream, socket.SOCK_DGRAM)
        if sock is None:
            return None
        with sock:
            try:
                sock.connect(upstream)  # UDP connect: no packets, just filters replies
                await self._loop.sock_sendall(sock, query)
                async with asyncio.timeout(self._timeout):
                    while True:
                        answer = await self._loop.sock_recv(sock, _MAX_UDP)
                        # Same transaction ID, or it is not the answer to this query.
                        if answer[:2] == query[:2]:
                            return answer
            except TimeoutError:
                self._log.info("dns_upstream_timeout", upstream=f"{upstream[0]}:{upstream[1]}")
            except OSError as exc:  # ICMP unreachable surfaces as ECONNREFUSED etc.
                self._log.info("dns_upstream_error", upstream=f"{upstream[0]}:{upstream[1]}",
                               error=str(exc))
        return None

    def _fail(self, proto: str) -> None:
        counters = self.udp if proto == "udp" else self.tcp
        counters.failed += 1
        _FAILED.labels(proto).inc()

    # ---- TCP ------------------------------------------------------------------------

    async def _accept_loop(self) -> None:
        assert self._loop is not None
        while True:
            try:
                conn, _ = await self._loop.sock_accept(self._tcp)
            except OSError as exc:
                # EMFILE and friends: do not spin; the next accept may well succeed.
                self._log.warning("dns_accept_failed", error=str(exc))
                await asyncio.sleep(0.1)
                continue
            self._spawn(self._serve_tcp(conn), "dns-tcp")

    async def _serve_tcp(self, conn: socket.socket) -> None:
        assert self._loop is not None
        self.tcp.queries += 1
        _QUERIES.labels("tcp").inc()
        with conn:
            conn.setblocking(False)
            try:
                targets: list[Upstream] = [original_dst(conn)]
            except OSError as exc:
                self._log.warning("dns_tcp_no_original_dst", error=str(exc))
                targets = list(self._fallback)
            targets = [t for t in targets if not self._refuse(t)]
            # A connection straight to 15053 (the proxy would be its own resolver) is
            # closed at once, answered or not: the loop guard's "no answer", and no fd held.
            if self._lookup is not None and targets:
                answered = await self._answer_tcp(conn, targets)
                if answered:
                    self.tcp.answered += 1
                    _ANSWERED.labels("tcp").inc()
                else:
                    self._fail("tcp")
                return
            up: socket.socket | None = None
            for target in targets:
                up = await self._connect_tcp(target)
                if up is not None:
                    break
            if up is None:
                self._fail("tcp")
                return
            with up:
                got_answer = await self._relay(conn, up)
        if got_answer:
            self.tcp.answered += 1
            _ANSWERED.labels("tcp").inc()
        else:
            self._fail("tcp")

    async def _answer_tcp(self, conn: socket.socket, targets: list[Upstream]) -> bool:
        """Message by message (dnstcp.py): mesh names answered here, the rest relayed to
        the first target that connects, dialled at the first such query. Whether the client
        got any answer."""
        assert self._lookup is not None

        async def connect() -> socket.socket | None:
            for target in targets:
                up = await self._connect_tcp(target)
                if up is not None:
                    return up
            return None

        session = dnstcp.TcpSession(conn, self._lookup, connect, self._local_answer,
                                    self._timeout)
        await session.run()
        return session.answers > 0

    def _local_answer(self) -> None:
        self.local_answers += 1
        _LOCAL.inc()

    async def _connect_tcp(self, target: Upstream) -> socket.socket | None:
        assert self._loop is not None
        sock = await self._upstream_socket(target, socket.SOCK_STREAM)
        if sock is None:
            return None
        try:
            async with asyncio.timeout(self._timeout):
                await self._loop.sock_connect(sock, target)
        except (OSError, TimeoutError) as exc:
            sock.close()
            self._log.info("dns_upstream_connect_failed", upstream=f"{target[0]}:{target[1]}",
                           error=str(exc) or type(exc).__name__)
            return None
        except BaseException:
            sock.close()
            raise
        return sock

    async def _relay(self, client: socket.socket, upstream: socket.socket) -> bool:
        """Bytes both ways until both sides are done or one stays idle past the timeout.
        Returns whether the upstream sent anything back."""
        answered = False

        async def pipe(src: socket.socket, dst: socket.socket, to_client: bool) -> None:
            nonlocal answered
            assert self._loop is not None
            try:
                while True:
                    async with asyncio.timeout(self._timeout):
                        data = await self._loop.sock_recv(src, _TCP_READ)
                    if not data:
                        break
                    if to_client:
                        answered = True
                    await self._loop.sock_sendall(dst, data)
            finally:
                # Pass the half-close on, so a client waiting for EOF (or an upstream that
                # answers then closes) sees the end of the stream.
                with contextlib.suppress(OSError):
                    dst.shutdown(socket.SHUT_WR)

        tasks = [asyncio.create_task(pipe(client, upstream, False)),
                 asyncio.create_task(pipe(upstream, client, True))]
        try:
            done, pending = await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
            await cancel_and_wait(pending)
            for t in done:
                exc = t.exception()
                if exc is not None and not isinstance(exc, TimeoutError | OSError):
                    raise exc
                if exc is not None:
                    self._log.info("dns_tcp_relay_ended", error=str(exc) or type(exc).__name__)
        finally:
            await cancel_and_wait(tasks)
        return answered


__all__ = ["DnsCounters", "DnsProxy", "Upstream", "conntrack_original_dst"]
