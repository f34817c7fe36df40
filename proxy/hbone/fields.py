"""Validation of a decoded HTTP/2 field section (RFC 9113 §8.2, §8.3, §8.5): what makes a
request or a response malformed, which the link answers with a stream error
(RST_STREAM(PROTOCOL_ERROR), §8.1.1) without ever handing it on.

The link decodes header blocks itself (HPACK by the `hpack` library, with the encoder and
decoder of the connection's `h2` state machine, so table sizes follow SETTINGS) and checks
them here: one pass over a handful of fields, where h2's general validation chain of
generators cost most of the ~150 µs h2 spent per tunnel (docs/hbone.md, "Performance").
"""

from __future__ import annotations

import re

Headers = list[tuple[str, str]]

# §8.2.2: connection-specific fields are malformed in HTTP/2 ("te" unless "trailers").
_CONNECTION_SPECIFIC = frozenset([b"connection", b"proxy-connection", b"keep-alive",
                                  b"transfer-encoding", b"upgrade"])
_REQUEST_PSEUDO = frozenset([b":method", b":scheme", b":authority", b":path"])
# §8.2.1 / RFC 9110 §5.1: a field name is a token, lowercase in HTTP/2; pseudo-header
# names are checked against the sets above.
_NAME = re.compile(rb"[!#$%&'*+\-.^_`|~0-9a-z]+")
# §8.2.1: no NUL, CR or LF anywhere in a value, no whitespace at either end.
_BAD_VALUE = re.compile(rb"[\x00\r\n]|^[ \t]|[ \t]$")


class Malformed(ValueError):
    """The field section breaks §8.2-§8.5: a stream error of type PROTOCOL_ERROR."""


def _regular(name: bytes, value: bytes) -> None:
    if _NAME.fullmatch(name) is None:
        raise Malformed(f"invalid field name {name[:64]!r}")
    if _BAD_VALUE.search(value) is not None:
        raise Malformed(f"invalid value of {name.decode()}")
    if name in _CONNECTION_SPECIFIC or (name == b"te" and value != b"trailers"):
        raise Malformed(f"connection-specific field {name.decode()}")


def request(raw: list[tuple[bytes, bytes]]) -> Headers:
    """A request's fields, pseudo-headers first. CONNECT (§8.5) carries :method and
    :authority only (no extended CONNECT: we never offer SETTINGS_ENABLE_CONNECT_PROTOCOL);
    any other method needs :method, :scheme and a non-empty :path (§8.3.1)."""
    pseudo: dict[bytes, bytes] = {}
    out: Headers = []
    regular = False
    for name, value in raw:
        if name[:1] == b":":
            if regular:
                raise Malformed("pseudo-header after a regular field")
            if name not in _REQUEST_PSEUDO:
                raise Malformed(f"pseudo-header {name[:64]!r} in a request")
            if name in pseudo:
                raise Malformed(f"duplicate {name.decode()}")
            if _BAD_VALUE.search(value) is not None:
                raise Malformed(f"invalid value of {name.decode()}")
            pseudo[name] = value
        else:
            regular = True
            _regular(name, value)
        out.append((name.decode("latin-1"), value.decode("latin-1")))
    method = pseudo.get(b":method")
    if not method:
        raise Malformed("no :method")
    if method == b"CONNECT":
        if not pseudo.get(b":authority") or b":scheme" in pseudo or b":path" in pseudo:
            raise Malformed("CONNECT needs :authority and no :scheme or :path")
    elif not pseudo.get(b":scheme") or not pseudo.get(b":path"):
        raise Malformed(f"{method[:16]!r} request without :scheme or :path")
    return out


def response(raw: list[tuple[bytes, bytes]]) -> tuple[int, Headers]:
    """(status, fields) of a response's field section (§8.3.2): exactly one :status, three
    digits, before any regular field; 101 is not allowed in HTTP/2 (§8.6)."""
    status: bytes | None = None
    out: Headers = []
    for i, (name, value) in enumerate(raw):
        if name == b":status":
            if status is not None or i:
                raise Malformed("misplaced or duplicate :status")
            status = value
        elif name[:1] == b":":
            raise Malformed(f"pseudo-header {name[:64]!r} in a response")
        else:
            _regular(name, value)
        out.append((name.decode("latin-1"), value.decode("latin-1")))
    if status is None or len(status) != 3 or not status.isdigit() or status == b"101":
        raise Malformed(f"invalid :status {status!r}")
    return int(status), out
