"""Our HBONE server against a reference HTTP/2 client: the `h2` library alone (not our link),
over a blocking TLS socket in a thread. h2 checks everything the server sends (frame sizes,
flow-control windows, stream states) and raises on a violation, so it is the oracle; frames
h2 would never send (bad padding, oversized frames, zero increments, ...) are written by
hand, byte by byte as RFC 9113 §4.1 lays them out.

Each scenario is a plain function run with `asyncio.to_thread` while the loop runs the mesh.
Every blocking call has a socket timeout and every wait a deadline: a hang is a failure."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import random
import select
import socket
import ssl
import struct
import threading
import time
from collections import defaultdict
from collections.abc import Callable
from types import TracebackType
from typing import Any

import h2.config
import h2.connection
import h2.events
import pytest
from h2.errors import ErrorCodes
from h2.settings import SettingCodes, Settings

from proxy.hbone.h2link import CONNECTION_WINDOW, MAX_FRAME, STREAM_WINDOW
from tests.hbone.conftest import CLIENT_ID, AppHandler, Mesh, echo
from tests.hbone.pki import CA

TIMEOUT = 5.0  # any single wait for the server
# The largest frame that fits H2Link's 256 KiB read buffer whatever else is pending in it
# (see test_frames_of_max_frame_size for bigger ones).
BIG_FRAME = 200_000

# Frame types and flags (RFC 9113 §6), written out here rather than taken from frames.py:
# the raw frames below must not share a bug with the code under test.
DATA, HEADERS, PING, WINDOW_UPDATE = 0x0, 0x1, 0x6, 0x8
END_STREAM, PADDED = 0x1, 0x8


def raw_frame(ftype: int, flags: int, stream_id: int, payload: bytes = b"",
              length: int | None = None) -> bytes:
    """A frame as bytes; `length` overrides the header's length field (for lies)."""
    n = len(payload) if length is None else length
    return struct.pack(">I", n)[1:] + bytes([ftype, flags]) + struct.pack(">I", stream_id) \
        + payload


def blob(seed: int, size: int) -> bytes:
    """Distinct bytes everywhere: a dropped, duplicated or misplaced byte shows."""
    return random.Random(seed).randbytes(size)


def _text(value: str | bytes) -> str:
    return value if isinstance(value, str) else value.decode()


class Stalled(AssertionError):
    pass


class RefClient:
    """An HTTP/2 client made of h2 and a blocking ssl.SSLSocket. Not thread-safe: one thread
    drives it. Events are recorded per stream; received DATA is acknowledged as it is
    processed (`auto_ack`), which is what re-opens the server's send windows."""

    def __init__(self, mesh: Mesh, initial_window: int | None = None,
                 timeout: float = TIMEOUT) -> None:
        ctx = mesh.client_certs.client(CLIENT_ID)[1]
        raw = socket.create_connection(mesh.tunnel_l.getsockname()[:2], timeout=timeout)
        try:
            self.sock = ctx.wrap_socket(raw, server_hostname=None)
        except BaseException:
            raw.close()
            raise
        self.sock.settimeout(timeout)
        assert self.sock.selected_alpn_protocol() == "h2"
        self.app_port = mesh.app_addr[1]
        cfg = h2.config.H2Configuration(client_side=True, header_encoding="utf-8")
        self.h2 = h2.connection.H2Connection(cfg)
        values = {SettingCodes.ENABLE_PUSH: 0}
        if initial_window is not None:
            values[SettingCodes.INITIAL_WINDOW_SIZE] = initial_window
        # As initial values these are in force for our own streams from the start.
        self.h2.local_settings = Settings(client=True, initial_values=values)
        self.h2.initiate_connection()  # queued, not sent: see start()
        self.data: defaultdict[int, bytearray] = defaultdict(bytearray)
        self.frames: defaultdict[int, int] = defaultdict(int)  # DATA frames received
        self.ended: set[int] = set()
        self.resets: dict[int, int] = {}
        self.responses: dict[int, dict[str, str]] = {}
        self.terminated: h2.events.ConnectionTerminated | None = None
        self.settings_acked = 0
        self.remote_settings = 0
        self.pings_acked = 0
        self.eof = False
        self.auto_ack = True
        self.auto_flush = True
        self.held: list[tuple[int, int]] = []  # (stream, flow-controlled length) not acked
        self.on_data: Callable[[RefClient, h2.events.DataReceived], None] | None = None

    def __enter__(self) -> RefClient:
        return self

    def __exit__(self, t: type[BaseException] | None, e: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.sock.close()

    # -- the wire --------------------------------------------------------------------------

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def flush(self) -> None:
        if out := self.h2.data_to_send():
            self.sock.sendall(out)

    def read(self, what: str = "the server") -> None:
        """One recv (at most TIMEOUT), its frames handled by h2, our answers sent."""
        if self.eof:
            raise AssertionError(f"connection closed while waiting for {what}")
        try:
            data = self.sock.recv(1 << 16)
        except TimeoutError:
            raise Stalled(f"nothing from the server in {TIMEOUT}s waiting for {what}") from None
        except ConnectionResetError:
            data = b""
        if not data:
            self.eof = True
            return
        self._handle(self.h2.receive_data(data))  # raises on any protocol violation
        if self.auto_flush and self.terminated is None:
            self.flush()

    def poll(self) -> None:
        """Read whatever is already there, without waiting."""
        while not self.eof and (self.sock.pending()
                                or select.select([self.sock], [], [], 0)[0]):
            self.read()

    def read_until(self, done: Callable[[], bool], what: str,
                   timeout: float = 3 * TIMEOUT) -> None:
        deadline = time.monotonic() + timeout
        while not done():
            if time.monotonic() > deadline:
                raise Stalled(f"no {what} within {timeout}s")
            self.read(what)

    def quiet(self, seconds: float) -> None:
        """Keep reading for `seconds`."""
        end = time.monotonic() + seconds
        while not self.eof and (left := end - time.monotonic()) > 0:
            if self.sock.pending() or select.select([self.sock], [], [], left)[0]:
                self.read()

    def _handle(self, events: list[h2.events.Event]) -> None:
        for ev in events:
            if isinstance(ev, h2.events.DataReceived):
                sid = ev.stream_id or 0
                self.data[sid] += ev.data or b""
                self.frames[sid] += 1
                if self.on_data is not None:
                    self.on_data(self, ev)
                n = ev.flow_controlled_length or 0
                if self.auto_ack:
                    self.h2.acknowledge_received_data(n, sid)
                else:
                    self.held.append((sid, n))
            elif isinstance(ev, h2.events.ResponseReceived):
                self.responses[ev.stream_id or 0] = {_text(k): _text(v)
                                                     for k, v in ev.headers or []}
            elif isinstance(ev, h2.events.StreamEnded):
                self.ended.add(ev.stream_id or 0)
            elif isinstance(ev, h2.events.StreamReset):
                self.resets[ev.stream_id or 0] = int(ev.error_code or 0)
            elif isinstance(ev, h2.events.ConnectionTerminated):
                self.terminated = ev
            elif isinstance(ev, h2.events.SettingsAcknowledged):
                self.settings_acked += 1
            elif isinstance(ev, h2.events.RemoteSettingsChanged):
                self.remote_settings += 1
            elif isinstance(ev, h2.events.PingAckReceived):
                self.pings_acked += 1

    def release_held(self) -> None:
        held, self.held = self.held, []
        for sid, n in held:
            self.h2.acknowledge_received_data(n, sid)
        self.flush()

    # -- HTTP/2 ----------------------------------------------------------------------------

    def start(self) -> None:
        """Preface and SETTINGS out; back once the server's SETTINGS (and the connection
        WINDOW_UPDATE sent with them) are in and it has acknowledged ours."""
        self.flush()
        self.read_until(lambda: self.remote_settings > 0 and self.settings_acked > 0,
                        "the server's SETTINGS and SETTINGS ACK")

    def authority(self) -> str:
        return f"127.0.0.1:{self.app_port}"

    def request(self) -> int:
        sid: int = self.h2.get_next_available_stream_id()
        self.h2.send_headers(sid, [(":method", "CONNECT"), (":authority", self.authority())])
        return sid

    def connect(self) -> int:
        """A CONNECT tunnel to the app, once the server answered 200."""
        sid = self.request()
        self.flush()
        self.read_until(lambda: sid in self.responses or sid in self.resets,
                        f"a response on stream {sid}")
        assert self.responses.get(sid, {}).get(":status") == "200", (self.responses,
                                                                      self.resets)
        return sid

    def wait_window(self, sid: int, need: int) -> None:
        """Until the server's windows let `need` flow-controlled bytes go on `sid`."""
        deadline = time.monotonic() + 3 * TIMEOUT
        while self.h2.local_flow_control_window(sid) < need:
            if time.monotonic() > deadline:
                raise Stalled(f"send window stuck at {self.h2.local_flow_control_window(sid)}")
            self.flush()
            self.read(f"window for {need} bytes on stream {sid}")

    def send_data(self, sid: int, data: bytes, pad: int | None = None,
                  end: bool = False) -> None:
        """Queue one DATA frame (h2 builds it and debits its windows); caller flushes."""
        self.wait_window(sid, len(data) + (0 if pad is None else pad + 1))
        self.h2.send_data(sid, data, end_stream=end, pad_length=pad)

    def until_end(self, sid: int) -> bytes:
        self.read_until(lambda: sid in self.ended or sid in self.resets or self.eof,
                        f"END_STREAM on stream {sid}")
        assert sid not in self.resets, f"stream reset: {ErrorCodes(self.resets[sid])!r}"
        assert sid in self.ended
        return bytes(self.data[sid])

    def until_closed(self) -> None:
        """The server closes the connection (after a GOAWAY)."""
        deadline = time.monotonic() + 3 * TIMEOUT
        while not self.eof:
            if time.monotonic() > deadline:
                raise Stalled("connection still open")
            with contextlib.suppress(ssl.SSLError, OSError):
                self.read("the connection's end")
                continue
            break


def in_thread(ca: CA, run: Any, app: AppHandler, scenario: Callable[[Mesh], None],
              timeout: float = 30.0) -> None:
    """Run `scenario(mesh)` in a thread while the loop serves. An exception escaping one of
    the loop's callbacks (the server's TLS transport or link) fails the test even if the
    connection recovers; only its text is kept, so its traceback does not keep buffers
    alive."""
    errors: list[str] = []

    def on_error(loop: asyncio.AbstractEventLoop, ctx: dict[str, Any]) -> None:
        errors.append(f"{ctx.get('message')}: {ctx.get('exception')!r}")

    async def body() -> None:
        asyncio.get_running_loop().set_exception_handler(on_error)
        mesh = await Mesh(ca, app).start()
        try:
            await asyncio.to_thread(scenario, mesh)
        finally:
            await mesh.stop()
    run(body(), timeout)
    assert not errors, errors


def round_trip(mesh: Mesh, msg: bytes = b"ping") -> None:
    """A new connection, a CONNECT to the echo app, `msg` back: the server still serves."""
    with RefClient(mesh) as c:
        c.start()
        sid = c.connect()
        c.send_data(sid, msg, end=True)
        c.flush()
        assert c.until_end(sid) == msg


def sender(payload: bytes) -> AppHandler:
    """An app that sends `payload` and closes."""
    async def app(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        w.write(payload)
        with contextlib.suppress(ConnectionError):
            await w.drain()
        w.close()
    return app


async def sink(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
    """An app that reads to EOF, then answers with how much it got and its SHA-256."""
    h, n = hashlib.sha256(), 0
    while data := await r.read(1 << 20):
        h.update(data)
        n += len(data)
    w.write(b"%d %s" % (n, h.hexdigest().encode()))
    await w.drain()
    w.close()


# -- a. DATA in all its shapes ----------------------------------------------------------------

def test_coalesced_padded_and_final_data(ca: CA, run: Any) -> None:
    def scenario(mesh: Mesh) -> None:
        with RefClient(mesh) as c:
            c.start()
            sid = c.connect()
            sent = bytearray()

            def frame(data: bytes, pad: int | None = None, end: bool = False) -> None:
                c.send_data(sid, data, pad, end)
                sent.extend(data)

            # Several frames in one write (one TLS record: < 16 KiB in all).
            for i, size in enumerate([1, 2, 100, 1000, 3000, 17, 9000]):
                frame(blob(i, size))
            c.flush()
            # Padded frames, each pad length on its own and then all in one write.
            for i, pad in enumerate([0, 1, 2, 9, 100, 254, 255]):
                frame(blob(100 + i, 500 + i), pad)
                c.flush()
            for i, pad in enumerate([0, 255, 3, 128, 0, 64]):
                frame(blob(200 + i, 40 * i), pad)  # 40 * 0: padding without data
            frame(b"", 0)  # PADDED with nothing but the pad length byte
            c.flush()
            # Frames as big as the link's read buffer lets through in one piece.
            frame(blob(300, BIG_FRAME - 256), 255)
            frame(blob(301, BIG_FRAME))
            c.flush()
            # The last DATA carries payload and END_STREAM (and padding).
            frame(blob(400, 12345), 33, end=True)
            c.flush()
            got = c.until_end(sid)
            assert len(got) == len(sent)
            assert got == bytes(sent)
            assert not c.resets and c.terminated is None
    in_thread(ca, run, echo, scenario)


def test_frames_of_max_frame_size(ca: CA, run: Any) -> None:
    """Frames as long as our SETTINGS_MAX_FRAME_SIZE (1 MiB) allows, padded or not: longer
    than the link's read buffer, which must grow while the transport may still hold a view
    of it (a bytearray with views cannot be resized: BufferError in the read callback)."""
    def scenario(mesh: Mesh) -> None:
        with RefClient(mesh) as c:
            c.start()
            sid = c.connect()
            parts = [blob(1, MAX_FRAME), blob(2, MAX_FRAME - 256), blob(3, 300_000)]
            c.send_data(sid, parts[0])
            c.send_data(sid, parts[1], 255)
            c.send_data(sid, parts[2], 10, end=True)
            c.flush()
            assert c.until_end(sid) == b"".join(parts)
    in_thread(ca, run, echo, scenario)


def test_final_data_with_end_stream_unpadded(ca: CA, run: Any) -> None:
    """The only DATA frame carries END_STREAM: the app gets the bytes, then EOF."""
    def scenario(mesh: Mesh) -> None:
        with RefClient(mesh) as c:
            c.start()
            sid = c.connect()
            c.send_data(sid, b"all at once", end=True)
            c.flush()
            assert c.until_end(sid) == b"all at once"
    in_thread(ca, run, echo, scenario)


# -- b. frames split across TLS records --------------------------------------------------------

def test_frames_split_one_byte_per_record(ca: CA, run: Any) -> None:
    """The preface, SETTINGS, HEADERS, DATA (padded or not), PING and WINDOW_UPDATEs, each
    byte its own TLS record: every frame header and payload arrives in pieces."""
    def scenario(mesh: Mesh) -> None:
        with RefClient(mesh) as c:
            sid = c.request()
            parts = [blob(1, 10), blob(2, 300), b"", blob(3, 1), blob(4, 77)]
            c.h2.send_data(sid, parts[0])
            c.h2.send_data(sid, parts[1], pad_length=5)
            c.h2.increment_flow_control_window(1000)  # connection WINDOW_UPDATE
            c.h2.increment_flow_control_window(1000, sid)  # stream WINDOW_UPDATE
            c.h2.send_data(sid, parts[2], pad_length=0)
            c.h2.ping(b"12345678")
            c.h2.send_data(sid, parts[3], pad_length=200)
            c.h2.send_data(sid, parts[4])
            wire = c.h2.data_to_send()
            assert len(wire) > 600
            for i in range(len(wire)):
                c.send(wire[i:i + 1])
            c.read_until(lambda: sid in c.responses and c.pings_acked == 1
                         and len(c.data[sid]) == sum(map(len, parts)), "the echo")
            assert c.responses[sid][":status"] == "200"
            assert bytes(c.data[sid]) == b"".join(parts)
            # END_STREAM alone, split too
            c.h2.end_stream(sid)
            end = c.h2.data_to_send()
            for i in range(len(end)):
                c.send(end[i:i + 1])
            assert c.until_end(sid) == b"".join(parts)
    in_thread(ca, run, echo, scenario)


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_frames_split_at_random_points(ca: CA, run: Any, seed: int) -> None:
    """300-odd KiB of frames, big and small, padded and not, cut at random points (seeded),
    each piece one sendall: TLS records that end anywhere in a header or a payload."""
    def scenario(mesh: Mesh) -> None:
        rnd = random.Random(seed)
        with RefClient(mesh) as c:
            c.start()
            sid = c.connect()
            sent = bytearray()
            sizes = [rnd.choice([0, 1, 2, 8, 9, 10, rnd.randint(0, 3000)]) for _ in range(300)]
            sizes[rnd.randrange(300)] = BIG_FRAME  # many TLS records (and reads) long
            sizes[rnd.randrange(300)] = 70000
            for i, size in enumerate(sizes):
                data = blob(seed * 1000 + i, size)
                pad = rnd.choice([None, None, 0, rnd.randint(0, 255)])
                if rnd.random() < 0.05:
                    c.h2.increment_flow_control_window(rnd.randint(1, 1000), sid)
                c.send_data(sid, data, pad, end=i == len(sizes) - 1)
                sent += data
            wire = c.h2.data_to_send()
            assert STREAM_WINDOW > len(wire) > BIG_FRAME  # h2 never had to wait
            # While we send, the echo comes back: read it in between, but our own answers
            # (WINDOW_UPDATE for the echo) must wait until a frame boundary, i.e. the end.
            c.auto_flush = False
            pos = 0
            while pos < len(wire):
                n = rnd.choice([1, 2, 3, 5, 8, 9, 10, rnd.randint(1, 100),
                                rnd.randint(1, 20000), rnd.randint(1, 40000)])
                c.send(wire[pos:pos + n])
                pos += n
                c.poll()
            c.auto_flush = True
            c.flush()
            got = c.until_end(sid)
            assert len(got) == len(sent)
            assert hashlib.sha256(got).digest() == hashlib.sha256(sent).digest()
    in_thread(ca, run, echo, scenario)


# -- c. flow control toward a peer with a small window -----------------------------------------

DOWN = blob(7, 1 << 20)


def _small_window_download(mesh: Mesh, schedule: list[tuple[int, int]]) -> None:
    """Download DOWN with SETTINGS_INITIAL_WINDOW_SIZE 1000, acknowledging chunk by chunk
    (a little late now and then); at each (offset, size) of the schedule, change the initial
    window. A size of 0 is held until the server has seen it: no DATA may come then."""
    with RefClient(mesh, initial_window=1000) as c:
        c.start()
        sid = c.connect()
        max_seen = 0

        def on_data(cl: RefClient, ev: h2.events.DataReceived) -> None:
            nonlocal max_seen
            max_seen = max(max_seen, ev.flow_controlled_length or 0)
            if cl.frames[sid] % 50 == 0:
                time.sleep(0.002)  # a slow reader: the server meets a closed window
        c.on_data = on_data
        for offset, size in schedule:
            def got_offset(o: int = offset) -> bool:
                return len(c.data[sid]) >= o or sid in c.ended

            c.read_until(got_offset, f"{offset} bytes")
            assert sid not in c.ended
            acked = c.settings_acked

            def got_ack(a: int = acked) -> bool:
                return c.settings_acked > a

            c.h2.update_settings({SettingCodes.INITIAL_WINDOW_SIZE: size})
            c.flush()
            c.read_until(got_ack, "SETTINGS ACK")
            if size == 0:
                # In force on both sides: h2 raises on any DATA now; and none may come.
                before = len(c.data[sid])
                c.quiet(0.3)
                assert len(c.data[sid]) == before
        got = c.until_end(sid)
        assert len(got) == len(DOWN)
        assert got == DOWN
        assert max_seen <= max([1000] + [s for _, s in schedule])
        assert c.frames[sid] > len(DOWN) // max([1000] + [s for _, s in schedule])


def test_small_window_lowered_and_raised(ca: CA, run: Any) -> None:
    in_thread(ca, run, sender(DOWN),
              lambda mesh: _small_window_download(mesh, [(200_000, 300), (400_000, 5000),
                                                         (700_000, 1000)]))


def test_small_window_closed_then_reopened(ca: CA, run: Any) -> None:
    """To 0 and back: the change from 0 is a change by +1000 (not from the default 65535)."""
    in_thread(ca, run, sender(DOWN),
              lambda mesh: _small_window_download(mesh, [(300_000, 0), (300_000, 1000)]))


def test_connection_window_binds_across_streams(ca: CA, run: Any) -> None:
    """Three downloads at once, each stream allowed 1 MiB but the connection only the
    default 65535: together they must stay within the connection window. While we hold our
    acknowledgements the server sends exactly what the connection window allows, and not a
    byte more (h2 would raise FlowControlError)."""
    def scenario(mesh: Mesh) -> None:
        with RefClient(mesh, initial_window=1 << 20) as c:
            c.start()
            sids = [c.connect() for _ in range(3)]
            c.auto_ack = False
            for _ in range(4):
                # remote_flow_control_window: min(stream window, connection window) as h2
                # counts them; the streams' are far from used up, so it is the connection's.
                c.read_until(lambda: c.h2.remote_flow_control_window(sids[0]) == 0,
                             "the connection window used up")
                c.quiet(0.1)
                c.release_held()  # h2 hands (some of) the credit back
            c.auto_ack = True
            c.release_held()
            for sid in sids:
                assert c.until_end(sid) == DOWN
    in_thread(ca, run, sender(DOWN), scenario)


def test_bulk_download_to_a_late_reader(ca: CA, run: Any) -> None:
    """Large windows (16 MiB per stream, 64 MiB for the connection) and a client that reads
    nothing for a while: the server's TLS writes fill the socket and must queue the rest,
    in order, and resume (TlsTransport.write, pause/resume_writing)."""
    down = blob(9, 24 << 20)

    def scenario(mesh: Mesh) -> None:
        with RefClient(mesh, initial_window=16 << 20) as c:
            c.h2.increment_flow_control_window((64 << 20) - 65535)
            c.start()
            sid = c.connect()
            time.sleep(0.5)  # let the server run into a full socket
            got = c.until_end(sid)
            assert len(got) == len(down)
            assert hashlib.sha256(got).digest() == hashlib.sha256(down).digest()
    in_thread(ca, run, sender(down), scenario)


@pytest.mark.parametrize(("before", "after"), [
    pytest.param(1000, 3000, id="raised"),
    pytest.param(65535, 1000, id="lowered"),
])
def test_new_stream_and_settings_in_one_read(ca: CA, run: Any, before: int,
                                             after: int) -> None:
    """HEADERS opening a stream, then SETTINGS changing INITIAL_WINDOW_SIZE, in one write.
    The stream is opened under the old initial window and the change applies to it by the
    delta (§6.9.2): its window must end up at `after`."""
    def scenario(mesh: Mesh) -> None:
        with RefClient(mesh, initial_window=before) as c:
            c.start()
            sid = c.request()
            c.h2.update_settings({SettingCodes.INITIAL_WINDOW_SIZE: after})
            c.flush()  # HEADERS and SETTINGS in one TLS record
            got = c.until_end(sid)
            assert c.responses[sid][":status"] == "200"
            assert got == DOWN[:200_000]
    in_thread(ca, run, sender(DOWN[:200_000]), scenario)


# -- d. padding is flow-controlled, and credited back ------------------------------------------

def test_padding_credit_comes_back(ca: CA, run: Any) -> None:
    """20 MiB of flow-controlled DATA, mostly padding, some frames nothing but padding: more
    than the stream window (4 MiB) and the connection window (16 MiB), so the transfer ends
    only if the server returns the credit of every padding byte, on both windows."""
    total = CONNECTION_WINDOW + (4 << 20)

    def scenario(mesh: Mesh) -> None:
        rnd = random.Random(5)
        with RefClient(mesh) as c:
            c.start()
            sid = c.connect()
            data = blob(11, 1 << 20)
            pos = flow = 0
            frames_sent = 0
            while flow < total:
                if rnd.random() < 0.2:
                    chunk = b""
                else:
                    chunk = data[pos % len(data):pos % len(data) + rnd.randint(1, 32)]
                pad = rnd.choice([200, 254, 255, 255])
                c.send_data(sid, chunk, pad)
                pos += len(chunk)
                flow += len(chunk) + pad + 1
                frames_sent += 1
                if frames_sent % 256 == 0:
                    c.flush()
            c.h2.end_stream(sid)
            c.flush()
            sent = (data * (pos // len(data) + 1))[:pos]
            assert pos < flow // 5  # mostly padding
            got = c.until_end(sid)
            assert got == b"%d %s" % (pos, hashlib.sha256(sent).hexdigest().encode())
    in_thread(ca, run, sink, scenario, 60.0)


# -- e. connection errors: GOAWAY with the right code ------------------------------------------

MAX_INCREMENT = (1 << 31) - 1

VIOLATIONS: list[Any] = [
    # (id, frame on stream `sid` (an open tunnel), expected GOAWAY code)
    ("data-on-stream-0", lambda sid: raw_frame(DATA, 0, 0, b"hello"),
     ErrorCodes.PROTOCOL_ERROR),
    ("padded-data-on-stream-0", lambda sid: raw_frame(DATA, PADDED, 0, b"\x01ab"),
     ErrorCodes.PROTOCOL_ERROR),
    ("connection-window-update-of-0",
     lambda sid: raw_frame(WINDOW_UPDATE, 0, 0, struct.pack(">I", 0)),
     ErrorCodes.PROTOCOL_ERROR),
    ("pad-length-equal-to-frame-length",
     lambda sid: raw_frame(DATA, PADDED, sid, b"\x05" + b"abcd"), ErrorCodes.PROTOCOL_ERROR),
    ("pad-length-beyond-frame-length",
     lambda sid: raw_frame(DATA, PADDED, sid, b"\xff" + b"abcd"), ErrorCodes.PROTOCOL_ERROR),
    ("padded-with-end-stream-pad-too-long",
     lambda sid: raw_frame(DATA, PADDED | END_STREAM, sid, b"\x01"),
     ErrorCodes.PROTOCOL_ERROR),
    ("padded-without-pad-length", lambda sid: raw_frame(DATA, PADDED, sid),
     ErrorCodes.FRAME_SIZE_ERROR),
    ("data-over-max-frame-size", lambda sid: raw_frame(DATA, 0, sid, length=MAX_FRAME + 1),
     ErrorCodes.FRAME_SIZE_ERROR),
    ("ping-over-max-frame-size", lambda sid: raw_frame(PING, 0, 0, length=MAX_FRAME + 1),
     ErrorCodes.FRAME_SIZE_ERROR),
    ("headers-of-16-mib", lambda sid: raw_frame(HEADERS, 0x4, sid + 2, length=(1 << 24) - 1),
     ErrorCodes.FRAME_SIZE_ERROR),
    ("connection-window-update-of-3-bytes",
     lambda sid: raw_frame(WINDOW_UPDATE, 0, 0, b"\0\0\1"), ErrorCodes.FRAME_SIZE_ERROR),
    ("stream-window-update-of-3-bytes",
     lambda sid: raw_frame(WINDOW_UPDATE, 0, sid, b"\0\0\1"), ErrorCodes.FRAME_SIZE_ERROR),
    ("stream-window-update-of-5-bytes",
     lambda sid: raw_frame(WINDOW_UPDATE, 0, sid, b"\0\0\0\1\0"), ErrorCodes.FRAME_SIZE_ERROR),
    ("data-on-idle-stream", lambda sid: raw_frame(DATA, 0, 99, b"who?"),
     ErrorCodes.PROTOCOL_ERROR),
    ("padded-data-on-idle-stream", lambda sid: raw_frame(DATA, PADDED, 99, b"\x02who??"),
     ErrorCodes.PROTOCOL_ERROR),
    ("empty-data-with-end-stream-on-idle-stream",
     lambda sid: raw_frame(DATA, END_STREAM, 99), ErrorCodes.PROTOCOL_ERROR),
    ("connection-window-overflow",
     lambda sid: raw_frame(WINDOW_UPDATE, 0, 0, struct.pack(">I", MAX_INCREMENT)),
     ErrorCodes.FLOW_CONTROL_ERROR),
    # §5.1: on an idle stream anything but HEADERS or PRIORITY is a connection error (on a
    # closed one a WINDOW_UPDATE is ignored: test_window_update_on_a_closed_stream_is_ignored)
    ("window-update-on-idle-stream",
     lambda sid: raw_frame(WINDOW_UPDATE, 0, 99, struct.pack(">I", 1)),
     ErrorCodes.PROTOCOL_ERROR),
]



@pytest.mark.parametrize(("name", "build", "code"), [
    pytest.param(*v, id=v[0]) if isinstance(v[0], str) else v for v in VIOLATIONS])
def test_protocol_violation_gets_goaway(ca: CA, run: Any, name: str,
                                        build: Callable[[int], bytes], code: int) -> None:
    def scenario(mesh: Mesh) -> None:
        with RefClient(mesh) as c:
            c.start()
            sid = c.connect()
            c.send_data(sid, b"before")
            c.flush()
            c.read_until(lambda: bytes(c.data[sid]) == b"before", "the echo")
            c.send(build(sid))
            c.read_until(lambda: c.terminated is not None or c.eof, "GOAWAY")
            assert c.terminated is not None, "connection closed without a GOAWAY"
            assert c.terminated.error_code == code, \
                f"GOAWAY {c.terminated.error_code!r}, want {ErrorCodes(code)!r}"
            assert c.terminated.last_stream_id == sid
            c.until_closed()  # and the server closes the connection
        # The server survives: a new connection is served.
        round_trip(mesh, name.encode())
        deadline = time.monotonic() + TIMEOUT
        while mesh.server.links and time.monotonic() < deadline:
            time.sleep(0.01)  # the link of the round trip may still be closing
        assert not mesh.server.links
    in_thread(ca, run, echo, scenario)


# -- f. stream errors: RST_STREAM, the connection lives on --------------------------------------

@pytest.mark.parametrize(("increment", "code"), [
    pytest.param(0, ErrorCodes.PROTOCOL_ERROR, id="increment-0"),
    pytest.param(MAX_INCREMENT, ErrorCodes.FLOW_CONTROL_ERROR, id="overflow"),
])
def test_stream_window_update_error_resets_only_that_stream(ca: CA, run: Any, increment: int,
                                                            code: int) -> None:
    def scenario(mesh: Mesh) -> None:
        with RefClient(mesh) as c:
            c.start()
            other = c.connect()
            sid = c.connect()
            c.send(raw_frame(WINDOW_UPDATE, 0, sid, struct.pack(">I", increment)))
            c.read_until(lambda: sid in c.resets, f"RST_STREAM on stream {sid}")
            assert c.resets[sid] == code
            assert c.terminated is None
            # The stream opened before, and one opened after, both still work.
            new = c.connect()
            for s, msg in ((other, b"older stream"), (new, b"newer stream")):
                c.send_data(s, msg, end=True)
            c.flush()
            assert c.until_end(other) == b"older stream"
            assert c.until_end(new) == b"newer stream"
            assert c.terminated is None
            assert set(c.resets) == {sid}
    in_thread(ca, run, echo, scenario)


@pytest.mark.parametrize("how", ["ended", "reset"])
def test_window_update_on_a_closed_stream_is_ignored(ca: CA, run: Any, how: str) -> None:
    """A WINDOW_UPDATE may trail a stream's end (§5.1, closed): no error of any kind."""
    def scenario(mesh: Mesh) -> None:
        with RefClient(mesh) as c:
            c.start()
            sid = c.connect()
            if how == "ended":
                c.send_data(sid, b"bye", end=True)
                c.flush()
                assert c.until_end(sid) == b"bye"
            else:
                c.h2.reset_stream(sid, ErrorCodes.CANCEL)
                c.flush()
            c.send(raw_frame(WINDOW_UPDATE, 0, sid, struct.pack(">I", 1000)))
            c.quiet(0.2)
            assert c.terminated is None and sid not in c.resets
            new = c.connect()
            c.send_data(new, b"still here", end=True)
            c.flush()
            assert c.until_end(new) == b"still here"
            assert c.terminated is None and not c.resets
    in_thread(ca, run, echo, scenario)


def test_data_after_end_stream_resets_the_stream(ca: CA, run: Any) -> None:
    """DATA on a stream the client already ended (half-closed remote, §5.1) is a stream error
    STREAM_CLOSED: RST_STREAM, the app's connection is reset, the connection lives on."""
    app_saw: list[object] = []
    rst_seen = threading.Event()

    async def app(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        try:
            app_saw.append(await r.read())  # to the client's END_STREAM; our side stays open
            await asyncio.to_thread(rst_seen.wait, TIMEOUT)
            for _ in range(100):  # a write fails once the reset has come (TCP RST)
                w.write(b"late")
                await w.drain()
                await asyncio.sleep(0.02)
            app_saw.append("not reset")
        except ConnectionResetError as exc:
            app_saw.append(exc)
        w.close()

    def scenario(mesh: Mesh) -> None:
        with RefClient(mesh) as c:
            c.start()
            sid = c.connect()
            c.send_data(sid, b"the end", end=True)
            c.flush()
            c.send(raw_frame(DATA, 0, sid, b"after the end"))
            c.read_until(lambda: sid in c.resets, f"RST_STREAM on stream {sid}")
            rst_seen.set()
            assert c.resets[sid] == ErrorCodes.STREAM_CLOSED
            deadline = time.monotonic() + 2 * TIMEOUT
            while len(app_saw) < 2 and time.monotonic() < deadline:
                c.quiet(0.01)
            assert app_saw[0] == b"the end"
            assert isinstance(app_saw[1], ConnectionResetError), app_saw
            assert not c.data[sid]  # nothing of the app's "late" came through
            c.connect()  # the connection is still good for a new stream
            assert c.terminated is None
    in_thread(ca, run, app, scenario)
