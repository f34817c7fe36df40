"""HTTP/2 framing for the frames of a tunnel's life: DATA and WINDOW_UPDATE (RFC 9113 §4.1,
§6.1, §6.9), which every relayed chunk costs, and HEADERS, CONTINUATION and RST_STREAM
(§6.2, §6.10, §6.4), which every tunnel costs. Connection-level frames (SETTINGS, PING,
GOAWAY, PRIORITY, PUSH_PROMISE, unknown types) go to the `h2` state machine as received
(see h2link.py).

Pure functions over buffers: the link parses frames in place in its read buffer and builds
DATA headers in the room the relay leaves in front of each chunk, so a relayed chunk is
neither copied into a frame object nor serialized twice.
"""

from __future__ import annotations

import struct

HEADER = 9
# length (24 bits) and type share the first 4 bytes; flags; stream id (R bit masked off)
_HEAD = struct.Struct(">IBI")
_INCREMENT = struct.Struct(">I")

DATA, HEADERS, PRIORITY, RST_STREAM, SETTINGS, PUSH_PROMISE, PING, GOAWAY, WINDOW_UPDATE, \
    CONTINUATION = range(10)
END_STREAM = 0x1
END_HEADERS = 0x4
PADDED = 0x8
PRIORITY_FLAG = 0x20
MAX_WINDOW = (1 << 31) - 1

# Error codes (RFC 9113 §7)
NO_ERROR = 0x0
PROTOCOL_ERROR = 0x1
FLOW_CONTROL_ERROR = 0x3
STREAM_CLOSED = 0x5
FRAME_SIZE_ERROR = 0x6
REFUSED_STREAM = 0x7
COMPRESSION_ERROR = 0x9

CLIENT_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"


class FrameError(Exception):
    """A frame that breaks the protocol; `code` is the HTTP/2 error code to answer with."""

    def __init__(self, code: int, reason: str) -> None:
        super().__init__(reason)
        self.code = code


def header(buf: bytes | bytearray | memoryview, at: int) -> tuple[int, int, int, int]:
    """(payload length, type, flags, stream id) of the frame starting at `at`."""
    length_type, flags, stream_id = _HEAD.unpack_from(buf, at)
    return length_type >> 8, length_type & 0xFF, flags, stream_id & 0x7FFFFFFF


def put_data_header(buf: bytearray | memoryview, length: int, stream_id: int,
                    end_stream: bool = False) -> None:
    """Write a DATA frame header into buf[0:9]; the payload follows it in the same buffer."""
    _HEAD.pack_into(buf, 0, (length << 8) | DATA, END_STREAM if end_stream else 0, stream_id)


def data_frame(stream_id: int, payload: bytes | bytearray | memoryview) -> bytes:
    return _HEAD.pack((len(payload) << 8) | DATA, 0, stream_id) + bytes(payload)


def empty_data(stream_id: int, flags: int) -> bytes:
    """A zero-length DATA frame: how the link tells h2 about END_STREAM (or a DATA frame on a
    stream it must judge) without h2 ever holding payload or flow-control credit."""
    return _HEAD.pack(DATA, flags & END_STREAM, stream_id)


def window_update(stream_id: int, increment: int) -> bytes:
    return _HEAD.pack((4 << 8) | WINDOW_UPDATE, 0, stream_id) + _INCREMENT.pack(increment)


def rst_stream(stream_id: int, code: int) -> bytes:
    return _HEAD.pack((4 << 8) | RST_STREAM, 0, stream_id) + _INCREMENT.pack(code)


def rst_code(buf: bytes | bytearray | memoryview, at: int, length: int) -> int:
    if length != 4:
        raise FrameError(FRAME_SIZE_ERROR, f"RST_STREAM of {length} bytes")
    code: int = _INCREMENT.unpack_from(buf, at + HEADER)[0]
    return code


def headers(stream_id: int, block: bytes, end_stream: bool, max_frame: int) -> bytes:
    """A header block as HEADERS and, if it is longer than the peer's frame size, the
    CONTINUATION frames that follow it (§4.3: nothing may come between them; the caller
    writes all of it at once)."""
    flags = END_STREAM if end_stream else 0
    if len(block) <= max_frame:
        return _HEAD.pack((len(block) << 8) | HEADERS, flags | END_HEADERS, stream_id) + block
    out = bytearray()
    ftype = HEADERS
    for pos in range(0, len(block), max_frame):
        part = block[pos:pos + max_frame]
        last = pos + max_frame >= len(block)
        out += _HEAD.pack((len(part) << 8) | ftype, flags | (END_HEADERS if last else 0),
                          stream_id)
        out += part
        ftype, flags = CONTINUATION, 0
    return bytes(out)


def headers_fragment(buf: bytes | bytearray | memoryview, at: int, length: int,
                     flags: int) -> tuple[int, int, int]:
    """([start, end) of a HEADERS frame's field block fragment, the stream it depends on or
    -1) without padding and priority fields (§6.2)."""
    start, end = at + HEADER, at + HEADER + length
    pad = 0
    if flags & PADDED:
        if length < 1:
            raise FrameError(FRAME_SIZE_ERROR, "padded HEADERS without a pad length")
        pad = buf[start]
        start += 1
    depends = -1
    if flags & PRIORITY_FLAG:
        if end - start < 5:
            raise FrameError(FRAME_SIZE_ERROR, "HEADERS too short for its priority")
        depends = _INCREMENT.unpack_from(buf, start)[0] & MAX_WINDOW
        start += 5
    if pad > end - start:  # §6.2: padding longer than what is left is a PROTOCOL_ERROR
        raise FrameError(PROTOCOL_ERROR, "HEADERS padding exceeds the frame")
    return start, end - pad, depends


def data_payload(buf: bytes | bytearray | memoryview, at: int, length: int,
                 flags: int) -> tuple[int, int]:
    """[start, end) of a DATA frame's application bytes in buf, without padding."""
    start, end = at + HEADER, at + HEADER + length
    if flags & PADDED:
        if length < 1:
            raise FrameError(FRAME_SIZE_ERROR, "padded DATA frame without a pad length")
        pad = buf[start]
        if pad >= length:  # §6.1: padding as long as the payload is a connection error
            raise FrameError(PROTOCOL_ERROR, "DATA padding exceeds the frame")
        start, end = start + 1, end - pad
    return start, end


def window_increment(buf: bytes | bytearray | memoryview, at: int, length: int) -> int:
    if length != 4:
        raise FrameError(FRAME_SIZE_ERROR, f"WINDOW_UPDATE of {length} bytes")
    value: int = _INCREMENT.unpack_from(buf, at + HEADER)[0]
    return value & MAX_WINDOW


class RecvWindow:
    """The credit we give the peer on one stream or the connection (§6.9): DATA consumes it,
    bytes the application has taken give it back, in WINDOW_UPDATEs of at least half the
    window, as h2 and ztunnel batch them."""

    __slots__ = ("available", "size", "unacked")

    def __init__(self, size: int) -> None:
        self.size = size
        self.available = size
        self.unacked = 0

    def consume(self, n: int) -> bool:
        """False if the peer sent more than it was allowed."""
        self.available -= n
        return self.available >= 0

    def release(self, n: int) -> int:
        """`n` bytes were consumed locally; the increment to announce now, or 0."""
        self.unacked += n
        if self.unacked < self.size // 2:
            return 0
        inc, self.unacked = self.unacked, 0
        self.available += inc
        return inc
