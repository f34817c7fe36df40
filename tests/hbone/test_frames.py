"""proxy/hbone/frames.py against the reference codec (hyperframe, which h2 itself uses): the
bytes we build are the bytes hyperframe builds, and what we parse is what hyperframe parses."""

from __future__ import annotations

import pytest
from hyperframe.frame import DataFrame, Frame, WindowUpdateFrame

from proxy.hbone import frames
from proxy.hbone.frames import FrameError, RecvWindow

MAX_LENGTH = (1 << 24) - 1
R_BIT = 1 << 31


def _raw_header(length: int, ftype: int, flags: int, stream_id: int) -> bytes:
    """A frame header written by hand, R bit included if the caller sets it."""
    return (length.to_bytes(3, "big") + bytes([ftype, flags])
            + stream_id.to_bytes(4, "big"))


def _hyper_data(stream_id: int, data: bytes, *, end_stream: bool = False,
                pad: int | None = None) -> bytes:
    flags = ["END_STREAM"] if end_stream else []
    if pad is not None:
        flags.append("PADDED")
    return DataFrame(stream_id, data=data, flags=flags, pad_length=pad or 0).serialize()


# -- header / put_data_header --------------------------------------------------------------

@pytest.mark.parametrize("length", [0, 1, 9, 16384, (1 << 20), MAX_LENGTH - 1, MAX_LENGTH])
@pytest.mark.parametrize("stream_id", [1, 3, 0x1234567, frames.MAX_WINDOW])
@pytest.mark.parametrize("end_stream", [False, True])
def test_data_header_round_trip(length: int, stream_id: int, end_stream: bool) -> None:
    buf = bytearray(frames.HEADER + 3)
    buf[frames.HEADER:] = b"xyz"
    frames.put_data_header(buf, length, stream_id, end_stream)
    assert frames.header(buf, 0) == (length, frames.DATA,
                                     frames.END_STREAM if end_stream else 0, stream_id)
    assert buf[frames.HEADER:] == b"xyz"  # only the 9 header bytes are written
    # hyperframe reads the same header out of our bytes
    parsed, parsed_length = Frame.parse_frame_header(memoryview(bytes(buf[:frames.HEADER])))
    assert isinstance(parsed, DataFrame)
    assert parsed_length == length
    assert parsed.stream_id == stream_id
    assert ("END_STREAM" in parsed.flags) == end_stream


def test_put_data_header_into_memoryview() -> None:
    """The relay hands a memoryview of its buffer, header room first."""
    buf = bytearray(frames.HEADER + 5)
    frames.put_data_header(memoryview(buf), 5, 7)
    assert bytes(buf[:frames.HEADER]) == _hyper_data(7, b"\0" * 5)[:frames.HEADER]


@pytest.mark.parametrize("length", [0, 4, 1 << 20, MAX_LENGTH])
@pytest.mark.parametrize("ftype", [frames.DATA, frames.HEADERS, frames.SETTINGS,
                                   frames.WINDOW_UPDATE, frames.CONTINUATION, 0xFF])
@pytest.mark.parametrize("flags", [0, 0x1, 0x8, 0x25, 0xFF])
def test_header_fields_at_an_offset(length: int, ftype: int, flags: int) -> None:
    raw = b"junk" + _raw_header(length, ftype, flags, 0x2345) + b"tail"
    assert frames.header(raw, 4) == (length, ftype, flags, 0x2345)
    assert frames.header(memoryview(raw), 4) == (length, ftype, flags, 0x2345)
    assert frames.header(bytearray(raw), 4) == (length, ftype, flags, 0x2345)


@pytest.mark.parametrize("stream_id", [0, 1, 0x7FFFFFFF])
def test_header_masks_the_reserved_bit(stream_id: int) -> None:
    raw = _raw_header(4, frames.WINDOW_UPDATE, 0, R_BIT | stream_id)
    assert frames.header(raw, 0) == (4, frames.WINDOW_UPDATE, 0, stream_id)
    parsed, _ = Frame.parse_frame_header(memoryview(raw))
    assert parsed.stream_id == stream_id  # hyperframe agrees


# -- frames we build, byte for byte against hyperframe ---------------------------------------

@pytest.mark.parametrize("payload", [b"", b"a", b"hello world", bytes(range(256)) * 64,
                                     b"\xff" * (1 << 20)])
@pytest.mark.parametrize("stream_id", [1, 101, frames.MAX_WINDOW])
def test_data_frame_matches_hyperframe(payload: bytes, stream_id: int) -> None:
    expected = _hyper_data(stream_id, payload)
    assert frames.data_frame(stream_id, payload) == expected
    assert frames.data_frame(stream_id, bytearray(payload)) == expected
    assert frames.data_frame(stream_id, memoryview(payload)) == expected


def test_put_data_header_matches_hyperframe() -> None:
    payload = b"0123456789" * 100
    for end_stream in (False, True):
        buf = bytearray(frames.HEADER) + payload
        frames.put_data_header(buf, len(payload), 9, end_stream)
        assert bytes(buf) == _hyper_data(9, payload, end_stream=end_stream)


@pytest.mark.parametrize("flags", [0, frames.END_STREAM, frames.PADDED,
                                   frames.END_STREAM | frames.PADDED, 0xFF])
def test_empty_data_keeps_only_end_stream(flags: int) -> None:
    """Only END_STREAM survives: a zero-length frame must not claim PADDED (that would be a
    frame without its pad length byte) or any other flag."""
    end = bool(flags & frames.END_STREAM)
    assert frames.empty_data(5, flags) == _hyper_data(5, b"", end_stream=end)
    parsed, length = Frame.parse_frame_header(memoryview(frames.empty_data(5, flags)))
    assert length == 0
    assert set(parsed.flags) == ({"END_STREAM"} if end else set())


@pytest.mark.parametrize("stream_id", [0, 1, 0x7FFFFFFF])
@pytest.mark.parametrize("increment", [1, 32768, 1 << 24, frames.MAX_WINDOW])
def test_window_update_matches_hyperframe(stream_id: int, increment: int) -> None:
    expected = WindowUpdateFrame(stream_id, window_increment=increment).serialize()
    built = frames.window_update(stream_id, increment)
    assert built == expected
    assert frames.header(built, 0) == (4, frames.WINDOW_UPDATE, 0, stream_id)
    assert frames.window_increment(built, 0, 4) == increment


# -- data_payload ---------------------------------------------------------------------------

def _payload_of(raw: bytes, at: int = 0) -> bytes:
    length, ftype, flags, _ = frames.header(raw, at)
    assert ftype == frames.DATA
    start, end = frames.data_payload(raw, at, length, flags)
    assert at + frames.HEADER <= start <= end <= at + frames.HEADER + length
    return raw[start:end]


@pytest.mark.parametrize("data", [b"", b"x", b"some bytes", bytes(range(256)) * 10])
def test_data_payload_unpadded(data: bytes) -> None:
    raw = b"prefix" + _hyper_data(3, data, end_stream=True) + b"next frame"
    assert _payload_of(raw, 6) == data


@pytest.mark.parametrize("pad", [0, 1, 2, 17, 254, 255])
@pytest.mark.parametrize("data", [b"", b"y", b"padded payload", bytes(range(256)) * 10])
def test_data_payload_padded(pad: int, data: bytes) -> None:
    raw = b"ab" + _hyper_data(3, data, pad=pad) + b"cd"
    length, _, flags, _ = frames.header(raw, 2)
    assert flags & frames.PADDED
    assert length == 1 + len(data) + pad
    assert _payload_of(raw, 2) == data
    # and hyperframe reads the same application bytes out of the same frame
    parsed, _ = Frame.parse_frame_header(memoryview(raw[2:2 + frames.HEADER]))
    assert isinstance(parsed, DataFrame)
    parsed.parse_body(memoryview(raw[2 + frames.HEADER:2 + frames.HEADER + length]))
    assert parsed.data == data
    assert parsed.flow_controlled_length == length


def test_data_payload_padding_bytes_are_not_data() -> None:
    """Nonzero padding (a sender may fill it with anything) is cut off all the same."""
    raw = _raw_header(1 + 3 + 5, frames.DATA, frames.PADDED, 1) + b"\x05abc" + b"PPPPP"
    assert _payload_of(raw) == b"abc"


@pytest.mark.parametrize(("length", "pad"), [(1, 1), (1, 200), (5, 5), (5, 6), (5, 255),
                                             (255, 255)])
def test_data_payload_padding_as_long_as_the_frame(length: int, pad: int) -> None:
    raw = _raw_header(length, frames.DATA, frames.PADDED, 1) + bytes([pad]) \
        + b"\0" * (length - 1)
    with pytest.raises(FrameError) as err:
        frames.data_payload(raw, 0, length, frames.PADDED)
    assert err.value.code == frames.PROTOCOL_ERROR


def test_data_payload_padding_just_fits() -> None:
    """pad == length - 1: every byte after the pad length is padding, no data; legal."""
    raw = _raw_header(5, frames.DATA, frames.PADDED, 1) + b"\x04" + b"\0" * 4
    assert frames.data_payload(raw, 0, 5, frames.PADDED) == (frames.HEADER + 1,
                                                              frames.HEADER + 1)


def test_data_payload_padded_without_pad_length() -> None:
    raw = _raw_header(0, frames.DATA, frames.PADDED, 1) + b"\x07more bytes of the next frame"
    with pytest.raises(FrameError) as err:
        frames.data_payload(raw, 0, 0, frames.PADDED | frames.END_STREAM)
    assert err.value.code == frames.FRAME_SIZE_ERROR


# -- window_increment -----------------------------------------------------------------------

@pytest.mark.parametrize("value", [0, 1, 65535, frames.MAX_WINDOW])
def test_window_increment_masks_the_reserved_bit(value: int) -> None:
    raw = b"\xaa" * 3 + _raw_header(4, frames.WINDOW_UPDATE, 0, 1) \
        + (R_BIT | value).to_bytes(4, "big")
    assert frames.window_increment(raw, 3, 4) == value  # §6.9: the R bit is ignored


@pytest.mark.parametrize("length", [0, 1, 3, 5, 8, 16384])
def test_window_increment_of_the_wrong_size(length: int) -> None:
    raw = _raw_header(length, frames.WINDOW_UPDATE, 0, 0) + b"\0" * max(length, 4)
    with pytest.raises(FrameError) as err:
        frames.window_increment(raw, 0, length)
    assert err.value.code == frames.FRAME_SIZE_ERROR


# -- RecvWindow -----------------------------------------------------------------------------

def test_recv_window_consume_within_and_beyond() -> None:
    w = RecvWindow(1000)
    assert w.consume(400)
    assert w.consume(600)  # exactly the window
    assert w.available == 0
    assert not w.consume(1)  # one byte too many


def test_recv_window_consume_beyond_at_once() -> None:
    w = RecvWindow(1000)
    assert not w.consume(1001)


def test_recv_window_release_batches_at_half() -> None:
    w = RecvWindow(1000)
    assert w.consume(1000)
    assert w.release(200) == 0
    assert w.release(299) == 0  # 499 < 500: still batching
    assert w.available == 0  # nothing announced, nothing restored
    assert w.release(1) == 500  # reaches half the window: everything accumulated
    assert w.available == 500
    assert w.unacked == 0
    assert w.release(499) == 0
    assert w.release(1) == 500
    assert w.available == 1000  # the whole window is restored
    assert w.consume(1000)
    assert not w.consume(1)


def test_recv_window_release_above_half_in_one_go() -> None:
    w = RecvWindow(4 << 20)
    assert w.consume(3 << 20)
    assert w.release(3 << 20) == 3 << 20
    assert w.available == 4 << 20


def test_recv_window_balances() -> None:
    """What was consumed and released is announced, except what is still batching."""
    w = RecvWindow(100)
    consumed = released = announced = 0
    for n in (7, 30, 13, 50):
        assert w.consume(n)
        consumed += n
        announced += w.release(n)
        released += n
    assert consumed == released == 100
    assert announced == 100 - w.unacked
    assert w.available == 100 - w.unacked
