"""One HTTP/2 connection over TLS (the `h2` state machine on an asyncio Protocol), and the
byte streams it carries.

Flow control is end to end: a stream acknowledges received DATA (which re-opens the
sender's window) only when its reader asks for the next chunk, i.e. after the previous one
was written to the local socket. So a slow application slows the remote sender, and what
we buffer is bounded by the windows we advertise. Sending waits for window and for the
transport to drain (pause_writing), so a slow peer slows the local reader the same way.

A stream has two ways to be consumed: the coroutine API (`read`/`write`), and a `StreamSink`
(proxy/hbone/relay.py) that the link calls back synchronously as frames arrive, so a relayed
chunk costs no task wake-up (see "Performance" in docs/hbone.md).

Windows and frame size are ztunnel's: 4 MiB per stream, 16 MiB per connection, 1 MiB frames.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
from collections.abc import Callable
from typing import Any, Protocol, cast

import h2.config
import h2.connection
import h2.events
import h2.exceptions
import hyperframe.frame
import structlog
from h2.errors import ErrorCodes
from h2.settings import SettingCodes, Settings

from proxy.identity.spiffe import SpiffeId

log = structlog.get_logger("hbone")

STREAM_WINDOW = 4 << 20
CONNECTION_WINDOW = 16 << 20
MAX_FRAME = 1 << 20
MAX_STREAMS = 100
# Decrypted bytes land here (BufferedProtocol), not in a fresh bytes object per read: uvloop's
# copying path allocates 256 KiB per TLS read whatever its size and loops until an
# SSLWantReadError; the buffered one reads into this, then h2 copies into its frame buffer.
READ_BUFFER = 128 * 1024

Headers = list[tuple[str, str]]


def _data_frame_body_repr(self: hyperframe.frame.DataFrame) -> str:
    # h2 formats every received frame eagerly for a trace log (`repr(frame)` is an argument
    # of logger.trace, computed even when nothing logs), and hyperframe's DATA repr
    # serializes the whole body and hex-encodes all of it to show 20 hex digits: three
    # copies of every received payload, twice its size in a str, per frame. Same text from
    # the first 11 body bytes (hyperframe 6.x) instead.
    head = (self.serialize_padding_data() + bytes(memoryview(self.data)[:11])
            + b"\0" * min(self.pad_length, 11))
    return hyperframe.frame._raw_data_repr(head[:11])


hyperframe.frame.DataFrame._body_repr = _data_frame_body_repr  # type: ignore[assignment]


class StreamReset(ConnectionError):
    """The stream ended abnormally: RST_STREAM from the peer, or the connection died."""

    def __init__(self, reason: str, code: int = ErrorCodes.CONNECT_ERROR) -> None:
        super().__init__(reason)
        self.code = code


class StreamSink(Protocol):
    """Callbacks for a stream consumed without a task (the relay). Called from the link's
    data_received (or connection_lost / resume_writing), so they must not block."""

    def on_data(self) -> None:
        """New chunks are in `stream._chunks`; the sink acknowledges what it wrote."""

    def on_eof(self) -> None:
        """The peer's END_STREAM (after the chunks it follows)."""

    def on_reset(self) -> None:
        """`stream.error` is set: the stream is gone, buffered chunks were dropped."""

    def on_writable(self) -> None:
        """Send window re-opened or the transport drained: sending may resume."""


class Stream:
    """One CONNECT tunnel: an ordered byte stream each way, with half-close and reset."""

    def __init__(self, link: H2Link, stream_id: int) -> None:
        self.link, self.id = link, stream_id
        # (data, flow-controlled length): received, not yet written out. A sink may replace
        # the head with a memoryview of its unwritten tail after a partial write.
        self._chunks: collections.deque[tuple[bytes | memoryview, int]] = collections.deque()
        self.sink: StreamSink | None = None
        self._unacked = 0  # flow-controlled size of the chunk last handed to the reader
        self._data = asyncio.Event()
        self._window = asyncio.Event()
        self.error: StreamReset | None = None
        self.remote_ended = False
        self.local_ended = False
        self.response: asyncio.Future[Headers] = asyncio.get_running_loop().create_future()

    # -- reading -------------------------------------------------------------------------

    async def read(self) -> bytes | None:
        """The next chunk, or None at the peer's END_STREAM. Raises StreamReset."""
        self._ack()
        while not self._chunks:
            if self.error is not None:
                raise self.error
            if self.remote_ended:
                return None
            self._data.clear()
            await self._data.wait()
        if self.error is not None:
            raise self.error  # a reset discards what was buffered, as TCP RST does
        data, self._unacked = self._chunks.popleft()
        return bytes(data) if isinstance(data, memoryview) else data

    def _ack(self) -> None:
        if self._unacked:
            n, self._unacked = self._unacked, 0
            self.link.acknowledge(self.id, n)

    # -- writing -------------------------------------------------------------------------

    async def write(self, data: bytes | bytearray | memoryview) -> None:
        view = memoryview(data)
        conn = self.link.h2
        while view:
            if self.error is not None:
                raise self.error
            try:
                window = conn.local_flow_control_window(self.id)
            except (h2.exceptions.StreamClosedError, h2.exceptions.NoSuchStreamError):
                raise StreamReset("stream closed") from None
            if window <= 0:
                self._window.clear()
                await self._window.wait()
                continue
            n = min(window, len(view), conn.max_outbound_frame_size)
            try:
                conn.send_data(self.id, view[:n])
            except h2.exceptions.ProtocolError as exc:  # e.g. the connection got a GOAWAY
                raise StreamReset(f"cannot send: {exc}") from None
            view = view[n:]
            self.link.flush()  # serializes into new bytes: the caller may reuse `data`
            await self.link.writable()

    def end(self) -> None:
        """Half-close our side (END_STREAM); the peer can still send."""
        if self.local_ended or self.error is not None:
            return
        self.local_ended = True
        try:
            self.link.h2.end_stream(self.id)
        except h2.exceptions.ProtocolError:
            return
        self.link.flush()
        self._maybe_done()

    def reset(self, code: int = ErrorCodes.CONNECT_ERROR) -> None:
        """Abort the stream (RST_STREAM): the peer's side turns it into a TCP reset."""
        if self.error is not None or (self.local_ended and self.remote_ended):
            return
        self._fail(StreamReset("reset locally", code))
        try:
            self.link.h2.reset_stream(self.id, code)
        except h2.exceptions.ProtocolError:
            return
        self.link.flush()

    # -- events from the link --------------------------------------------------------------

    def _feed(self, data: bytes, flow_len: int) -> None:
        if self.error is not None:
            self.link.acknowledge(self.id, flow_len)  # nobody will read it: free the window
            return
        self._chunks.append((data, flow_len))
        if self.sink is not None:
            self.sink.on_data()
        else:
            self._data.set()

    def _eof(self) -> None:
        self.remote_ended = True
        self._data.set()
        self._settle(StreamReset("stream ended before a response"))
        if self.sink is not None:
            self.sink.on_eof()
        self._maybe_done()

    def _wake(self) -> None:
        self._window.set()
        if self.sink is not None:
            self.sink.on_writable()

    def _fail(self, exc: StreamReset) -> None:
        if self.error is None:
            self.error = exc
        self._data.set()
        self._window.set()
        self._settle(exc)
        for _, n in self._chunks:
            self.link.acknowledge(self.id, n)
        self._chunks.clear()
        self.link.forget(self)
        if self.sink is not None:
            self.sink.on_reset()

    def _settle(self, exc: StreamReset) -> None:
        if not self.response.done():
            self.response.set_exception(exc)
            self.response.exception()  # retrieved: no "never retrieved" noise if unawaited

    def _maybe_done(self) -> None:
        if self.local_ended and self.remote_ended:
            self.link.forget(self)


class H2Link(asyncio.BufferedProtocol):
    """An HTTP/2 connection. `on_request` (server side) gets each new request's stream."""

    def __init__(self, client_side: bool,
                 on_ready: Callable[[H2Link], str | None],
                 on_request: Callable[[Stream, Headers], None] | None = None) -> None:
        cfg = h2.config.H2Configuration(client_side=client_side, header_encoding="utf-8")
        self.h2 = h2.connection.H2Connection(cfg)
        values = {SettingCodes.INITIAL_WINDOW_SIZE: STREAM_WINDOW,
                  SettingCodes.MAX_FRAME_SIZE: MAX_FRAME,
                  SettingCodes.MAX_CONCURRENT_STREAMS: MAX_STREAMS}
        if client_side:
            values[SettingCodes.ENABLE_PUSH] = 0
        self.h2.local_settings = Settings(client=client_side, initial_values=values)
        # Read from local_settings only in H2Connection.__init__ (or on a settings ACK).
        self.h2.max_inbound_frame_size = MAX_FRAME
        self.client_side = client_side
        self._on_ready, self._on_request = on_ready, on_request
        self.transport: asyncio.Transport | None = None
        self.streams: dict[int, Stream] = {}
        self._writable = asyncio.Event()
        self._writable.set()
        self.paused = False  # the transport's buffer is over its high-water mark
        # Inside data_received: acknowledgements skip their own flush, the one at the end of
        # data_received sends them (one TLS record and one write for all of a read's frames).
        self._dispatching = False
        self.lost: BaseException | None = None
        self.goaway = False
        self.refused: str | None = None  # why on_ready refused the peer
        self.closed: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._rbuf = memoryview(bytearray(READ_BUFFER))
        self.on_idle: Callable[[H2Link], None] | None = None
        self.peer: SpiffeId | None = None  # set by on_ready once the certificate is checked
        self.bundle: object = None  # client side: the CertBundle it was made with

    # -- asyncio.Protocol ------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's TLS transport is not an asyncio.Transport subclass, but has its methods.
        self.transport = cast(asyncio.Transport, transport)
        # With TLS this runs after the handshake, before any application data is delivered,
        # so the peer is checked before a single request is parsed.
        self.refused = self._on_ready(self)
        if self.refused is not None:
            self.transport.abort()
            return
        self.h2.initiate_connection()
        self.h2.increment_flow_control_window(CONNECTION_WINDOW - 65535)
        self.flush()

    def get_buffer(self, sizehint: int) -> memoryview:
        return self._rbuf

    def buffer_updated(self, nbytes: int) -> None:
        # h2 copies what it keeps (its frame buffer), so _rbuf is free again on return.
        self.data_received(self._rbuf[:nbytes])

    def data_received(self, data: bytes | memoryview) -> None:
        if self.refused is not None:
            return
        try:
            events = self.h2.receive_data(data)
        except h2.exceptions.ProtocolError as exc:
            log.warning("hbone_protocol_error", error=str(exc))
            self.flush()  # h2 queued a GOAWAY
            self.close()
            return
        self._dispatching = True
        try:
            for ev in events:
                self._dispatch(ev)
        finally:
            self._dispatching = False
        self.flush()

    def eof_received(self) -> bool | None:
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = exc or ConnectionResetError("connection closed")
        self._writable.set()
        for s in list(self.streams.values()):
            s._fail(StreamReset(f"connection lost: {self.lost}"))
        if not self.closed.done():
            self.closed.set_result(None)

    def pause_writing(self) -> None:
        self.paused = True
        self._writable.clear()

    def resume_writing(self) -> None:
        self.paused = False
        self._writable.set()
        self._wake_writers()

    # -- h2 events -------------------------------------------------------------------------

    def _dispatch(self, ev: h2.events.Event) -> None:
        if isinstance(ev, h2.events.DataReceived):
            assert ev.stream_id is not None and ev.data is not None
            n = ev.flow_controlled_length or 0
            s = self.streams.get(ev.stream_id)
            if s is None:
                self.acknowledge(ev.stream_id, n)
            else:
                s._feed(ev.data, n)
        elif isinstance(ev, h2.events.WindowUpdated):
            if ev.stream_id:
                if (s := self.streams.get(ev.stream_id)) is not None:
                    s._wake()
            else:
                self._wake_writers()
        elif isinstance(ev, h2.events.RemoteSettingsChanged):
            self._wake_writers()
        elif isinstance(ev, h2.events.RequestReceived):
            assert ev.stream_id is not None
            s = Stream(self, ev.stream_id)
            self.streams[ev.stream_id] = s
            if self._on_request is None or self.goaway:
                s.reset(ErrorCodes.REFUSED_STREAM)
            else:
                self._on_request(s, _headers(ev.headers))
        elif isinstance(ev, h2.events.ResponseReceived):
            if (s := self.streams.get(ev.stream_id or 0)) is not None \
                    and not s.response.done():
                s.response.set_result(_headers(ev.headers))
        elif isinstance(ev, h2.events.StreamEnded):
            if (s := self.streams.get(ev.stream_id or 0)) is not None:
                s._eof()
        elif isinstance(ev, h2.events.StreamReset):
            if (s := self.streams.get(ev.stream_id or 0)) is not None:
                code = int(ev.error_code or 0)
                s._fail(StreamReset(f"reset by peer ({_code_name(code)})", code))
        elif isinstance(ev, h2.events.ConnectionTerminated):
            # h2 moves the whole connection to CLOSED on a GOAWAY, so even streams the peer
            # would let finish can no longer send: end them all now, as resets.
            self.goaway = True
            for s in list(self.streams.values()):
                s._fail(StreamReset("connection going away", ErrorCodes.REFUSED_STREAM))
            self.close()

    def _wake_writers(self) -> None:
        for s in list(self.streams.values()):  # a sink's callback may end its stream
            s._wake()

    # -- used by streams and owners ----------------------------------------------------------

    def open_stream(self, headers: Headers) -> Stream:
        sid = self.h2.get_next_available_stream_id()
        s = Stream(self, sid)
        self.streams[sid] = s
        self.h2.send_headers(sid, headers)
        self.flush()
        return s

    def respond(self, s: Stream, status: int, end: bool) -> None:
        try:
            self.h2.send_headers(s.id, [(":status", str(status))], end_stream=end)
        except h2.exceptions.ProtocolError:
            return
        if end:
            s.local_ended = True
            s._maybe_done()
        self.flush()

    def acknowledge(self, stream_id: int, n: int) -> None:
        if n and self.lost is None:
            with contextlib.suppress(h2.exceptions.ProtocolError):
                self.h2.acknowledge_received_data(n, stream_id)
            if not self._dispatching:
                self.flush()

    def forget(self, s: Stream) -> None:
        if self.streams.pop(s.id, None) is not None and not self.streams:
            if self.goaway:
                self.close()
            elif self.on_idle is not None:
                self.on_idle(self)

    def flush(self) -> None:
        data = self.h2.data_to_send()
        if data and self.transport is not None and not self.transport.is_closing():
            self.transport.write(data)

    async def writable(self) -> None:
        if not self._writable.is_set():
            await self._writable.wait()
        if self.lost is not None:
            raise StreamReset(f"connection lost: {self.lost}")

    def capacity(self) -> int:
        limit = min(MAX_STREAMS, self.h2.remote_settings.max_concurrent_streams)
        return limit - len(self.streams)

    def usable(self) -> bool:
        return self.lost is None and not self.goaway and self.refused is None

    def close(self) -> None:
        """Graceful: GOAWAY, then a TLS close_notify."""
        if self.transport is None or self.transport.is_closing():
            return
        if self.lost is None and self.refused is None:
            with contextlib.suppress(h2.exceptions.ProtocolError):
                self.h2.close_connection()
            self.flush()
        self.transport.close()

    def peer_info(self, key: str) -> Any:
        return self.transport.get_extra_info(key) if self.transport is not None else None


def _headers(raw: Any) -> Headers:
    return [(k.decode() if isinstance(k, bytes) else k, v.decode() if isinstance(v, bytes) else v)
            for k, v in raw or ()]


def _code_name(code: int) -> str:
    try:
        return ErrorCodes(code).name
    except ValueError:
        return str(code)
