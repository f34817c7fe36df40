from __future__ import annotations

import pytest

from core.spiffe import SpiffeError, SpiffeId, from_certificate, from_der, parse
from tests.hbone.pki import CA


@pytest.mark.parametrize("uri, want", [
    ("spiffe://cluster.local/ns/default/sa/sleep", ("cluster.local", "default", "sleep")),
    ("spiffe://td.with.dots/ns/ns.with.dots/sa/sa.with.dots",
     ("td.with.dots", "ns.with.dots", "sa.with.dots")),
    ("spiffe://td/ns//sa/", ("td", "", "")),  # ztunnel accepts it
    ("spiffe://my-td_1/ns/Team-A/sa/svc_1", ("my-td_1", "Team-A", "svc_1")),
])
def test_valid(uri: str, want: tuple[str, str, str]) -> None:
    sid = parse(uri)
    assert (sid.trust_domain, sid.namespace, sid.service_account) == want
    assert str(sid) == uri
    assert sid.principal == uri.removeprefix("spiffe://")


@pytest.mark.parametrize("uri", [
    "spiffe://td/ns/ns/sa",  # ztunnel rejects
    "spiffe://td/ns/ns/sa/sa/",  # trailing slash
    "spiffe://td/ns/ns/sa/sa/extra",
    "spiffe://TD/ns/a/sa/b",  # trust domain is lowercase
    "spiffe://td:8080/ns/a/sa/b",  # no port
    "spiffe://user@td/ns/a/sa/b",
    "spiffe://td/ns/a%2F/sa/b",  # no %-encoding
    "spiffe://td/ns/../sa/b",
    "spiffe://td/ns/./sa/b",
    "spiffe:///ns/a/sa/b",
    "https://td/ns/a/sa/b",
    "spiffe://td/sa/a/ns/b",
    "spiffe://td",
    "spiffe://td/ns/" + "a" * 2100 + "/sa/b",
])
def test_invalid(uri: str) -> None:
    with pytest.raises(SpiffeError):
        parse(uri)


def test_from_certificate(ca: CA) -> None:
    bundle = ca.leaf("spiffe://cluster.local/ns/a/sa/b")
    assert bundle.identity == SpiffeId("cluster.local", "a", "b")
    from cryptography import x509
    cert = x509.load_pem_x509_certificates(bundle.chain_pem)[0]
    assert from_certificate(cert) == bundle.identity
    from cryptography.hazmat.primitives import serialization
    assert from_der(cert.public_bytes(serialization.Encoding.DER)) == bundle.identity


def test_two_uri_sans_are_not_an_svid(ca: CA) -> None:
    from cryptography import x509
    _, pem = ca.leaf_pems("spiffe://td/ns/a/sa/b", "spiffe://td/ns/c/sa/d")
    with pytest.raises(SpiffeError, match="exactly one URI SAN"):
        from_certificate(x509.load_pem_x509_certificates(pem)[0])


def test_root_without_san_is_refused(ca: CA) -> None:
    with pytest.raises(SpiffeError, match="no subjectAltName"):
        from_certificate(ca.cert)
