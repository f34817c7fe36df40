"""Local DNS answers for the mesh's own names, as Istio's DNS proxying answers them: a query
for a service's host name (a ServiceEntry host, a Kubernetes service's FQDN) gets the
service's addresses (its `addresses`, or the VIP the control plane auto-allocated), so an
app can reach an external host by a VIP the proxy then routes. Everything else goes to the
pod's resolver as before.

RFC 1035 wire format, one question (what every stub resolver sends). An A query is answered
with the IPv4 VIPs, AAAA with the IPv6 ones; a known name without an address of the asked
family gets an empty NOERROR answer (NODATA), so the stub does not search further or fall
back to a resolver that would give another address. Other types (MX, TXT...) and names are
not ours. Pure: bytes in, bytes out; the lookup is injected."""

from __future__ import annotations

import ipaddress
import struct
from collections.abc import Callable, Sequence

TTL = 30                # seconds; Istio's DNS proxy answers with 30s too
_A, _AAAA, _IN = 1, 28, 1
_HEADER = struct.Struct("!HHHHHH")

Lookup = Callable[[str], Sequence[str] | None]
"""A host name -> its addresses (None: not a name of the mesh)."""


def _question(msg: bytes) -> tuple[str, int, int, int] | None:
    """(name, qtype, qclass, end of the question) of a one-question query, else None."""
    if len(msg) < _HEADER.size:
        return None
    _id, flags, qd, an, ns, _ar = _HEADER.unpack_from(msg)
    if flags & 0x8000 or (flags >> 11) & 0xF or qd != 1 or an or ns:
        return None  # a response, not a standard query, or not one plain question
    labels, i = [], _HEADER.size
    while True:
        if i >= len(msg):
            return None
        n = msg[i]
        if n == 0:
            i += 1
            break
        if n & 0xC0 or i + 1 + n > len(msg):
            return None  # no compression in a question; truncated label
        try:
            labels.append(msg[i + 1:i + 1 + n].decode("ascii"))
        except UnicodeDecodeError:
            return None
        i += 1 + n
    if i + 4 > len(msg) or not labels:
        return None
    qtype, qclass = struct.unpack_from("!HH", msg, i)
    return ".".join(labels).lower(), qtype, qclass, i + 4


def answer(query: bytes, lookup: Lookup) -> bytes | None:
    """The response to `query` when it asks for a mesh name, else None (forward it)."""
    q = _question(query)
    if q is None:
        return None
    name, qtype, qclass, end = q
    if qclass != _IN or qtype not in (_A, _AAAA):
        return None
    addresses = lookup(name)
    if addresses is None:
        return None
    version = 4 if qtype == _A else 6
    records = []
    for a in addresses:
        ip = ipaddress.ip_address(a)
        if ip.version == version:
            # The name as a pointer to the question's (offset 12), type, class, TTL, data.
            records.append(struct.pack("!HHHIH", 0xC00C, qtype, _IN, TTL, len(ip.packed))
                           + ip.packed)
    qid, flags = struct.unpack_from("!HH", query)
    # QR, AA (the mesh is the authority for its names), RD as asked, RA, NOERROR.
    flags = 0x8000 | 0x0400 | (flags & 0x0100) | 0x0080
    header = _HEADER.pack(qid, flags, 1, len(records), 0, 0)
    # The question as asked (case kept), without any additional records (EDNS) it carried.
    return header + query[_HEADER.size:end] + b"".join(records)
