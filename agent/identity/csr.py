"""A fresh ECDSA P-256 key and a CSR naming one SPIFFE ID, as ztunnel's `src/tls/csr.rs`.

The subject is empty and the only SAN is the URI, marked critical (X509-SVID: the SAN must be
critical when the subject is empty). A new key for every request: a renewal never reuses key
material.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

_TD = re.compile(r"^[a-z0-9._-]{1,255}$")
_SEG = re.compile(r"^[A-Za-z0-9._-]+$")


class IdentityError(ValueError):
    pass


def spiffe_id(trust_domain: str, namespace: str, service_account: str) -> str:
    """`spiffe://<td>/ns/<ns>/sa/<sa>`, checked against the SPIFFE-ID rules."""
    sid = f"spiffe://{trust_domain}/ns/{namespace}/sa/{service_account}"
    parse_spiffe_id(sid)
    return sid


def parse_spiffe_id(sid: str) -> tuple[str, str, str]:
    """(trust domain, namespace, service account) of an Istio-shaped SPIFFE ID."""
    if not sid.startswith("spiffe://") or len(sid) > 2048:
        raise IdentityError(f"not a SPIFFE ID: {sid!r}")
    td, _, path = sid[len("spiffe://"):].partition("/")
    parts = path.split("/")
    if not _TD.match(td) or len(parts) != 4 or parts[0] != "ns" or parts[2] != "sa":
        raise IdentityError(f"not spiffe://<td>/ns/<ns>/sa/<sa>: {sid!r}")
    for seg in (parts[1], parts[3]):
        if not _SEG.match(seg) or seg in (".", ".."):
            raise IdentityError(f"bad path segment {seg!r} in {sid!r}")
    return td, parts[1], parts[3]


@dataclass(frozen=True)
class KeyAndCsr:
    key: ec.EllipticCurvePrivateKey
    csr_pem: str

    def key_pem(self) -> bytes:
        return self.key.private_bytes(serialization.Encoding.PEM,
                                      serialization.PrivateFormat.PKCS8,
                                      serialization.NoEncryption())


def make_csr(identity: str) -> KeyAndCsr:
    parse_spiffe_id(identity)
    key = ec.generate_private_key(ec.SECP256R1())
    csr = (x509.CertificateSigningRequestBuilder()
           .subject_name(x509.Name([]))
           .add_extension(x509.SubjectAlternativeName([x509.UniformResourceIdentifier(identity)]),
                          critical=True)
           .sign(key, hashes.SHA256()))
    return KeyAndCsr(key, csr.public_bytes(serialization.Encoding.PEM).decode())
