"""A fresh ECDSA P-256 key and a CSR naming one SPIFFE ID, as ztunnel's `src/tls/csr.rs`.

The subject is empty and the only SAN is the URI, marked critical (X509-SVID: the SAN must be
critical when the subject is empty). A new key for every request: a renewal never reuses key
material.
"""

from __future__ import annotations

from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from core import pem, spiffe


class IdentityError(ValueError):
    pass


@dataclass(frozen=True)
class KeyAndCsr:
    key: ec.EllipticCurvePrivateKey
    csr_pem: str

    def key_pem(self) -> bytes:
        return pem.key_pem(self.key)


def make_csr(identity: str) -> KeyAndCsr:
    try:
        spiffe.parse_issuable(identity)
    except spiffe.SpiffeError as exc:
        raise IdentityError(str(exc)) from None
    key = ec.generate_private_key(ec.SECP256R1())
    csr = (x509.CertificateSigningRequestBuilder()
           .subject_name(x509.Name([]))
           .add_extension(x509.SubjectAlternativeName([x509.UniformResourceIdentifier(identity)]),
                          critical=True)
           .sign(key, hashes.SHA256()))
    return KeyAndCsr(key, csr.public_bytes(serialization.Encoding.PEM).decode())
