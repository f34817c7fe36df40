"""The server name (SNI) of a TLS ClientHello, for VirtualService `tls` routes: the proxy
peeks at the client's first bytes (MSG_PEEK, so the upstream still gets every byte) and reads
the name without terminating TLS, as Envoy's tls_inspector does.

RFC 8446 4.1.2 (ClientHello) and RFC 6066 3 (server_name); the ClientHello may span several
handshake records (large key shares), so records are joined up to `MAX_HELLO` bytes. Pure:
bytes in, a verdict out:
- `NEED_MORE`: a TLS handshake so far, but the ClientHello is not complete yet;
- `NOT_TLS` (""): not a ClientHello, or one without a host name (route as without SNI);
- else the host name, lower-cased, without a trailing dot.
No library here: the standard `ssl` module cannot read a ClientHello it does not terminate,
and the parser is 50 lines over a well-defined format."""

from __future__ import annotations

import struct

MAX_HELLO = 16 * 1024       # what the proxy peeks at most; bigger hellos are read as no SNI
NEED_MORE = None
NOT_TLS = ""
_HANDSHAKE = 22
_CLIENT_HELLO = 1
_SERVER_NAME = 0
_HOST_NAME = 0


def _handshake_bytes(data: bytes) -> bytes | None:
    """The handshake payload of the leading records (the last one may be cut short); None
    if a record is not a TLS handshake record."""
    out, i = bytearray(), 0
    while i + 5 <= len(data):
        ctype, major, length = data[i], data[i + 1], struct.unpack_from("!H", data, i + 3)[0]
        if ctype != _HANDSHAKE or major != 3:
            return None
        out += data[i + 5:i + 5 + length]
        i += 5 + length
    if 0 < len(data) - i < 5 and data[i] != _HANDSHAKE:
        return None
    return bytes(out)


def server_name(data: bytes) -> str | None:
    """See the module: NEED_MORE (None), NOT_TLS ("") or the host name."""
    if data and data[0] != _HANDSHAKE:
        return NOT_TLS
    hs = _handshake_bytes(data)
    if hs is None:
        return NOT_TLS
    if len(hs) < 4:
        return NEED_MORE if len(data) < MAX_HELLO else NOT_TLS
    if hs[0] != _CLIENT_HELLO:
        return NOT_TLS
    size = int.from_bytes(hs[1:4], "big")
    if len(hs) < 4 + size:
        return NEED_MORE if len(data) < MAX_HELLO else NOT_TLS
    try:
        return _from_hello(hs[4:4 + size])
    except (IndexError, struct.error, UnicodeDecodeError):
        return NOT_TLS


def _from_hello(b: bytes) -> str:
    i = 2 + 32                                   # legacy_version, random
    i += 1 + b[i]                                # legacy_session_id
    i += 2 + struct.unpack_from("!H", b, i)[0]   # cipher_suites
    i += 1 + b[i]                                # legacy_compression_methods
    if i + 2 > len(b):
        return NOT_TLS                           # no extensions at all
    end = i + 2 + struct.unpack_from("!H", b, i)[0]
    i += 2
    while i + 4 <= end:
        etype, elen = struct.unpack_from("!HH", b, i)
        i += 4
        if etype == _SERVER_NAME:
            j, list_end = i + 2, i + 2 + struct.unpack_from("!H", b, i)[0]
            while j + 3 <= list_end:
                kind, n = b[j], struct.unpack_from("!H", b, j + 1)[0]
                if kind == _HOST_NAME:
                    name = b[j + 3:j + 3 + n]
                    if len(name) != n:
                        return NOT_TLS
                    return name.decode("ascii").lower().removesuffix(".")
                j += 3 + n
            return NOT_TLS
        i += elen
    return NOT_TLS
