"""Keys, CSRs and the checks on the CA's answer."""

from __future__ import annotations

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec

from agent.identity.bundle import bundle_from_response
from agent.identity.csr import IdentityError, make_csr
from tests.xds.helpers import Ca

ID = "spiffe://cluster.local/ns/default/sa/sleep"


def test_csr_is_p256_with_one_critical_uri_san_and_empty_subject() -> None:
    kc = make_csr(ID)
    csr = x509.load_pem_x509_csr(kc.csr_pem.encode())
    assert csr.is_signature_valid
    key = csr.public_key()
    assert isinstance(key, ec.EllipticCurvePublicKey) and key.curve.name == "secp256r1"
    assert list(csr.subject) == []
    ext = csr.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    assert ext.critical and list(ext.value) == [x509.UniformResourceIdentifier(ID)]
    assert b"PRIVATE KEY" in kc.key_pem()
    assert make_csr(ID).key.private_numbers() != kc.key.private_numbers()  # fresh key each time


# The SPIFFE ID rules themselves (this file's former parse_spiffe_id cases included) are
# tested in tests/unit/test_spiffe.py; make_csr applies them.
@pytest.mark.parametrize("bad", [
    "http://cluster.local/ns/a/sa/b", "spiffe://Cluster.local/ns/a/sa/b",
    "spiffe://td/ns/a/sa", "spiffe://td/ns/a/sa/b/", "spiffe://td/ns//sa/b",
    "spiffe://td/ns/../sa/b", "spiffe://td/sa/a/ns/b", "spiffe://td:80/ns/a/sa/b",
])
def test_bad_spiffe_ids_are_refused(bad: str) -> None:
    with pytest.raises(IdentityError):
        make_csr(bad)


def test_bundle_checks_identity_and_key_and_splits_the_chain() -> None:
    ca = Ca.new()
    kc = make_csr(ID)
    leaf = ca.sign_csr(kc.csr_pem, 60)
    b = bundle_from_response(ID, kc.key, kc.key_pem(), [leaf, ca.pem.decode()])
    assert b.chain_pem == (leaf,) and b.roots_pem == (ca.pem.decode(),)
    assert b.not_after - b.not_before == 60
    assert b.not_before + 29 <= b.refresh_at <= b.not_before + 31
    # Several certificates in one element (istiod may do that) are split.
    b2 = bundle_from_response(ID, kc.key, kc.key_pem(), [leaf + ca.pem.decode()])
    assert b2.chain_pem == (leaf,) and len(b2.roots_pem) == 1
    other = make_csr(ID)
    with pytest.raises(IdentityError, match="does not hold our key"):
        bundle_from_response(ID, other.key, other.key_pem(), [leaf])
    with pytest.raises(IdentityError, match="asked for"):
        bundle_from_response("spiffe://cluster.local/ns/x/sa/y", kc.key, kc.key_pem(), [leaf])
    with pytest.raises(IdentityError, match="empty"):
        bundle_from_response(ID, kc.key, kc.key_pem(), [])
