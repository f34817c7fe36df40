"""The SNI of a ClientHello (proxy/traffic/sni.py), read from hellos that Python's own TLS
client writes (OpenSSL's), whole, cut short, split over records, and from non-TLS bytes."""

from __future__ import annotations

import ssl
import struct

import pytest

from proxy.traffic.sni import MAX_HELLO, NEED_MORE, NOT_TLS, server_name


def hello(host: str | None) -> bytes:
    ctx = ssl.create_default_context()
    ctx.check_hostname = host is not None
    inc, out = ssl.MemoryBIO(), ssl.MemoryBIO()
    obj = ctx.wrap_bio(inc, out, server_hostname=host)
    with pytest.raises(ssl.SSLWantReadError):
        obj.do_handshake()
    return out.read()


def test_reads_the_host_name_lower_cased() -> None:
    assert server_name(hello("API.Example.COM")) == "api.example.com"


def test_every_prefix_of_a_hello_needs_more() -> None:
    h = hello("a.example.org")
    assert all(server_name(h[:n]) is NEED_MORE for n in range(len(h)))


def test_a_hello_split_over_two_records() -> None:
    h = hello("split.example.org")
    body = h[5:]
    first, second = body[:40], body[40:]
    rec = b"".join(b"\x16\x03\x01" + struct.pack("!H", len(p)) + p for p in (first, second))
    assert server_name(rec) == "split.example.org"


def test_no_sni_and_not_tls() -> None:
    assert server_name(hello(None)) == NOT_TLS          # an IP-addressed TLS client
    assert server_name(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n") == NOT_TLS
    assert server_name(b"SSH-2.0-OpenSSH_9.2\r\n") == NOT_TLS
    assert server_name(b"\x16\x03\x01\x00\x05\x02\x00\x00\x01\x00") == NOT_TLS  # ServerHello


def test_malformed_lengths_are_not_tls_never_an_exception() -> None:
    h = bytearray(hello("x.example.org"))
    # Claim a far longer session id than there is: the parse runs off the end.
    h[5 + 4 + 34] = 0xFF
    assert server_name(bytes(h)) in (NOT_TLS, NEED_MORE)
    # An endless stream of empty handshake records stops at MAX_HELLO.
    junk = b"\x16\x03\x01\x00\x00" * (MAX_HELLO // 5 + 1)
    assert server_name(junk) == NOT_TLS
