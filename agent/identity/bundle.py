"""A workload's certificate material as handed to the proxy: key, chain, roots, lifetime."""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import datetime

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec

from agent.identity.csr import IdentityError
from core import pem


@dataclass(frozen=True)
class CertBundle:
    identity: str              # the SPIFFE ID
    key_pem: bytes             # PKCS#8, in memory only
    chain_pem: tuple[str, ...] # leaf first, then intermediates (without the root)
    roots_pem: tuple[str, ...] # trust anchors for peers (the CA's root, last of its chain)
    not_before: float          # unix seconds
    not_after: float
    received_at: float = 0.0   # when the CA answered (unix seconds)

    @property
    def refresh_at(self) -> float:
        """Half-life, as ztunnel and istio's agent (SECRET_GRACE_PERIOD_RATIO=0.5), counted
        from when the certificate became usable to us: CAs backdate not_before for clock skew
        (ours by 5 min), which would otherwise make a short-lived cert "due" on arrival."""
        start = max(self.not_before, self.received_at)
        return start + (self.not_after - start) / 2

    def valid(self, now: float) -> bool:
        return self.not_before <= now < self.not_after

    @property
    def serial(self) -> int:
        return x509.load_pem_x509_certificate(self.chain_pem[0].encode()).serial_number


def _ts(d: datetime) -> float:
    return d.timestamp()


def bundle_from_response(identity: str, key: ec.EllipticCurvePrivateKey, key_pem: bytes,
                         cert_chain: list[str]) -> CertBundle:
    """Check the CA's answer (leaf first, root last) and build the bundle.

    The leaf must carry exactly our SPIFFE ID and our public key: a CA that signs something
    else (or a confused impersonation) must not give the proxy a wrong identity.
    """
    if not cert_chain:
        raise IdentityError("CA returned an empty certificate chain")
    pems: list[str] = []
    for element in cert_chain:
        # istiod may put several PEM blocks in one element; keep one cert per entry.
        for c in x509.load_pem_x509_certificates(element.encode()):
            pems.append(pem.cert_pem(c))
    leaf = x509.load_pem_x509_certificate(pems[0].encode())
    try:
        san = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        raise IdentityError("leaf certificate has no SAN") from None
    uris = san.get_values_for_type(x509.UniformResourceIdentifier)
    if uris != [identity]:
        raise IdentityError(f"leaf certificate is for {uris}, asked for {identity}")
    if pem.spki(leaf) != pem.spki(key.public_key()):
        raise IdentityError("leaf certificate does not hold our key")
    chain, roots = (pems[:-1], pems[-1:]) if len(pems) > 1 else (pems, [])
    return CertBundle(identity=identity, key_pem=key_pem, chain_pem=tuple(chain),
                      roots_pem=tuple(roots), not_before=_ts(leaf.not_valid_before_utc),
                      not_after=_ts(leaf.not_valid_after_utc), received_at=time.time())
