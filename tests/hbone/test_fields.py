"""proxy/hbone/fields.py: what makes a request or response field section malformed (RFC 9113
§8.2, §8.3, §8.5), and proxy/hbone/frames.py's HEADERS/RST_STREAM framing against
hyperframe (the h2 project's frame library) as the reference."""

from __future__ import annotations

from typing import Any

import hyperframe.frame
import pytest

from proxy.hbone import fields, frames

CONNECT = [(b":method", b"CONNECT"), (b":authority", b"10.0.0.2:8080")]


def test_connect_request() -> None:
    raw = [*CONNECT, (b"forwarded", b'for="10.0.0.1:4000";host=a.b.svc')]
    assert fields.request(raw) == [(":method", "CONNECT"), (":authority", "10.0.0.2:8080"),
                                   ("forwarded", 'for="10.0.0.1:4000";host=a.b.svc')]


def test_other_methods_are_well_formed_with_scheme_and_path() -> None:
    """Not malformed, so the server can answer them 400 itself (server.py)."""
    raw = [(b":method", b"GET"), (b":scheme", b"https"), (b":path", b"/"),
           (b":authority", b"x")]
    assert fields.request(raw)[0] == (":method", "GET")


def test_te_trailers_is_allowed() -> None:
    assert fields.request([*CONNECT, (b"te", b"trailers")])[-1] == ("te", "trailers")


def test_non_ascii_value_is_kept_byte_for_byte() -> None:
    assert fields.request([*CONNECT, (b"x-v", "é".encode())])[-1] == ("x-v", "Ã©")


@pytest.mark.parametrize("raw", [
    pytest.param([(b":authority", b"10.0.0.2:80")], id="no-method"),
    pytest.param([(b":method", b"CONNECT")], id="connect-without-authority"),
    pytest.param([(b":method", b"CONNECT"), (b":authority", b"")], id="empty-authority"),
    pytest.param([*CONNECT, (b":path", b"/")], id="connect-with-path"),
    pytest.param([*CONNECT, (b":scheme", b"https")], id="connect-with-scheme"),
    pytest.param([*CONNECT, (b":protocol", b"websocket")], id="extended-connect"),
    pytest.param([(b":method", b"GET"), (b":path", b"/")], id="get-without-scheme"),
    pytest.param([(b":method", b"GET"), (b":scheme", b"https"), (b":path", b"")],
                 id="get-with-empty-path"),
    pytest.param([(b":method", b"CONNECT"), (b"x", b"1"), (b":authority", b"a:1")],
                 id="pseudo-after-regular"),
    pytest.param([*CONNECT, (b":authority", b"10.0.0.3:80")], id="duplicate-authority"),
    pytest.param([*CONNECT, (b":status", b"200")], id="response-pseudo"),
    pytest.param([*CONNECT, (b":foo", b"x")], id="unknown-pseudo"),
    pytest.param([*CONNECT, (b"X-Upper", b"1")], id="uppercase-name"),
    pytest.param([*CONNECT, (b"a b", b"1")], id="space-in-name"),
    pytest.param([*CONNECT, (b"", b"1")], id="empty-name"),
    pytest.param([*CONNECT, (b"x", b"a\r\nb: c")], id="crlf-in-value"),
    pytest.param([*CONNECT, (b"x", b"a\x00")], id="nul-in-value"),
    pytest.param([*CONNECT, (b"x", b" a")], id="leading-space"),
    pytest.param([*CONNECT, (b"x", b"a\t")], id="trailing-tab"),
    pytest.param([(b":method", b"CONNECT"), (b":authority", b"a:1\n")], id="lf-in-pseudo"),
    pytest.param([*CONNECT, (b"connection", b"close")], id="connection"),
    pytest.param([*CONNECT, (b"keep-alive", b"1")], id="keep-alive"),
    pytest.param([*CONNECT, (b"transfer-encoding", b"chunked")], id="transfer-encoding"),
    pytest.param([*CONNECT, (b"upgrade", b"h2c")], id="upgrade"),
    pytest.param([*CONNECT, (b"proxy-connection", b"x")], id="proxy-connection"),
    pytest.param([*CONNECT, (b"te", b"gzip")], id="te-not-trailers"),
])
def test_malformed_requests(raw: list[tuple[bytes, bytes]]) -> None:
    with pytest.raises(fields.Malformed):
        fields.request(raw)


def test_response() -> None:
    assert fields.response([(b":status", b"200"), (b"x", b"y")]) == \
        (200, [(":status", "200"), ("x", "y")])
    assert fields.response([(b":status", b"103")])[0] == 103


@pytest.mark.parametrize("raw", [
    pytest.param([], id="no-status"),
    pytest.param([(b":status", b"20")], id="two-digits"),
    pytest.param([(b":status", b"2000")], id="four-digits"),
    pytest.param([(b":status", b"2x0")], id="not-digits"),
    pytest.param([(b":status", b"101")], id="switching-protocols"),
    pytest.param([(b":status", b"200"), (b":status", b"200")], id="duplicate"),
    pytest.param([(b"x", b"1"), (b":status", b"200")], id="status-after-regular"),
    pytest.param([(b":status", b"200"), (b":method", b"GET")], id="request-pseudo"),
    pytest.param([(b":status", b"200"), (b"Upper", b"1")], id="uppercase-name"),
    pytest.param([(b":status", b"200"), (b"connection", b"close")], id="connection"),
])
def test_malformed_responses(raw: list[tuple[bytes, bytes]]) -> None:
    with pytest.raises(fields.Malformed):
        fields.response(raw)


# -- framing --------------------------------------------------------------------------------

def _parse(wire: bytes) -> list[Any]:
    out, pos = [], 0
    while pos < len(wire):
        f, length = hyperframe.frame.Frame.parse_frame_header(memoryview(wire[pos:pos + 9]))
        f.parse_body(memoryview(wire[pos + 9:pos + 9 + length]))
        out.append(f)
        pos += 9 + length
    return out


@pytest.mark.parametrize("end", [False, True])
def test_headers_in_one_frame(end: bool) -> None:
    (f,) = _parse(frames.headers(5, b"block", end, 16384))
    assert isinstance(f, hyperframe.frame.HeadersFrame)
    assert f.stream_id == 5 and f.data == b"block"
    assert set(f.flags) == ({"END_HEADERS", "END_STREAM"} if end else {"END_HEADERS"})


@pytest.mark.parametrize("size", [16385, 32768, 40000])
def test_headers_split_into_continuations(size: int) -> None:
    block = bytes(range(256)) * (size // 256) + b"x" * (size % 256)
    parts = _parse(frames.headers(7, block, True, 16384))
    assert isinstance(parts[0], hyperframe.frame.HeadersFrame)
    assert set(parts[0].flags) == {"END_STREAM"}  # END_STREAM on HEADERS, END_HEADERS last
    assert all(isinstance(p, hyperframe.frame.ContinuationFrame) for p in parts[1:])
    assert [set(p.flags) for p in parts[1:]] == \
        [set()] * (len(parts) - 2) + [{"END_HEADERS"}]
    assert all(len(p.data) <= 16384 and p.stream_id == 7 for p in parts)
    assert b"".join(p.data for p in parts) == block


def test_headers_fragment_without_padding_or_priority() -> None:
    f = hyperframe.frame.HeadersFrame(3, b"abc", flags=["END_HEADERS"])
    wire = f.serialize()
    assert frames.headers_fragment(wire, 0, len(wire) - 9, 0x4) == (9, 12, -1)


def test_headers_fragment_with_padding_and_priority() -> None:
    f = hyperframe.frame.HeadersFrame(3, b"abcdef", flags=["END_HEADERS", "PADDED",
                                                           "PRIORITY"],
                                      pad_length=7, depends_on=1, stream_weight=9)
    wire = f.serialize()
    start, end, depends = frames.headers_fragment(wire, 0, len(wire) - 9, wire[4])
    assert wire[start:end] == b"abcdef" and depends == 1


@pytest.mark.parametrize(("payload", "flags", "code"), [
    pytest.param(b"", frames.PADDED, frames.FRAME_SIZE_ERROR, id="padded-empty"),
    pytest.param(b"\x00\x00\x00", frames.PRIORITY_FLAG, frames.FRAME_SIZE_ERROR,
                 id="priority-short"),
    pytest.param(b"\x05abc", frames.PADDED, frames.PROTOCOL_ERROR, id="pad-too-long"),
    pytest.param(b"\x01" + b"\x00" * 5, frames.PADDED | frames.PRIORITY_FLAG,
                 frames.PROTOCOL_ERROR, id="pad-eats-priority"),
])
def test_headers_fragment_errors(payload: bytes, flags: int, code: int) -> None:
    wire = b"\x00" * 9 + payload
    with pytest.raises(frames.FrameError) as e:
        frames.headers_fragment(wire, 0, len(payload), flags)
    assert e.value.code == code


def test_rst_stream_matches_hyperframe() -> None:
    (f,) = _parse(frames.rst_stream(9, frames.REFUSED_STREAM))
    assert isinstance(f, hyperframe.frame.RstStreamFrame)
    assert (f.stream_id, f.error_code) == (9, frames.REFUSED_STREAM)
    wire = frames.rst_stream(9, 0xABCDEF01)
    assert frames.rst_code(wire, 0, 4) == 0xABCDEF01
    with pytest.raises(frames.FrameError) as e:
        frames.rst_code(wire + b"\0", 0, 5)
    assert e.value.code == frames.FRAME_SIZE_ERROR
