"""One HTTP/2 connection over TLS, and the byte streams (CONNECT tunnels) it carries.

Two parsers share the connection. The frames of a stream's life are parsed and built here
(proxy/hbone/frames.py), with the stream states (RFC 9113 §5.1) and flow control kept here
too: DATA and WINDOW_UPDATE, which every relayed chunk costs, and HEADERS, CONTINUATION and
RST_STREAM, which every tunnel costs (header blocks are (de)compressed by the `hpack`
library, with the encoder and decoder of the `h2` connection below, so table sizes follow
SETTINGS, and validated by proxy/hbone/fields.py). The connection-level rest (the preface,
SETTINGS, PING, GOAWAY, PRIORITY, PUSH_PROMISE, unknown types) goes to the `h2` state
machine exactly as received, in order; h2 never sees a stream, so its windows are never
touched and it never sends a WINDOW_UPDATE. Measured, h2 cost ~20 µs per relayed chunk and
~150 µs per tunnel across both ends (docs/hbone.md, "Performance").

Flow control is end to end: a stream acknowledges received DATA (which re-opens the sender's
window) only when its reader asks for the next chunk, i.e. after the previous one was
written to the local socket. So a slow application slows the remote sender, and what we
buffer is bounded by the windows we advertise. Sending waits for window and for the
transport to drain (pause_writing), so a slow peer slows the local reader the same way.

A stream has two ways to be consumed: the coroutine API (`read`/`write`), and a `StreamSink`
(proxy/hbone/relay.py) that the link calls back synchronously as frames arrive, so a relayed
chunk costs no task wake-up.

Windows and frame size are ztunnel's: 4 MiB per stream, 16 MiB per connection, 1 MiB frames.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
from collections.abc import Callable
from typing import Any, Protocol

import h2.config
import h2.connection
import h2.events
import h2.exceptions
import hpack
import structlog
from h2.errors import ErrorCodes
from h2.settings import SettingCodes, Settings

from core.spiffe import SpiffeId
from proxy.hbone import fields, frames
from proxy.hbone.frames import FrameError, RecvWindow
from proxy.hbone.tls import TlsTransport

log = structlog.get_logger("hbone")

STREAM_WINDOW = 4 << 20
CONNECTION_WINDOW = 16 << 20
MAX_FRAME = 1 << 20
MAX_STREAMS = 100
MAX_STREAM_ID = (1 << 31) - 1
# A header block (HEADERS + CONTINUATIONs) longer than this, or in more frames, ends the
# connection: what hpack decodes is bounded by h2's max header list size (64 KiB), a
# CONNECT's is ~100 bytes, and empty CONTINUATIONs would otherwise cost CPU for ever.
MAX_HEADER_BLOCK = 256 * 1024
MAX_CONTINUATIONS = 64
# RFC 7541 Appendix A: ":status 200" is static entry 8, sent as one indexed field (0x80 | 8)
# whatever the dynamic table holds; only a pending table size update must come before it.
_STATUS_200 = b"\x88"
DEFAULT_WINDOW = 65535  # §6.9.2: every window's size until SETTINGS say otherwise
# Free room offered to each TLS read: one full record (16 KiB of plaintext) and then some.
_MIN_READ_ROOM = 32 * 1024
READ_BUFFER = 256 * 1024

Headers = list[tuple[str, str]]


class StreamReset(ConnectionError):
    """The stream ended abnormally: RST_STREAM from the peer, or the connection died."""

    def __init__(self, reason: str, code: int = ErrorCodes.CONNECT_ERROR) -> None:
        super().__init__(reason)
        self.code = code


class StreamSink(Protocol):
    """Callbacks for a stream consumed without a task (the relay). Called from the link's
    data handling (or connection_lost / resume_writing), so they must not block."""

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
        self.send_window = link.h2.remote_settings.initial_window_size
        self.recv_window = RecvWindow(STREAM_WINDOW)
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

    def sendable(self) -> int:
        """How many bytes one DATA frame may carry now (0: wait for on_writable)."""
        link = self.link
        if self.error is not None or self.local_ended or link.lost is not None:
            return 0
        return min(self.send_window, link.send_window, link.h2.max_outbound_frame_size)

    async def write(self, data: bytes | bytearray | memoryview) -> None:
        view = memoryview(data)
        while view:
            if self.error is not None:
                raise self.error
            if self.local_ended or self.link.lost is not None:
                raise StreamReset("stream closed")
            n = min(self.sendable(), len(view))
            if n <= 0:
                self._window.clear()
                await self._window.wait()
                continue
            frame = bytearray(frames.HEADER + n)
            frame[frames.HEADER:] = view[:n]
            self.link.send_data(self, frame, n)
            view = view[n:]
            await self.link.writable()

    def end(self) -> None:
        """Half-close our side (END_STREAM); the peer can still send."""
        if self.local_ended or self.error is not None:
            return
        self.local_ended = True
        self.link.send_control(frames.empty_data(self.id, frames.END_STREAM))
        self._maybe_done()

    def reset(self, code: int = ErrorCodes.CONNECT_ERROR) -> None:
        """Abort the stream (RST_STREAM): the peer's side turns it into a TCP reset."""
        if self.error is not None or (self.local_ended and self.remote_ended):
            return
        # Queued before _fail: forgetting the last stream may close the connection.
        self.link.send_control(frames.rst_stream(self.id, code))
        self._fail(StreamReset("reset locally", code))

    # -- events from the link --------------------------------------------------------------

    def _feed(self, data: memoryview, flow_len: int) -> None:
        """`data` is a view of the link's read buffer, valid only during this call."""
        if self.sink is None:
            self._chunks.append((bytes(data), flow_len))
            self._data.set()
            return
        chunks = self._chunks
        chunks.append((data, flow_len))
        self.sink.on_data()  # usually writes it all to the app socket right away
        if chunks:  # what the socket did not take must outlive the read buffer
            for i, (d, n) in enumerate(chunks):
                if isinstance(d, memoryview):
                    chunks[i] = (bytes(d), n)

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
    """An HTTP/2 connection. `on_request` (server side) gets each new request's stream.
    Started by `TlsTransport.start(link)` once the handshake is done."""

    def __init__(self, client_side: bool,
                 on_ready: Callable[[H2Link], str | None],
                 on_request: Callable[[Stream, Headers], None] | None = None) -> None:
        cfg = h2.config.H2Configuration(client_side=client_side)
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
        self.transport: TlsTransport | None = None
        self.streams: dict[int, Stream] = {}
        self._next_id = 1  # client: the stream id we open next (§5.1.1: odd, growing)
        self._peer_id = 0  # server: the highest stream id the client opened
        # A header block waiting for its CONTINUATIONs: (stream, HEADERS flags, the stream
        # it depends on, the fragments so far). Nothing else may come in between (§6.10).
        self._block: tuple[int, int, int, bytearray] | None = None
        self._continuations = 0
        self.send_window = DEFAULT_WINDOW  # the connection's, as the peer grants it
        self._recv_window = RecvWindow(CONNECTION_WINDOW)
        self._writable = asyncio.Event()
        self._writable.set()
        self.paused = False  # the transport's buffer is over its high-water mark
        # Inside buffer_updated: acknowledgements skip their own flush, the one at its end
        # sends them (one TLS record and one write for all of a read's frames).
        self._dispatching = False
        self._wbuf = bytearray()  # our control frames, queued behind h2's output
        # h2 may have queued output: set before every h2 call that can send, cleared when it
        # is drained (draining costs two allocations, and the hot path needs none).
        self.h2_output = False
        self.lost: BaseException | None = None
        self.goaway = False
        self.refused: str | None = None  # why on_ready refused the peer
        self.closed: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        # Received bytes: frames are parsed in place in [_start, _end).
        self._in = bytearray(READ_BUFFER)
        self._view = memoryview(self._in)
        self._start = self._end = 0
        self._need = 0  # size of the incomplete frame at _start, once its header is in
        self._preface = 0 if client_side else len(frames.CLIENT_PREFACE)
        self.on_idle: Callable[[H2Link], None] | None = None
        self.peer: SpiffeId | None = None  # set by on_ready once the certificate is checked
        self.bundle: object = None  # client side: the CertBundle it was made with

    # -- transport callbacks ---------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, TlsTransport)
        self.transport = transport
        # Runs after the handshake, before any application data is read, so the peer is
        # checked before a single request is parsed.
        self.refused = self._on_ready(self)
        if self.refused is not None:
            transport.abort()
            return
        self.h2_output = True
        self.h2.initiate_connection()
        self.h2.increment_flow_control_window(CONNECTION_WINDOW - DEFAULT_WINDOW)
        self.flush()

    def get_buffer(self, sizehint: int) -> memoryview:
        room = max(_MIN_READ_ROOM, self._need - (self._end - self._start))
        if len(self._in) - self._end < room:
            self._compact(room)
        return self._view[self._end:]

    def _compact(self, room: int) -> None:
        pending = self._end - self._start
        if self._start:
            self._in[:pending] = self._view[self._start:self._end]
            self._start, self._end = 0, pending
        if len(self._in) - pending < room:  # a frame bigger than the buffer: grow (≤ 1 MiB)
            # A new buffer, not a resize: views of the old one may still be alive (the
            # transport's last read), and a bytearray with views cannot change size.
            grown = bytearray(pending + room)
            grown[:pending] = self._view[:pending]
            self._in, self._view = grown, memoryview(grown)

    def buffer_updated(self, nbytes: int) -> None:
        self._end += nbytes
        if self.refused is not None or self.lost is not None \
                or self._end - self._start < self._need:  # a frame's middle (bulk transfer)
            return
        self._dispatching = True
        try:
            self._process()
        except FrameError as exc:
            self._protocol_error(exc.code, str(exc))
        except h2.exceptions.ProtocolError as exc:  # h2 has queued its GOAWAY
            self._protocol_error(None, f"{type(exc).__name__}: {exc}")
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

    # -- receiving ---------------------------------------------------------------------------

    def _process(self) -> None:
        buf, view = self._in, self._view
        pos, end = self._start, self._end
        if self._preface:  # server side: the client's 24 magic bytes are not a frame
            take = min(self._preface, end - pos)
            self._to_h2(view[pos:pos + take])
            self._preface -= take
            pos += take
        self._need = 0
        while end - pos >= frames.HEADER:
            length, ftype, flags, sid = frames.header(buf, pos)
            if length > MAX_FRAME:
                raise FrameError(frames.FRAME_SIZE_ERROR, f"frame of {length} bytes")
            size = frames.HEADER + length
            if end - pos < size:
                self._need = size
                break
            if self._block is not None and ftype != frames.CONTINUATION:
                raise FrameError(frames.PROTOCOL_ERROR, "header block interrupted")
            if ftype == frames.DATA:
                self._on_data(pos, length, flags, sid)
            elif ftype == frames.WINDOW_UPDATE:
                self._on_window_update(pos, length, sid)
            elif ftype == frames.HEADERS:
                self._on_headers(pos, length, flags, sid)
            elif ftype == frames.CONTINUATION:
                self._on_continuation(pos, length, flags, sid)
            elif ftype == frames.RST_STREAM:
                self._on_rst_stream(pos, length, sid)
            else:
                # One frame at a time: h2 applies SETTINGS as it parses them, and a stream
                # opened by an earlier HEADERS must take the initial window in force then.
                self._to_h2(view[pos:pos + size])
            pos += size
            if self.lost is not None or self.transport is None or self.transport.is_closing():
                pos = end
                break
        self._start, self._end = (pos, end) if pos < end else (0, 0)

    def _to_h2(self, data: memoryview) -> None:
        self.h2_output = True
        for ev in self.h2.receive_data(data):  # h2 copies what it keeps
            self._dispatch(ev)

    def _on_data(self, at: int, length: int, flags: int, sid: int) -> None:
        start, end = frames.data_payload(self._in, at, length, flags)
        if sid == 0:
            raise FrameError(frames.PROTOCOL_ERROR, "DATA on stream 0")
        if not self._recv_window.consume(length):
            raise FrameError(frames.FLOW_CONTROL_ERROR, "DATA beyond the connection window")
        s = self.streams.get(sid)
        if s is None or s.remote_ended:
            # Not a stream we read: its connection credit comes straight back.
            self._release_connection(length)
            if s is not None:  # §5.1 half-closed (remote): a stream error
                s.reset(frames.STREAM_CLOSED)
            elif self._idle(sid):  # §5.1 idle: a connection error
                raise FrameError(frames.PROTOCOL_ERROR, f"DATA on idle stream {sid}")
            # closed: ignored, it may trail a RST_STREAM we sent (§5.1)
            return
        if not s.recv_window.consume(length):
            self._release_connection(length)
            s.reset(frames.FLOW_CONTROL_ERROR)
            return
        if end > start:
            s._feed(self._view[start:end], length)
        elif length:  # padding only: nothing to deliver, the credit comes straight back
            self.acknowledge(sid, length)
        if flags & frames.END_STREAM:
            s._eof()

    def _on_window_update(self, at: int, length: int, sid: int) -> None:
        inc = frames.window_increment(self._in, at, length)
        if sid == 0:
            if inc == 0:
                raise FrameError(frames.PROTOCOL_ERROR, "connection WINDOW_UPDATE of 0")
            self.send_window += inc
            if self.send_window > frames.MAX_WINDOW:
                raise FrameError(frames.FLOW_CONTROL_ERROR, "connection window overflow")
            self._wake_writers()
            return
        s = self.streams.get(sid)
        if s is None:
            # §5.1: on an idle stream a connection error; on a closed one it may trail the
            # stream's end, and is ignored.
            if self._idle(sid):
                raise FrameError(frames.PROTOCOL_ERROR, f"WINDOW_UPDATE on idle stream {sid}")
            return
        if inc == 0:
            s.reset(frames.PROTOCOL_ERROR)
            return
        s.send_window += inc
        if s.send_window > frames.MAX_WINDOW:
            s.reset(frames.FLOW_CONTROL_ERROR)
            return
        s._wake()

    def _idle(self, sid: int) -> bool:
        """§5.1: a stream id nobody has opened yet. Only clients open streams here (no
        push), so every even id is idle, and an odd one above the highest opened."""
        if sid % 2 == 0:
            return True
        return sid >= self._next_id if self.client_side else sid > self._peer_id

    def _on_rst_stream(self, at: int, length: int, sid: int) -> None:
        code = frames.rst_code(self._in, at, length)
        if sid == 0:
            raise FrameError(frames.PROTOCOL_ERROR, "RST_STREAM on stream 0")
        s = self.streams.get(sid)
        if s is not None:
            s._fail(StreamReset(f"reset by peer ({_code_name(code)})", code))
        elif self._idle(sid):
            raise FrameError(frames.PROTOCOL_ERROR, f"RST_STREAM on idle stream {sid}")

    def _on_headers(self, at: int, length: int, flags: int, sid: int) -> None:
        if sid == 0:
            raise FrameError(frames.PROTOCOL_ERROR, "HEADERS on stream 0")
        start, end, depends = frames.headers_fragment(self._in, at, length, flags)
        if flags & frames.END_HEADERS:
            self._on_header_block(sid, flags, depends, self._view[start:end])
        else:
            self._block = (sid, flags, depends, bytearray(self._view[start:end]))
            self._continuations = 0

    def _on_continuation(self, at: int, length: int, flags: int, sid: int) -> None:
        block = self._block
        if block is None or block[0] != sid:
            raise FrameError(frames.PROTOCOL_ERROR, "CONTINUATION without its HEADERS")
        fragments = block[3]
        fragments += self._view[at + frames.HEADER:at + frames.HEADER + length]
        self._continuations += 1
        if len(fragments) > MAX_HEADER_BLOCK or self._continuations > MAX_CONTINUATIONS:
            raise FrameError(frames.PROTOCOL_ERROR, "header block too long")
        if flags & frames.END_HEADERS:
            self._block = None
            self._on_header_block(sid, block[1], block[2], memoryview(fragments))

    def _on_header_block(self, sid: int, flags: int, depends: int, block: memoryview) -> None:
        # Decoded whatever becomes of the stream: the HPACK tables must stay in step.
        try:
            raw = self.h2.decoder.decode(bytes(block), raw=True)
        except hpack.HPACKError as exc:
            raise FrameError(frames.COMPRESSION_ERROR, f"header block: {exc}") from None
        pairs: list[tuple[bytes, bytes]] = [(bytes(k), bytes(v)) for k, v in raw]
        if self.client_side:
            self._on_response(sid, flags, pairs)
        else:
            self._on_request_headers(sid, flags, depends, pairs)

    def _on_request_headers(self, sid: int, flags: int, depends: int,
                            raw: list[tuple[bytes, bytes]]) -> None:
        s = self.streams.get(sid)
        if s is not None:
            # A second field section on a tunnel (trailers): §8.5, a stream error.
            s.reset(frames.PROTOCOL_ERROR)
            return
        if sid % 2 == 0:
            raise FrameError(frames.PROTOCOL_ERROR, f"HEADERS on even stream {sid}")
        if sid <= self._peer_id:
            return  # closed (§5.1.1: ids only grow): it may trail a RST_STREAM we sent
        # A new stream; the idle ones below it are closed now (§5.1.1).
        self._peer_id = self.h2.highest_inbound_stream_id = sid  # h2's GOAWAY names it
        code = None
        if depends == sid:
            code = frames.PROTOCOL_ERROR  # §5.3.1: a stream cannot depend on itself
        elif self.goaway or self._on_request is None or len(self.streams) >= MAX_STREAMS:
            code = frames.REFUSED_STREAM  # §5.1.2: over our SETTINGS_MAX_CONCURRENT_STREAMS
        else:
            try:
                headers = fields.request(raw)
            except fields.Malformed as exc:
                log.info("hbone_malformed_request", stream=sid, error=str(exc))
                code = frames.PROTOCOL_ERROR  # §8.1.1: malformed, a stream error
        if code is not None:
            self.send_control(frames.rst_stream(sid, code))
            return
        s = Stream(self, sid)
        self.streams[sid] = s
        assert self._on_request is not None
        self._on_request(s, headers)
        if flags & frames.END_STREAM:
            s._eof()

    def _on_response(self, sid: int, flags: int, raw: list[tuple[bytes, bytes]]) -> None:
        if self._idle(sid):
            raise FrameError(frames.PROTOCOL_ERROR, f"HEADERS on idle stream {sid}")
        s = self.streams.get(sid)
        if s is None:
            return  # closed: an answer to a stream we reset (timed out, cancelled)
        if s.response.done():
            s.reset(frames.PROTOCOL_ERROR)  # a field section after the answer: §8.5
            return
        try:
            status, headers = fields.response(raw)
        except fields.Malformed as exc:
            log.info("hbone_malformed_response", stream=sid, error=str(exc))
            s.reset(frames.PROTOCOL_ERROR)
            return
        if status < 200:  # informational: the answer follows (§8.1), and cannot end here
            if flags & frames.END_STREAM:
                s.reset(frames.PROTOCOL_ERROR)
            return
        s.response.set_result(headers)
        if flags & frames.END_STREAM:
            s._eof()

    def _protocol_error(self, code: int | None, reason: str) -> None:
        log.warning("hbone_protocol_error", error=reason)
        if code is not None:
            self.h2_output = True
            with contextlib.suppress(h2.exceptions.ProtocolError):
                self.h2.close_connection(error_code=code)
        self.flush()
        if self.transport is not None:
            self.transport.close()

    # -- h2 events -------------------------------------------------------------------------

    def _dispatch(self, ev: h2.events.Event) -> None:
        if isinstance(ev, h2.events.RemoteSettingsChanged):
            changed = ev.changed_settings.get(SettingCodes.INITIAL_WINDOW_SIZE)
            if changed is not None:  # §6.9.2: applies to every open stream, by the delta
                old = changed.original_value
                delta = changed.new_value - (DEFAULT_WINDOW if old is None else old)
                for s in self.streams.values():
                    s.send_window += delta
            self._wake_writers()
        elif isinstance(ev, h2.events.ConnectionTerminated):
            # h2 moves the whole connection to CLOSED on a GOAWAY, so even streams the peer
            # would let finish can no longer send: end them all now, as resets.
            self.goaway = True
            for s in list(self.streams.values()):
                s._fail(StreamReset("connection going away", ErrorCodes.REFUSED_STREAM))
            self.close()
        # h2 sees no stream frames: no stream events, no DataReceived, no WindowUpdated.

    def _wake_writers(self) -> None:
        for s in list(self.streams.values()):  # a sink's callback may end its stream
            s._wake()

    # -- used by streams and owners ----------------------------------------------------------

    def open_stream(self, headers: Headers) -> Stream:
        """A new stream, its request sent. The caller checked `capacity()`. Our own
        headers are not validated: the caller builds them (client.py)."""
        sid = self._next_id
        self._next_id += 2
        s = Stream(self, sid)
        self.streams[sid] = s
        # No Huffman coding: in pure Python it doubles the cost of a CONNECT's ~100 bytes.
        block = self.h2.encoder.encode(headers, huffman=False)
        self.send_control(frames.headers(sid, block, False, self.h2.max_outbound_frame_size))
        return s

    def respond(self, s: Stream, status: int, end: bool) -> None:
        if s.error is not None or s.local_ended or self.lost is not None:
            return
        encoder = self.h2.encoder
        if status == 200 and not encoder.table_size_changes:
            block = _STATUS_200
        else:
            block = encoder.encode([(":status", str(status))], huffman=False)
        if end:
            s.local_ended = True
        self.send_control(frames.headers(s.id, block, end, self.h2.max_outbound_frame_size))
        if end:
            s._maybe_done()

    def send_data(self, s: Stream, frame: bytearray | memoryview, n: int) -> None:
        """Send `n` payload bytes that follow 9 free header bytes in `frame`; n must be at
        most `s.sendable()`. The transport copies what it cannot send at once, so the caller
        may reuse `frame` on return."""
        frames.put_data_header(frame, n, s.id)
        s.send_window -= n
        self.send_window -= n
        if self._wbuf or self.h2_output:
            self.flush()  # whatever h2 or we queued before goes first
        if self.transport is not None:
            self.transport.write(memoryview(frame)[:frames.HEADER + n])

    def acknowledge(self, stream_id: int, n: int) -> None:
        """`n` flow-controlled bytes of the stream were consumed: re-open the windows."""
        if not n or self.lost is not None:
            return
        self._release_connection(n)
        s = self.streams.get(stream_id)
        if s is not None and not s.remote_ended and (inc := s.recv_window.release(n)):
            self._wbuf += frames.window_update(stream_id, inc)
        if self._wbuf and not self._dispatching:
            self.flush()

    def _release_connection(self, n: int) -> None:
        if inc := self._recv_window.release(n):
            self._queue(frames.window_update(0, inc))

    def _queue(self, frame: bytes) -> None:
        if self.h2_output:  # h2's earlier frames go first
            self.h2_output = False
            self._wbuf += self.h2.data_to_send()
        self._wbuf += frame

    def send_control(self, frame: bytes) -> None:
        """A frame that is not DATA, in order with what was queued before it; sent now,
        or with everything else a read produced when called while it is dispatched."""
        self._queue(frame)
        if not self._dispatching:
            self.flush()

    def forget(self, s: Stream) -> None:
        if self.streams.pop(s.id, None) is not None and not self.streams:
            if self.goaway:
                self.close()
            elif self.on_idle is not None:
                self.on_idle(self)

    def flush(self) -> None:
        out = b""
        if self.h2_output:
            self.h2_output = False
            out = self.h2.data_to_send()
        if self._wbuf:
            out, self._wbuf = bytes(self._wbuf) + out, bytearray()
        if out and self.transport is not None:
            self.transport.write(out)

    async def writable(self) -> None:
        if not self._writable.is_set():
            await self._writable.wait()
        if self.lost is not None:
            raise StreamReset(f"connection lost: {self.lost}")

    def capacity(self) -> int:
        if self._next_id > MAX_STREAM_ID:
            return 0  # §5.1.1: ids are used up, a new connection is needed
        limit = min(MAX_STREAMS, self.h2.remote_settings.max_concurrent_streams)
        return limit - len(self.streams)

    def usable(self) -> bool:
        return self.lost is None and not self.goaway and self.refused is None

    def close(self) -> None:
        """Graceful: GOAWAY, then a TLS close_notify."""
        if self.transport is None or self.transport.is_closing():
            return
        if self.lost is None and self.refused is None:
            self.h2_output = True
            with contextlib.suppress(h2.exceptions.ProtocolError):
                self.h2.close_connection()
            self.flush()
        self.transport.close()

    def abort(self) -> None:
        """The TLS connection dies at once (TCP reset); every stream resets its app."""
        if self.transport is not None:
            self.transport.abort()

    def peer_info(self, key: str) -> Any:
        return self.transport.get_extra_info(key) if self.transport is not None else None


def _code_name(code: int) -> str:
    try:
        return ErrorCodes(code).name
    except ValueError:
        return str(code)
