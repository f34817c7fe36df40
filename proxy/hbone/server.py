"""The inbound side of HBONE: mTLS on 15008, one HTTP/2 CONNECT stream per tunnelled TCP
connection, L4 authorization before the application is ever dialled.

Per stream: method must be CONNECT and `:authority` an `ip:port` (else 400), and not one
the caller's `refuse_target` rejects (400: e.g. one of the proxy's own ports, which would
make the proxy dial itself); the caller's
`authorize(peer, src_ip, dst_ip, dst_port)` decides (deny → 401, logged and counted, as
ztunnel answers policy denials); then the caller's `dial(src, dst)` connects to the app
(refused or timed out → 503); 200 once connected, then bytes flow.

The caller owns sockets: it hands over each accepted TCP connection (`serve`) and supplies
`dial`, so netns, SO_MARK and IP_TRANSPARENT stay in proxy/inpod/workload.py.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
import ssl
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import structlog
from h2.errors import ErrorCodes

from core.addr import plain_ip
from core.aio import cancel_and_wait
from core.spiffe import SpiffeId
from proxy.authz import Decision
from proxy.forward import Traffic, reset
from proxy.hbone import metrics, peer
from proxy.hbone.h2link import H2Link, Headers, Stream
from proxy.hbone.relay import relay
from proxy.hbone.tls import TlsTransport
from proxy.identity.certs import CertStore, NoCertificate

log = structlog.get_logger("hbone")

Addr = tuple[str, int]
Authorize = Callable[[SpiffeId, str, str, int], Decision]
DialApp = Callable[[Addr, Addr], Awaitable[socket.socket]]  # (src, dst) -> connected socket
RefuseTarget = Callable[[Addr, Addr], str | None]  # (src, dst) -> why not, or None
MayLog = Callable[[str], int | None]  # event -> None: drop the line; n: lines dropped before


class StreamSlots(Protocol):
    """The caller's share of connections, taken per stream: one TLS connection can carry
    many streams, each holding an upstream socket, so counting connections alone would let
    one peer hold any number of the process's fds."""

    def acquire(self, src: Addr, dst: Addr) -> str | None: ...  # None: granted, else why not
    def release(self) -> None: ...


@dataclass
class InboundStream:
    """One tunnelled connection, for the caller's bookkeeping (conns table, idle sweep:
    cancelling `task` resets both sides) and access log."""

    peer: SpiffeId
    local: SpiffeId
    src: Addr  # the TLS connection's peer address: the source pod
    dst: Addr  # from :authority
    traffic: Traffic = field(default_factory=Traffic)
    started: float = field(default_factory=time.time)
    task: asyncio.Task[None] | None = None
    status: int = 0
    decision: Decision | None = None
    error: str = ""
    # The service the client named (`Forwarded: host=`), for the telemetry's
    # destination_service; the caller's own per-stream state (its metrics series).
    for_host: str = ""
    stats: Any = None


def parse_forwarded_host(value: str) -> str:
    """The `host=` of a Forwarded header (RFC 7239), quotes removed; "" if absent or not
    ASCII (ztunnel's parse_forwarded_host)."""
    if not value.isascii():
        return ""
    for part in value.split(";"):
        part = part.strip()
        if part.startswith("host="):
            host = part.removeprefix("host=")
            return host.removeprefix('"').removesuffix('"')
    return ""


def parse_authority(value: str) -> Addr | None:
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit() or not 0 < int(port) < 65536:
        return None
    if host.startswith("["):
        if not host.endswith("]"):
            return None
        host = host[1:-1]
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return None
    if isinstance(ip, ipaddress.IPv6Address) and not value.startswith("["):
        return None
    return str(ip), int(port)


class HboneServer:
    """Serves HBONE for one local identity (a pod's service account)."""

    def __init__(self, certs: CertStore, identity: SpiffeId, authorize: Authorize,
                 dial: DialApp, *, handshake_timeout: float = 10.0,
                 connect_timeout: float = 5.0,
                 on_open: Callable[[InboundStream], None] | None = None,
                 on_close: Callable[[InboundStream], None] | None = None,
                 refuse_target: RefuseTarget | None = None,
                 may_log: MayLog | None = None, log_answers: bool = True,
                 slots: StreamSlots | None = None) -> None:
        self.certs, self.identity = certs, identity
        # False when the caller logs every answered stream itself (its access log): a
        # denial is then one line, not two saying the same thing.
        self.log_answers = log_answers
        self.slots = slots
        self.refuse_target = refuse_target
        self.may_log = may_log  # the caller's log budget for per-stream warnings
        self.authorize, self.dial = authorize, dial
        self.handshake_timeout, self.connect_timeout = handshake_timeout, connect_timeout
        self.on_open, self.on_close = on_open, on_close
        self.links: set[H2Link] = set()
        self._tasks: set[asyncio.Task[None]] = set()

    async def serve(self, sock: socket.socket, handshake_timeout: float | None = None) -> None:
        """Handle one accepted TCP connection until it closes. The socket is owned from here.
        `handshake_timeout` overrides the server's for this connection."""
        try:
            ctx = self.certs.server_context(self.identity)  # looked up per connection: rotation
            src = sock.getpeername()[:2]
        except (NoCertificate, OSError) as exc:
            self._refused("no_certificate" if isinstance(exc, NoCertificate) else "socket",
                          str(exc))
            reset(sock)
            return
        src = (plain_ip(src[0]), src[1])
        link = H2Link(False, on_ready=peer.check,
                      on_request=lambda s, h: self._spawn(link, s, h, src))
        try:
            tls = await TlsTransport.open(sock, ctx, server_side=True,
                                          timeout=handshake_timeout or self.handshake_timeout)
        except (ssl.SSLError, OSError, TimeoutError) as exc:
            # TlsTransport owns the socket now and has closed it.
            self._refused("handshake", f"{type(exc).__name__}: {exc}", src)
            return
        tls.start(link)
        if link.refused is not None:
            self._refused("peer", link.refused, src)
            return
        self.links.add(link)
        metrics.TLS_CONNECTIONS.labels("inbound").inc()
        try:
            await link.closed
        except asyncio.CancelledError:
            # The pod is going away: drop the connection (its streams reset their apps).
            # The transport owns and closes the socket, so a caller's reset(sock) is a no-op.
            link.abort()
            raise
        finally:
            self.links.discard(link)
            metrics.TLS_CONNECTIONS.labels("inbound").dec()

    def _refused(self, reason: str, error: str, src: Addr | None = None) -> None:
        metrics.HANDSHAKE_FAILURES.labels("inbound", reason).inc()
        n = self.may_log("hbone_handshake_refused") if self.may_log is not None else 0
        if n is not None:  # None: over the caller's budget, the line is dropped
            log.warning("hbone_handshake_refused", local=str(self.identity), reason=reason,
                        error=error, src=f"{src[0]}:{src[1]}" if src else None, suppressed=n)

    def _spawn(self, link: H2Link, stream: Stream, headers: Headers, src: Addr) -> None:
        task = asyncio.create_task(self._handle(link, stream, dict(headers), src))
        self._tasks.add(task)  # the loop keeps only weak references to tasks
        task.add_done_callback(self._tasks.discard)

    async def _handle(self, link: H2Link, stream: Stream, headers: dict[str, str],
                      src: Addr) -> None:
        assert link.peer is not None
        info = InboundStream(link.peer, self.identity, src, ("", 0),
                             task=asyncio.current_task(),
                             for_host=parse_forwarded_host(headers.get("forwarded", "")))
        if headers.get(":method") != "CONNECT":
            return self._answer(link, stream, info, 400, "expected method CONNECT")
        dst = parse_authority(headers.get(":authority", ""))
        if dst is None:
            return self._answer(link, stream, info, 400, "invalid CONNECT address")
        info.dst = dst
        why = self.refuse_target(src, dst) if self.refuse_target is not None else None
        if why is not None:
            # Before policy and before any dial: the target would loop back into a proxy.
            return self._answer(link, stream, info, 400, f"refused: {why}")
        if self.slots is None:
            return await self._admitted(link, stream, info, src, dst)
        denied = self.slots.acquire(src, dst)
        if denied is not None:
            return self._answer(link, stream, info, 503, f"refused: {denied}")
        try:
            return await self._admitted(link, stream, info, src, dst)
        finally:
            self.slots.release()

    async def _admitted(self, link: H2Link, stream: Stream, info: InboundStream, src: Addr,
                        dst: Addr) -> None:
        try:
            decision = self.authorize(info.peer, src[0], dst[0], dst[1])
        except Exception as exc:  # a policy bug must fail closed, and loudly
            log.exception("hbone_authorize_failed")
            decision = Decision(False, f"authorization_error: {type(exc).__name__}")
        info.decision = decision
        if not decision.allowed:
            metrics.AUTHZ_DENIED.labels(str(info.peer), str(self.identity), decision.reason,
                                        decision.policy or "").inc()
            return self._answer(link, stream, info, 401, f"denied: {decision.reason}")
        try:
            async with asyncio.timeout(self.connect_timeout):  # wait_for would be a task more
                app = await self.dial(src, dst)
        except (OSError, TimeoutError) as exc:
            return self._answer(link, stream, info, 503,
                                f"connect {dst[0]}:{dst[1]}: {exc or 'timeout'}")
        except BaseException:
            stream.reset()
            raise
        if stream.error is not None:  # the client gave up while we were dialling
            reset(app)
            return None
        link.respond(stream, 200, end=False)
        series = metrics.series("inbound", str(info.peer), str(self.identity))
        series.open("200")
        info.status = 200
        if self.on_open is not None:
            self.on_open(info)
        t = info.traffic
        try:
            await relay(app, stream, t, sock_is_a=False)
        finally:
            series.close(t.reset, sent=t.b_to_a, received=t.a_to_b)
            if self.on_close is not None:
                self.on_close(info)
        return None

    def _answer(self, link: H2Link, stream: Stream, info: InboundStream, status: int,
                error: str) -> None:
        link.respond(stream, status, end=True)
        stream.reset(ErrorCodes.NO_ERROR)  # RFC 9113 §8.1: the answer is complete, stop sending
        info.status, info.error = status, error
        metrics.series("inbound", str(info.peer), str(self.identity)).open(str(status))
        d = info.decision
        event = "hbone_denied" if status == 401 else "hbone_refused"
        # n None: over the caller's budget, the line is dropped.
        n = self.may_log(event) if self.may_log is not None and self.log_answers else 0
        if n is not None and self.log_answers:
            log.warning("hbone_denied" if status == 401 else "hbone_refused",
                        status=status, error=error, src=f"{info.src[0]}:{info.src[1]}",
                        dst=f"{info.dst[0]}:{info.dst[1]}", source_principal=str(info.peer),
                        destination_principal=str(self.identity),
                        policy=d.policy if d else None, reason=d.reason if d else None,
                        suppressed=n)
        if self.on_close is not None:
            self.on_close(info)

    async def close(self) -> None:
        """Stop: GOAWAY on every connection, then reset whatever is still relaying."""
        for link in list(self.links):
            link.close()
        await cancel_and_wait(self._tasks)
