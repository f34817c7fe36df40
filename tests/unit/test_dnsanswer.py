"""Local answers of the proxy's DNS server for mesh names (proxy/inpod/dnsanswer.py): A and
AAAA from the service's VIPs, NODATA for the other family, anything else left alone."""

from __future__ import annotations

import socket
import struct

from proxy.inpod.dnsanswer import TTL, answer
from tests.dns.resolver import build_query

NAMES = {"api.example.com": ["240.240.0.1", "fd00:6d6e::1"], "v4.example.com": ["198.19.0.5"]}


def lookup(name: str) -> list[str] | None:
    return NAMES.get(name)


def records(msg: bytes, qlen: int) -> list[tuple[int, int, bytes]]:
    _qid, flags, qd, an, ns, ar = struct.unpack_from("!HHHHHH", msg)
    assert flags & 0x8000 and flags & 0x000F == 0 and qd == 1 and ns == ar == 0
    out, i = [], 12 + qlen
    for _ in range(an):
        ptr, rtype, rclass, ttl, n = struct.unpack_from("!HHHIH", msg, i)
        assert ptr == 0xC00C and rclass == 1 and ttl == TTL
        out.append((rtype, n, msg[i + 12:i + 12 + n]))
        i += 12 + n
    assert i == len(msg)
    return out


def query(name: str, qtype: int) -> bytes:
    q = build_query(name, 0x1234)
    return q[:-4] + struct.pack("!HH", qtype, 1)


def test_a_and_aaaa() -> None:
    q = query("API.example.com", 1)
    got = answer(q, lookup)
    assert got is not None and got[:2] == b"\x12\x34"
    assert records(got, len(q) - 12) == [(1, 4, socket.inet_aton("240.240.0.1"))]
    q6 = query("api.example.com.", 28)
    got6 = answer(q6, lookup)
    assert got6 is not None
    assert records(got6, len(q6) - 12) == [
        (28, 16, socket.inet_pton(socket.AF_INET6, "fd00:6d6e::1"))]


def test_known_name_without_the_family_is_nodata() -> None:
    q = query("v4.example.com", 28)
    got = answer(q, lookup)
    assert got is not None and records(got, len(q) - 12) == []


def test_unknown_names_types_and_garbage_are_forwarded() -> None:
    assert answer(query("kubernetes.default.svc.cluster.local", 1), lookup) is None
    assert answer(query("api.example.com", 16), lookup) is None      # TXT
    assert answer(b"\x00" * 5, lookup) is None
    q = bytearray(query("api.example.com", 1))
    q[2] |= 0x80  # a response, not a query
    assert answer(bytes(q), lookup) is None
    q = bytearray(query("api.example.com", 1))
    q[12] = 0xC0  # a compression pointer in the question
    assert answer(bytes(q), lookup) is None
    assert answer(query("api.example.com", 1)[:-3], lookup) is None  # truncated
