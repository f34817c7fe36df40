"""SPIFFE IDs as Istio uses them: ``spiffe://<trust domain>/ns/<namespace>/sa/<account>``.

One rule set for the agent, the proxy and the control plane. The rules are SPIFFE-ID.md's
(lowercase trust domain of ``[a-z0-9._-]``, path segments of ``[a-zA-Z0-9._-]``, no
``.``/``..`` segment, at most 2048 bytes of UTF-8) plus Istio's shape. Like ztunnel, empty
namespace/account segments are accepted when reading an ID (``spiffe://td/ns//sa/``): istiod
can emit them, and refusing would break traffic rather than protect anything. Nothing is ever
issued to such an ID, though: the agent's CSR and the CA's signing check with
`parse_issuable`, which also refuses empty segments.

Peer extraction follows X509-SVID.md: a leaf carries exactly one URI SAN; more than one is
an invalid SVID, not a choice for us to make.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from cryptography import x509
from cryptography.x509.oid import ExtensionOID

SCHEME = "spiffe://"
MAX_LEN = 2048
_TRUST_DOMAIN = re.compile(r"[a-z0-9._-]{1,255}")
_SEGMENT = re.compile(r"[a-zA-Z0-9._-]*")


class SpiffeError(ValueError):
    pass


@dataclass(frozen=True, slots=True)
class SpiffeId:
    trust_domain: str
    namespace: str
    service_account: str

    @classmethod
    def of(cls, trust_domain: str, namespace: str, service_account: str) -> SpiffeId:
        """The ID of (trust domain, namespace, service account), checked like `parse`."""
        return parse(str(cls(trust_domain, namespace, service_account)))

    def __str__(self) -> str:
        return f"{SCHEME}{self.trust_domain}/ns/{self.namespace}/sa/{self.service_account}"

    @property
    def principal(self) -> str:
        """The form Istio policies name principals in: the ID without ``spiffe://``."""
        return str(self)[len(SCHEME):]

    @property
    def issuable(self) -> bool:
        """Whether a certificate may be issued for it: no empty namespace or account."""
        return bool(self.namespace and self.service_account)


def parse(uri: str) -> SpiffeId:
    if len(uri.encode()) > MAX_LEN:
        raise SpiffeError(f"SPIFFE ID longer than {MAX_LEN} bytes")
    if not uri.startswith(SCHEME):
        raise SpiffeError(f"not a spiffe:// URI: {uri!r}")
    td, sep, path = uri[len(SCHEME):].partition("/")
    if not _TRUST_DOMAIN.fullmatch(td):
        raise SpiffeError(f"invalid trust domain in {uri!r}")
    parts = path.split("/") if sep else []
    if len(parts) != 4 or parts[0] != "ns" or parts[2] != "sa":
        raise SpiffeError(f"not an Istio identity (spiffe://td/ns/NS/sa/SA): {uri!r}")
    for seg in (parts[1], parts[3]):
        if not _SEGMENT.fullmatch(seg) or seg in (".", ".."):
            raise SpiffeError(f"invalid path segment {seg!r} in {uri!r}")
    return SpiffeId(td, parts[1], parts[3])


def parse_issuable(uri: str) -> SpiffeId:
    """`parse`, and refuse an empty namespace or account: an ID a certificate may name."""
    sid = parse(uri)
    if not sid.issuable:
        raise SpiffeError(f"empty namespace or service account in {uri!r}")
    return sid


def from_certificate(cert: x509.Certificate) -> SpiffeId:
    """The SPIFFE ID a leaf certificate carries in its single URI SAN."""
    try:
        san = cert.extensions.get_extension_for_oid(ExtensionOID.SUBJECT_ALTERNATIVE_NAME)
    except x509.ExtensionNotFound:
        raise SpiffeError("certificate has no subjectAltName") from None
    assert isinstance(san.value, x509.SubjectAlternativeName)
    uris = san.value.get_values_for_type(x509.UniformResourceIdentifier)
    if len(uris) != 1:
        raise SpiffeError(f"an X.509 SVID has exactly one URI SAN, this one has {len(uris)}")
    return parse(uris[0])


def from_der(der: bytes) -> SpiffeId:
    return from_certificate(x509.load_der_x509_certificate(der))
