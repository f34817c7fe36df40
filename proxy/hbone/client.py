"""The outbound side of HBONE: CONNECT to `<dst pod ip>:15008` over mTLS with the source
workload's certificate, checking that the server is the identity we meant to reach.

Connections are pooled as ztunnel pools them, by (source identity, destination identities,
destination ip): up to 100 streams share one TLS connection, an idle one is closed after
`idle_timeout`. A connection made with a certificate that has since been rotated takes no
new streams (so the next connection presents the new certificate) and closes when its
last stream ends; its live streams are untouched.

The caller owns sockets: `dial(addr)` returns a connected TCP socket, made wherever it
must be (inside the source pod's netns, marked), so that logic stays in workload.py.
"""

from __future__ import annotations

import asyncio
import socket
import ssl
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

import structlog
from h2.errors import ErrorCodes

from core.ports import TUNNEL_PORT
from core.spiffe import SpiffeId
from proxy.forward import Traffic, reset
from proxy.hbone import metrics, peer
from proxy.hbone.h2link import H2Link, Headers, Stream, StreamReset
from proxy.hbone.relay import relay
from proxy.hbone.tls import TlsTransport
from proxy.identity.certs import CertStore, NoCertificate

log = structlog.get_logger("hbone")

Addr = tuple[str, int]
DialTunnel = Callable[[Addr], Awaitable[socket.socket]]
_Key = tuple[SpiffeId, frozenset[SpiffeId], str]


class HboneError(ConnectionError):
    """No tunnel: the connection, the TLS handshake, the peer identity or the CONNECT
    failed. `status` is the server's HTTP status when it answered one (401 policy, 503 app
    refused, 400 bad request). `kind` says which step failed, for the connection's
    `response_flags` (proxy/metrics.py): `identity` (no certificate of ours), `timeout` (the
    dial to 15008 timed out: maybe a NetworkPolicy), `connect`, `tls` (the handshake, or
    not the peer we meant), `stream` (the CONNECT was refused, reset or not answered)."""

    def __init__(self, message: str, status: int | None = None, kind: str = "stream") -> None:
        super().__init__(message)
        self.status = status
        self.kind = kind


def authority(dst: Addr) -> str:
    return f"[{dst[0]}]:{dst[1]}" if ":" in dst[0] else f"{dst[0]}:{dst[1]}"


def forwarded(src: Addr, host: str = "") -> str:
    """The CONNECT's Forwarded header, as ztunnel's build_forwarded: the client's address,
    and the hostname of the service it addressed (the server's telemetry names it)."""
    return f'for="{authority(src)}"' + (f";host={host}" if host else "")


async def _answer(stream: Stream, timeout: float) -> Headers:
    """The stream's response, or TimeoutError. A timer on the response future itself, not
    wait_for(shield(...)): those cost a task and two futures per tunnel."""
    fut = stream.response
    if fut.done():
        return fut.result()

    def expire() -> None:
        if not fut.done():
            fut.set_exception(TimeoutError())
    timer = asyncio.get_running_loop().call_later(timeout, expire)
    try:
        return await fut
    finally:
        timer.cancel()


class HboneClient:
    def __init__(self, certs: CertStore, dial: DialTunnel, *, tunnel_port: int = TUNNEL_PORT,
                 connect_timeout: float = 5.0, idle_timeout: float = 300.0) -> None:
        self.certs, self.dial = certs, dial
        self.tunnel_port = tunnel_port
        self.connect_timeout, self.idle_timeout = connect_timeout, idle_timeout
        self._pool: dict[_Key, list[H2Link]] = {}
        self._locks: dict[_Key, asyncio.Lock] = {}

    async def open(self, src: SpiffeId, dst_identity: SpiffeId | Iterable[SpiffeId],
                   dst: Addr, *, src_addr: Addr | None = None, host: str = "",
                   headers: Iterable[tuple[str, str]] = ()) -> Stream:
        """A CONNECT stream to `dst` (the destination pod's ip and the app port), answered
        200. `dst_identity`: who the server must prove to be (a service may accept several).
        `host`: the hostname of the service the app addressed, sent as ztunnel does
        (`Forwarded: for="<src>";host=<hostname>`) so the server's telemetry names it.
        Raises HboneError."""
        expect = frozenset([dst_identity] if isinstance(dst_identity, SpiffeId)
                           else dst_identity)
        link = await self._link((src, expect, dst[0]))
        hdrs = [(":method", "CONNECT"), (":authority", authority(dst))]
        if src_addr is not None:
            hdrs.append(("forwarded", forwarded(src_addr, host)))
        hdrs.extend(headers)
        stream = link.open_stream(hdrs)
        series = metrics.series("outbound", str(src), str(link.peer))
        try:
            resp = dict(await _answer(stream, self.connect_timeout))
        except StreamReset as exc:
            series.open("reset")
            raise HboneError(f"CONNECT {authority(dst)}: {exc}") from None
        except TimeoutError:
            stream.reset(ErrorCodes.CANCEL)
            series.open("timeout")
            raise HboneError(f"CONNECT {authority(dst)}: no answer in "
                             f"{self.connect_timeout}s") from None
        except asyncio.CancelledError:
            stream.reset(ErrorCodes.CANCEL)
            raise
        status = resp.get(":status", "")
        series.open(status)
        if status != "200":
            stream.reset(ErrorCodes.CANCEL)
            raise HboneError(f"CONNECT {authority(dst)}: HTTP {status}",
                             int(status) if status.isdigit() else None)
        return stream

    async def proxy(self, sock: socket.socket, src: SpiffeId,
                    dst_identity: SpiffeId | Iterable[SpiffeId], dst: Addr,
                    traffic: Traffic | None = None, *, src_addr: Addr | None = None,
                    host: str = "") -> Traffic:
        """Outbound in one call: tunnel `sock` (the app's captured connection) to `dst`.
        If no tunnel can be made the app's connection is reset and HboneError raised."""
        try:
            stream = await self.open(src, dst_identity, dst, src_addr=src_addr, host=host)
        except BaseException:
            reset(sock)
            raise
        t = traffic or Traffic()
        try:
            return await relay(sock, stream, t, sock_is_a=True)
        finally:
            metrics.series("outbound", str(src), str(stream.link.peer)).close(
                t.reset, t.a_to_b, t.b_to_a)

    # -- the pool ----------------------------------------------------------------------------

    async def _link(self, key: _Key) -> H2Link:
        try:
            bundle = self.certs.bundle(key[0])
        except NoCertificate as exc:
            raise HboneError(str(exc), kind="identity") from None
        lock = self._locks.setdefault(key, asyncio.Lock())
        async with lock:  # one handshake per key at a time; the others then share it
            for link in self._pool.get(key, ()):
                if link.usable() and link.capacity() > 0 and link.bundle is bundle:
                    return link
            link = await self._connect(key)
            self._pool.setdefault(key, []).append(link)
            link.closed.add_done_callback(lambda _: self._drop(key, link))
            return link

    async def _connect(self, key: _Key) -> H2Link:
        src, expect, ip = key
        addr = (ip, self.tunnel_port)
        try:
            bundle, ctx = self.certs.client(src)
        except NoCertificate as exc:
            raise HboneError(str(exc), kind="identity") from None
        try:
            tcp = await asyncio.wait_for(self.dial(addr), self.connect_timeout)
        except (OSError, TimeoutError) as exc:
            self._failed("connect", f"{authority(addr)}: {exc or 'timeout'}")
            raise HboneError(f"connect {authority(addr)}: {exc or 'timeout'}"
                             " (maybe a NetworkPolicy is blocking HBONE port 15008)",
                             kind="timeout" if isinstance(exc, TimeoutError)
                             else "connect") from None
        link = H2Link(True, on_ready=lambda lk: peer.check(lk, expect))
        link.bundle = bundle
        link.on_idle = self._idle
        try:
            tls = await TlsTransport.open(tcp, ctx, server_side=False,
                                          timeout=self.connect_timeout)
        except (ssl.SSLError, OSError, TimeoutError) as exc:
            self._failed("handshake", f"{authority(addr)}: {type(exc).__name__}: {exc}")
            raise HboneError(f"TLS to {authority(addr)}: {exc}", kind="tls") from None
        tls.start(link)
        if link.refused is not None:
            self._failed("peer", f"{authority(addr)}: {link.refused}")
            raise HboneError(f"TLS to {authority(addr)}: {link.refused}", kind="tls")
        metrics.TLS_CONNECTIONS.labels("outbound").inc()
        link.closed.add_done_callback(lambda _: metrics.TLS_CONNECTIONS.labels("outbound").dec())
        return link

    def _failed(self, reason: str, error: str) -> None:
        metrics.HANDSHAKE_FAILURES.labels("outbound", reason).inc()
        log.warning("hbone_connect_failed", reason=reason, error=error)

    def _drop(self, key: _Key, link: H2Link) -> None:
        links = self._pool.get(key)
        if links and link in links:
            links.remove(link)
        if not links:
            self._pool.pop(key, None)
            lock = self._locks.get(key)
            if lock is not None and not lock.locked():
                del self._locks[key]

    def _idle(self, link: H2Link) -> None:
        src = next((k[0] for k, v in self._pool.items() if link in v), None)
        try:
            stale = src is None or self.certs.bundle(src) is not link.bundle
        except NoCertificate:
            stale = True
        if stale:
            link.close()
            return
        asyncio.get_running_loop().call_later(
            self.idle_timeout, lambda: None if link.streams else link.close())

    def dump(self) -> list[dict[str, Any]]:
        return [{"source": str(k[0]), "destination": sorted(str(i) for i in k[1]),
                 "ip": k[2], "connections": len(v),
                 "streams": sum(len(lk.streams) for lk in v)} for k, v in self._pool.items()]

    async def close(self) -> None:
        links = [lk for v in self._pool.values() for lk in v]
        for lk in links:
            lk.close()
        await asyncio.gather(*(lk.closed for lk in links), return_exceptions=True)
