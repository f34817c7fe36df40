"""Workload certificates, in memory, handed out as TLS contexts per SPIFFE identity.

Keys never touch a filesystem. Python's `ssl` can load a private key only from a path, so
`_load_chain` writes key and chain into an anonymous memfd (RAM-backed, no name in any
directory, close-on-exec so a spawned helper never inherits it), makes OpenSSL read it
through /proc/self/fd/N and closes it at once; once the SSLContext holds the parsed key the
memfd is freed. A tmpfs file would have a name other processes could race to open; a pipe
can't be read twice by OpenSSL's PEM reader (cert pass, then key pass).

Rotation: `CertStore.put` builds both contexts for the new bundle up front (so a bad bundle
fails there, and the old one stays), then swaps them in. A TLS connection keeps the context
it was created with, so live connections are untouched while every new one presents the
new certificate; nothing restarts.
"""

from __future__ import annotations

import datetime as dt
import os
import ssl
from dataclasses import dataclass, field
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from core.spiffe import SpiffeId, from_certificate

ALPN = ["h2"]


class NoCertificate(LookupError):
    """No usable certificate for this identity (never delivered, removed or expired)."""


@dataclass(frozen=True)
class CertBundle:
    key_pem: bytes = field(repr=False)
    chain_pem: bytes  # leaf first, then intermediates (a trailing root is harmless)
    roots_pem: bytes
    identity: SpiffeId
    not_before: dt.datetime
    not_after: dt.datetime
    serial: int

    @classmethod
    def from_pem(cls, key_pem: bytes, chain_pem: bytes, roots_pem: bytes) -> CertBundle:
        """Checks what would otherwise fail obscurely on the data path: the leaf carries a
        SPIFFE ID, the key belongs to the leaf, the roots parse."""
        certs = x509.load_pem_x509_certificates(chain_pem)
        leaf = certs[0]
        if not x509.load_pem_x509_certificates(roots_pem):
            raise ValueError("no trust roots")
        key = serialization.load_pem_private_key(key_pem, password=None)
        pub = serialization.PublicFormat.SubjectPublicKeyInfo
        if key.public_key().public_bytes(serialization.Encoding.DER, pub) != \
                leaf.public_key().public_bytes(serialization.Encoding.DER, pub):
            raise ValueError("private key does not match the leaf certificate")
        return cls(key_pem, chain_pem, roots_pem, from_certificate(leaf),
                   leaf.not_valid_before_utc, leaf.not_valid_after_utc, leaf.serial_number)

    def expired(self, now: dt.datetime | None = None) -> bool:
        return (now or dt.datetime.now(dt.UTC)) >= self.not_after

    def refresh_at(self) -> dt.datetime:
        """Half-life, as Istio renews."""
        return self.not_before + (self.not_after - self.not_before) / 2


def _load_chain(ctx: ssl.SSLContext, bundle: CertBundle) -> None:
    fd = os.memfd_create("meshnode-svid", os.MFD_CLOEXEC)
    try:
        # Chain first: OpenSSL reads the leaf and chain from the certificate blocks and the
        # key from the first key block of the same file.
        data = memoryview(bundle.chain_pem.rstrip(b"\n") + b"\n" + bundle.key_pem)
        while data:
            data = data[os.write(fd, data):]
        ctx.load_cert_chain(f"/proc/self/fd/{fd}")
    finally:
        os.close(fd)


def _context(bundle: CertBundle, server: bool) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER if server else ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3  # as ztunnel: TLS 1.3 only
    ctx.check_hostname = False  # peers are named by SPIFFE URI SAN, checked after handshake
    ctx.verify_mode = ssl.CERT_REQUIRED  # both sides: mutual TLS
    ctx.load_verify_locations(cadata=bundle.roots_pem.decode())
    ctx.set_alpn_protocols(ALPN)
    if server:
        # No resumption: every connection is a full handshake, so the peer's certificate is
        # always verified against the roots in force now.
        ctx.options |= ssl.OP_NO_TICKET
        ctx.num_tickets = 0
    _load_chain(ctx, bundle)
    return ctx


@dataclass(frozen=True)
class _Entry:
    bundle: CertBundle
    server: ssl.SSLContext
    client: ssl.SSLContext


class CertStore:
    """The current certificate of each workload identity the proxy serves."""

    def __init__(self) -> None:
        self._entries: dict[SpiffeId, _Entry] = {}

    def put(self, bundle: CertBundle) -> None:
        entry = _Entry(bundle, _context(bundle, True), _context(bundle, False))
        self._entries[bundle.identity] = entry  # one assignment: readers see old or new

    def remove(self, identity: SpiffeId) -> None:
        self._entries.pop(identity, None)

    def _entry(self, identity: SpiffeId) -> _Entry:
        entry = self._entries.get(identity)
        if entry is None:
            raise NoCertificate(f"no certificate for {identity}")
        if entry.bundle.expired():
            raise NoCertificate(f"certificate for {identity} expired at "
                                f"{entry.bundle.not_after.isoformat()}")
        return entry

    def bundle(self, identity: SpiffeId) -> CertBundle:
        return self._entry(identity).bundle

    def server_context(self, identity: SpiffeId) -> ssl.SSLContext:
        return self._entry(identity).server

    def client_context(self, identity: SpiffeId) -> ssl.SSLContext:
        return self._entry(identity).client

    def client(self, identity: SpiffeId) -> tuple[CertBundle, ssl.SSLContext]:
        """The bundle with its context, so a connection pool can tell which one it used."""
        entry = self._entry(identity)
        return entry.bundle, entry.client

    def dump(self) -> list[dict[str, Any]]:
        """For config_dump: no key material."""
        return [{"identity": str(i), "serial": f"{e.bundle.serial:x}",
                 "not_before": e.bundle.not_before.isoformat(),
                 "not_after": e.bundle.not_after.isoformat(),
                 "refresh_at": e.bundle.refresh_at().isoformat()}
                for i, e in sorted(self._entries.items(), key=lambda kv: str(kv[0]))]
