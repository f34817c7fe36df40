"""The check every HBONE connection passes right after its TLS handshake, both sides:
ALPN h2 and a peer certificate (already chain-verified by OpenSSL against our roots) that
carries a valid SPIFFE ID, optionally one of the identities we expect."""

from __future__ import annotations

import ssl
from collections.abc import Collection

from core.spiffe import SpiffeError, from_der
from proxy.hbone.h2link import H2Link


def check(link: H2Link, expect: Collection[object] | None = None) -> str | None:
    """None if the peer is acceptable (and link.peer set), else why not."""
    obj = link.peer_info("ssl_object")
    if not isinstance(obj, ssl.SSLObject | ssl.SSLSocket):
        return "no TLS"
    if obj.selected_alpn_protocol() != "h2":
        return f"ALPN {obj.selected_alpn_protocol()!r}, want 'h2'"
    der = obj.getpeercert(binary_form=True)
    if not der:
        return "no peer certificate"
    try:
        peer = from_der(der)
    except (SpiffeError, ValueError) as exc:
        return f"peer certificate: {exc}"
    if expect is not None and peer not in expect:
        want = ", ".join(sorted(str(e) for e in expect))
        return f"peer identity {peer} is not the expected {want}"
    link.peer = peer
    return None
