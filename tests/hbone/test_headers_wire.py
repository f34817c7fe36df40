"""HEADERS, CONTINUATION and RST_STREAM as the link parses them (RFC 9113 §5.1, §6.2, §6.4,
§6.10, §8.1-§8.5), on both ends, over real TLS:

- our server against test_wire.py's reference client (h2 alone), with frames h2 would never
  send written by hand;
- our HboneClient against a reference server made of h2 alone, which answers each CONNECT
  the way a scenario says (informational answers, malformed ones, trailers, streams it has
  no right to open)."""

from __future__ import annotations

import asyncio
import socket
import ssl
import struct
import threading
import time
from collections.abc import Callable
from typing import Any

import h2.config
import h2.connection
import h2.events
import hyperframe.frame
import pytest
from h2.errors import ErrorCodes
from h2.settings import SettingCodes, Settings

from proxy.hbone import HboneClient, HboneError
from proxy.hbone.h2link import MAX_CONTINUATIONS, MAX_HEADER_BLOCK, MAX_STREAMS
from proxy.identity.certs import CertStore
from tests.hbone.conftest import CLIENT_ID, SERVER_ID, Mesh, echo, tcp_connect
from tests.hbone.pki import CA
from tests.hbone.test_wire import TIMEOUT, RefClient, in_thread, raw_frame, round_trip

HEADERS, RST_STREAM, PING, CONTINUATION = 0x1, 0x3, 0x6, 0x9
END_STREAM, END_HEADERS, PADDED, PRIORITY = 0x1, 0x4, 0x8, 0x20


def _block(c: RefClient, extra: list[tuple[str, str]] = ()) -> bytes:  # type: ignore[assignment]
    """A CONNECT's header block from the client's own encoder (HPACK state stays in step)."""
    return c.h2.encoder.encode([(":method", "CONNECT"), (":authority", c.authority()),
                                *extra])


def _unvalidated(c: RefClient) -> None:
    """Let the reference client send field sections h2 itself would refuse to."""
    c.h2.config.validate_outbound_headers = False
    c.h2.config.normalize_outbound_headers = False


# -- well-formed shapes ----------------------------------------------------------------------

@pytest.mark.parametrize("piece", [3, 7, 40])
def test_request_split_into_continuations(ca: CA, run: Any, piece: int) -> None:
    """h2's HEADERS re-cut into HEADERS + CONTINUATIONs of `piece` bytes, END_STREAM on the
    HEADERS and END_HEADERS on the last piece: one request, answered 200, echo and end."""
    def scenario(mesh: Mesh) -> None:
        with RefClient(mesh) as c:
            c.start()
            sid = c.h2.get_next_available_stream_id()
            c.h2.send_headers(sid, [(":method", "CONNECT"), (":authority", c.authority()),
                                    ("x-long", "v" * 100)])
            wire = c.h2.data_to_send()
            assert wire[3] == HEADERS and wire[4] == END_HEADERS
            block = wire[9:]
            parts = [block[i:i + piece] for i in range(0, len(block), piece)]
            out = raw_frame(HEADERS, 0, sid, parts[0])
            for i, p in enumerate(parts[1:], 1):
                out += raw_frame(CONTINUATION, END_HEADERS if i == len(parts) - 1 else 0,
                                 sid, p)
            c.send(out)
            c.read_until(lambda: sid in c.responses, "the response")
            assert c.responses[sid][":status"] == "200"
            c.send_data(sid, b"split", end=True)
            c.flush()
            assert c.until_end(sid) == b"split"
    in_thread(ca, run, echo, scenario)


def test_request_with_padding_and_priority(ca: CA, run: Any) -> None:
    def scenario(mesh: Mesh) -> None:
        with RefClient(mesh) as c:
            c.start()
            sid = c.h2.get_next_available_stream_id()
            c.h2.send_headers(sid, [(":method", "CONNECT"), (":authority", c.authority())])
            block = c.h2.data_to_send()[9:]
            payload = bytes([20]) + struct.pack(">IB", 0, 15) + block + b"\0" * 20
            c.send(raw_frame(HEADERS, END_HEADERS | PADDED | PRIORITY, sid, payload))
            c.read_until(lambda: sid in c.responses, "the response")
            c.send_data(sid, b"padded", end=True)
            c.flush()
            assert c.until_end(sid) == b"padded"
    in_thread(ca, run, echo, scenario)


def test_headers_on_a_closed_stream_are_ignored_but_decoded(ca: CA, run: Any) -> None:
    """A HEADERS on a stream id that is closed (§5.1.1: ids only grow) is ignored, not a new
    stream. Its block still goes through the decoder: the next request refers to the
    dynamic-table entry it added, which only decodes if the server kept in step."""
    def scenario(mesh: Mesh) -> None:
        with RefClient(mesh) as c:
            c.start()
            old = c.connect()
            c.send_data(old, b"first", end=True)
            c.flush()
            assert c.until_end(old) == b"first"
            extra = [("x-entry", "only-in-the-dynamic-table")]
            c.send(raw_frame(HEADERS, END_HEADERS, old, _block(c, extra)))
            sid = c.h2.get_next_available_stream_id()
            c.h2.send_headers(sid, [(":method", "CONNECT"), (":authority", c.authority()),
                                    *extra])
            wire = c.h2.data_to_send()
            assert b"only-in-the-dynamic-table" not in wire  # sent as a table index
            c.send(wire)
            c.read_until(lambda: sid in c.responses or c.terminated is not None,
                         "the response")
            assert c.terminated is None
            assert c.responses[sid][":status"] == "200"
            assert old not in c.resets
            c.send_data(sid, b"in step", end=True)
            c.flush()
            assert c.until_end(sid) == b"in step"
    in_thread(ca, run, echo, scenario)


# -- stream errors: RST_STREAM, the app never dialled, the connection lives on ----------------

MALFORMED: list[Any] = [
    ("uppercase-name", [("X-Upper", "1")]),
    ("connection-header", [("connection", "keep-alive")]),
    ("te-gzip", [("te", "gzip")]),
    ("path-on-connect", [(":path", "/")]),
    ("scheme-on-connect", [(":scheme", "https")]),
    ("duplicate-authority", [(":authority", "127.0.0.1:1")]),
    ("response-pseudo", [(":status", "200")]),
    ("unknown-pseudo", [(":bogus", "x")]),
    ("crlf-in-value", [("x", "a\r\nb")]),
]


@pytest.mark.parametrize(("name", "extra"), [pytest.param(*m, id=m[0]) for m in MALFORMED])
def test_malformed_request_is_a_stream_error(ca: CA, run: Any, name: str,
                                             extra: list[tuple[str, str]]) -> None:
    dialled: list[int] = []

    async def app(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        dialled.append(1)
        await echo(r, w)

    def scenario(mesh: Mesh) -> None:
        with RefClient(mesh) as c:
            c.start()
            _unvalidated(c)
            sid = c.h2.get_next_available_stream_id()
            c.h2.send_headers(sid, [(":method", "CONNECT"), (":authority", c.authority()),
                                    *extra])
            c.flush()
            c.read_until(lambda: sid in c.resets or sid in c.responses, "RST_STREAM")
            assert c.resets.get(sid) == ErrorCodes.PROTOCOL_ERROR, c.responses
            good = c.connect()  # the connection goes on, HPACK in step
            c.send_data(good, name.encode(), end=True)
            c.flush()
            assert c.until_end(good) == name.encode()
            assert c.terminated is None
        assert len(dialled) == 1  # only the good stream reached the app
    in_thread(ca, run, app, scenario)


def test_trailers_on_a_tunnel_reset_it(ca: CA, run: Any) -> None:
    """§8.5: only DATA and stream management frames on a connected CONNECT stream. Trailers
    reset it (the app's connection too), nothing else."""
    got: list[object] = []

    async def app(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        try:
            got.append(await r.read())
        except ConnectionResetError as exc:
            got.append(exc)
        w.close()

    def scenario(mesh: Mesh) -> None:
        with RefClient(mesh) as c:
            c.start()
            sid = c.connect()
            c.h2.send_headers(sid, [("x-trailer", "1")], end_stream=True)
            c.flush()
            c.read_until(lambda: sid in c.resets, "RST_STREAM")
            assert c.resets[sid] == ErrorCodes.PROTOCOL_ERROR
            deadline = time.monotonic() + TIMEOUT
            while not got and time.monotonic() < deadline:
                c.quiet(0.02)
            other = c.connect()  # the connection still serves
            c.send_data(other, b"still serving", end=True)
            c.flush()
            c.read_until(lambda: other in c.ended, "END_STREAM")
            assert c.terminated is None and set(c.resets) == {sid}
    in_thread(ca, run, app, scenario)
    assert len(got) == 2 and isinstance(got[0], ConnectionResetError), got
    assert got[1] == b"still serving"


def test_streams_beyond_max_concurrent_are_refused(ca: CA, run: Any) -> None:
    """One more stream than our SETTINGS_MAX_CONCURRENT_STREAMS: refused with
    RST_STREAM(REFUSED_STREAM) (§5.1.2), never dialled; the others and the connection live,
    and once one ends a new stream is accepted."""
    def scenario(mesh: Mesh) -> None:
        with RefClient(mesh) as c:
            c.start()
            sids = [c.connect() for _ in range(MAX_STREAMS)]
            # The reference client keeps to the server's limit itself: lift it, as a
            # misbehaving client would ignore it.
            c.h2.remote_settings.max_concurrent_streams = MAX_STREAMS + 10
            c.h2.remote_settings.acknowledge()
            extra = c.request()
            c.flush()
            c.read_until(lambda: extra in c.resets or extra in c.responses, "RST_STREAM")
            assert c.resets.get(extra) == ErrorCodes.REFUSED_STREAM
            assert len(mesh.inbound) == 0  # nothing closed: no stream was dropped
            c.send_data(sids[0], b"first", end=True)
            c.flush()
            assert c.until_end(sids[0]) == b"first"
            deadline = TIMEOUT
            while len(mesh.inbound) < 1 and deadline > 0:
                c.quiet(0.05)
                deadline -= 0.05
            again = c.connect()
            c.send_data(again, b"again", end=True)
            c.flush()
            assert c.until_end(again) == b"again"
            assert c.terminated is None
    in_thread(ca, run, echo, scenario, 60.0)


# -- connection errors: GOAWAY with the right code -------------------------------------------

def _long_block(c: RefClient, sid: int) -> bytes:
    out = raw_frame(HEADERS, 0, sid + 2, b"\x00" * 16384)
    for _ in range(MAX_HEADER_BLOCK // 16384 + 1):
        out += raw_frame(CONTINUATION, 0, sid + 2, b"\x00" * 16384)
    return out


VIOLATIONS: list[Any] = [
    ("headers-on-stream-0", lambda c, sid: raw_frame(HEADERS, END_HEADERS, 0, _block(c)),
     ErrorCodes.PROTOCOL_ERROR),
    ("headers-on-even-stream",
     lambda c, sid: raw_frame(HEADERS, END_HEADERS, sid + 1, _block(c)),
     ErrorCodes.PROTOCOL_ERROR),
    ("headers-interrupted-by-ping",
     lambda c, sid: raw_frame(HEADERS, 0, sid + 2, _block(c)) + raw_frame(PING, 0, 0, b"8" * 8),
     ErrorCodes.PROTOCOL_ERROR),
    ("continuation-on-another-stream",
     lambda c, sid: raw_frame(HEADERS, 0, sid + 2, _block(c))
     + raw_frame(CONTINUATION, END_HEADERS, sid + 4, b""), ErrorCodes.PROTOCOL_ERROR),
    ("continuation-without-headers",
     lambda c, sid: raw_frame(CONTINUATION, END_HEADERS, sid, b""), ErrorCodes.PROTOCOL_ERROR),
    ("header-block-without-end", _long_block, ErrorCodes.PROTOCOL_ERROR),
    ("empty-continuations-without-end",
     lambda c, sid: raw_frame(HEADERS, 0, sid + 2, b"")
     + raw_frame(CONTINUATION, 0, sid + 2, b"") * (MAX_CONTINUATIONS + 1),
     ErrorCodes.PROTOCOL_ERROR),
    ("hpack-garbage",
     lambda c, sid: raw_frame(HEADERS, END_HEADERS, sid + 2, b"\xff\xff\xff\xff\x7f"),
     ErrorCodes.COMPRESSION_ERROR),
    ("hpack-index-beyond-tables",
     lambda c, sid: raw_frame(HEADERS, END_HEADERS, sid + 2, b"\xfe"),
     ErrorCodes.COMPRESSION_ERROR),
    ("headers-pad-too-long",
     lambda c, sid: raw_frame(HEADERS, END_HEADERS | PADDED, sid + 2, b"\x09" + b"\x82\x84"),
     ErrorCodes.PROTOCOL_ERROR),
    ("rst-stream-on-idle-stream",
     lambda c, sid: raw_frame(RST_STREAM, 0, sid + 2, struct.pack(">I", 8)),
     ErrorCodes.PROTOCOL_ERROR),
    ("rst-stream-on-even-stream",
     lambda c, sid: raw_frame(RST_STREAM, 0, sid + 1, struct.pack(">I", 8)),
     ErrorCodes.PROTOCOL_ERROR),
    ("rst-stream-on-stream-0",
     lambda c, sid: raw_frame(RST_STREAM, 0, 0, struct.pack(">I", 8)),
     ErrorCodes.PROTOCOL_ERROR),
    ("rst-stream-of-3-bytes", lambda c, sid: raw_frame(RST_STREAM, 0, sid, b"\0\0\1"),
     ErrorCodes.FRAME_SIZE_ERROR),
]


@pytest.mark.parametrize(("name", "build", "code"), [pytest.param(*v, id=v[0])
                                                     for v in VIOLATIONS])
def test_header_violation_gets_goaway(ca: CA, run: Any, name: str,
                                      build: Callable[[RefClient, int], bytes],
                                      code: int) -> None:
    def scenario(mesh: Mesh) -> None:
        with RefClient(mesh) as c:
            c.start()
            sid = c.connect()
            c.send(build(c, sid))
            c.read_until(lambda: c.terminated is not None or c.eof, "GOAWAY")
            assert c.terminated is not None, "connection closed without a GOAWAY"
            assert c.terminated.error_code == code, \
                f"GOAWAY {c.terminated.error_code!r}, want {ErrorCodes(code)!r}"
            assert c.terminated.last_stream_id == sid
            c.until_closed()
        round_trip(mesh, name.encode())
    in_thread(ca, run, echo, scenario)


# -- our client against a reference server ---------------------------------------------------

Answer = Callable[[h2.connection.H2Connection, int], None]


class RefServer:
    """One TLS connection served by h2 alone (outbound validation off, so it can answer
    what a broken server would), in a thread: each CONNECT is answered by `answer`."""

    def __init__(self, ca: CA, answer: Answer, table_size: int | None = None) -> None:
        certs = CertStore()
        certs.put(ca.leaf(str(SERVER_ID)))
        self.ctx = certs.server_context(SERVER_ID)
        self.answer = answer
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.table_size = table_size
        self.raw = bytearray()  # all it received, for checks below h2
        self.events: list[h2.events.Event] = []
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        try:
            self.listener.settimeout(TIMEOUT)
            raw, _ = self.listener.accept()
            with self.ctx.wrap_socket(raw, server_side=True) as sock:
                sock.settimeout(TIMEOUT)
                cfg = h2.config.H2Configuration(client_side=False,
                                                validate_outbound_headers=False,
                                                normalize_outbound_headers=False)
                conn = h2.connection.H2Connection(cfg)
                if self.table_size is not None:
                    conn.local_settings = Settings(client=False, initial_values={
                        SettingCodes.HEADER_TABLE_SIZE: self.table_size})
                conn.initiate_connection()
                sock.sendall(conn.data_to_send())
                while data := sock.recv(65536):
                    self.raw += data
                    for ev in conn.receive_data(data):
                        self.events.append(ev)
                        if isinstance(ev, h2.events.RequestReceived):
                            assert ev.stream_id is not None
                            self.answer(conn, ev.stream_id)
                    if out := conn.data_to_send():
                        sock.sendall(out)
        except (OSError, ssl.SSLError):
            pass  # the client went away: what it saw is what the test checks
        except BaseException as exc:  # reported by the test (server.error)
            self.error = exc

    def close(self) -> None:
        self.listener.close()
        self.thread.join(TIMEOUT)

    def resets(self) -> dict[int, int]:
        return {ev.stream_id or 0: int(ev.error_code or 0) for ev in self.events
                if isinstance(ev, h2.events.StreamReset)}


async def _client_open(ca: CA, server: RefServer) -> HboneClient:
    certs = CertStore()
    certs.put(ca.leaf(str(CLIENT_ID)))
    return HboneClient(certs, tcp_connect, tunnel_port=server.port, connect_timeout=TIMEOUT)


def _open(ca: CA, run: Any, answer: Answer) -> tuple[str | None, RefServer]:
    """Open one CONNECT through HboneClient to a RefServer: None if it got its tunnel, else
    the HboneError's text."""
    server = RefServer(ca, answer)

    async def body() -> str | None:
        client = await _client_open(ca, server)
        try:
            stream = await client.open(CLIENT_ID, SERVER_ID, ("127.0.0.1", 1))
            stream.reset(ErrorCodes.CANCEL)
            return None
        except HboneError as exc:
            return str(exc)
        finally:
            await asyncio.sleep(0.1)  # let the server read what we sent last
            await client.close()
    try:
        return run(body()), server
    finally:
        server.close()


def test_client_skips_informational_answers(ca: CA, run: Any) -> None:
    def answer(conn: h2.connection.H2Connection, sid: int) -> None:
        conn.send_headers(sid, [(":status", "100")])
        conn.send_headers(sid, [(":status", "103"), ("link", "</x>")])
        conn.send_headers(sid, [(":status", "200")])
    err, server = _open(ca, run, answer)
    assert err is None
    assert server.error is None


@pytest.mark.parametrize(("name", "status_headers"), [
    ("no-status", [("x", "1")]),
    ("switching-protocols", [(":status", "101")]),
    ("uppercase-name", [(":status", "200"), ("X-Upper", "1")]),
    ("request-pseudo", [(":status", "200"), (":path", "/")]),
])
def test_client_resets_a_malformed_answer(ca: CA, run: Any, name: str,
                                          status_headers: list[tuple[str, str]]) -> None:
    def answer(conn: h2.connection.H2Connection, sid: int) -> None:
        conn.send_headers(sid, status_headers)
    err, server = _open(ca, run, answer)
    assert err is not None and "reset locally" in err, err
    assert server.resets() == {1: ErrorCodes.PROTOCOL_ERROR}


def test_client_resets_an_informational_answer_that_ends_the_stream(ca: CA, run: Any) -> None:
    def answer(conn: h2.connection.H2Connection, sid: int) -> None:
        # h2 will not send this itself: HEADERS, END_STREAM | END_HEADERS, ":status 100"
        # (a literal with the static name :status, index 8).
        block = b"\x08\x03100"
        conn._data_to_send += (struct.pack(">I", len(block))[1:] + bytes([HEADERS, 0x5])
                               + struct.pack(">I", sid) + block)
    err, server = _open(ca, run, answer)
    assert err is not None and server.error is None, server.error
    assert server.resets() == {1: ErrorCodes.PROTOCOL_ERROR}


def test_client_ends_the_connection_on_headers_for_a_stream_it_never_opened(
        ca: CA, run: Any) -> None:
    """A server may not open streams (no push): HEADERS on an even stream is a connection
    error, answered with GOAWAY, and the pending CONNECT fails."""
    def answer(conn: h2.connection.H2Connection, sid: int) -> None:
        conn._data_to_send += (struct.pack(">I", 1)[1:] + bytes([HEADERS, END_HEADERS])
                               + struct.pack(">I", 2) + b"\x88")
    err, server = _open(ca, run, answer)
    assert err is not None
    goaway = [ev for ev in server.events if isinstance(ev, h2.events.ConnectionTerminated)]
    assert goaway and goaway[0].error_code == ErrorCodes.PROTOCOL_ERROR


def _header_blocks(wire: bytes) -> list[bytes]:
    """The field blocks of the HEADERS frames in `wire` (whole frames, no preface)."""
    out, pos = [], 0
    while pos + 9 <= len(wire):
        f, length = hyperframe.frame.Frame.parse_frame_header(memoryview(wire[pos:pos + 9]))
        f.parse_body(memoryview(wire[pos + 9:pos + 9 + length]))
        if isinstance(f, hyperframe.frame.HeadersFrame):
            out.append(bytes(f.data))
        pos += 9 + length
    return out


def test_client_header_table_size_follows_the_servers_settings(ca: CA, run: Any) -> None:
    """The server shrinks its HPACK table to 0 in its first SETTINGS: the next request block
    must start with a dynamic table size update to 0 (RFC 7541 §4.2, §6.3), the later
    ones must not repeat it, and all must decode."""
    server = RefServer(ca, lambda conn, sid: conn.send_headers(sid, [(":status", "200")]),
                       table_size=0)

    async def body() -> None:
        client = await _client_open(ca, server)
        try:
            for _ in range(3):
                stream = await client.open(CLIENT_ID, SERVER_ID, ("127.0.0.1", 1),
                                           src_addr=("127.0.0.1", 4000), host="h.svc")
                stream.reset(ErrorCodes.CANCEL)
        finally:
            await client.close()
    try:
        run(body())
    finally:
        server.close()
    assert server.error is None
    assert len([ev for ev in server.events if isinstance(ev, h2.events.RequestReceived)]) == 3
    blocks = _header_blocks(bytes(server.raw[24:]))
    assert len(blocks) == 3
    # The first request may go before the server's SETTINGS are in (allowed: the table is
    # 4096 until then); the second waited for an answer, so they were in by then.
    updates = [b[0] & 0xE0 == 0x20 for b in blocks]
    assert updates in ([True, False, False], [False, True, False]), blocks
    assert blocks[updates.index(True)][0] == 0x20  # to size 0


def test_server_answers_start_with_the_table_size_update(ca: CA, run: Any) -> None:
    """The same on our server's side: after the client's SETTINGS shrink the table to 0,
    the next answer (200, otherwise one static-table byte) starts with the size update."""
    def scenario(mesh: Mesh) -> None:
        with RefClient(mesh) as c:
            raw = bytearray()
            receive = c.h2.receive_data

            def capture(data: Any) -> list[h2.events.Event]:
                raw.extend(data)
                return receive(data)
            c.h2.receive_data = capture  # type: ignore[method-assign]
            c.start()
            first = c.connect()
            c.h2.update_settings({SettingCodes.HEADER_TABLE_SIZE: 0})
            c.flush()
            acked = c.settings_acked
            c.read_until(lambda: c.settings_acked > acked, "SETTINGS ACK")
            second, third = c.connect(), c.connect()
            blocks = _header_blocks(bytes(raw))
            assert len(blocks) == 3, (first, second, third)
            assert blocks[0] == b"\x88"
            assert blocks[1] == b"\x20\x88"  # size update to 0, then :status 200
            assert blocks[2] == b"\x88"
    in_thread(ca, run, echo, scenario)
